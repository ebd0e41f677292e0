"""The books of a run: records read per input file against rows written, checked by the job itself.

Every row of OUT/images names the file it came from (source_file). The books put, per file, the
records the parse read ("records"), the rows a --resume kept from OUT's previous table that no
manifest lists any more ("previous"), and the rows the table got ("rows", counted while the part
files are finalised). They balance when records + previous == rows for every file, and the rows
written hold as many distinct keys (clustering.row_keys.KeyBooks); the job fails
(BooksUnbalanced, exit 1) naming the first file that does not, or a doubled key. Cheap: a handful
of small dicts meet once, no row crosses a shuffle for it.
"""

import collections

import apache_beam as beam

from transforms.errors import BooksUnbalanced

__all__ = ["BalanceBooks", "balance", "check_books"]


def balance(records, kept, written, truncated=(), keys=()):
    """The books as a summary.json section.

    Args:
        records: [{"path", "records"}] from the manifest parse, one per file.
        kept: [(source_file, n)]: previous rows a --resume kept without a manifest record.
        written: [{"path", "rows", "per_file": {source_file: rows}}] from the table's finalisation.
        truncated: [{"path", "last_line", "rows", "reason"}] of cut compressed files kept.
        keys: [] or [row_keys.KeyBooks' dict]: the distinct keys among the rows written.

    Returns:
        {"files": [{"path", "records", "previous", "rows"}], "rows_in", "rows_out", "balanced",
        "truncated"}, and with keys "distinct_keys", "doubled_keys", "doubled".
    """
    read = collections.Counter()
    for entry in records:
        read[entry["path"]] += entry["records"]
    previous = collections.Counter()
    for path, count in kept:
        previous[path] += count
    rows = collections.Counter()
    for part in written:
        rows.update(part["per_file"])
    files = []
    for path in sorted(set(read) | set(previous) | set(rows)):
        entry = {"path": path, "records": read[path], "rows": rows[path]}
        if previous[path]:
            entry["previous"] = previous[path]
        files.append(entry)
    rows_in = sum(read.values()) + sum(previous.values())
    rows_out = sum(rows.values())
    balanced = rows_in == rows_out and all(f["records"] + f.get("previous", 0) == f["rows"] for f in files)
    books = {
        "files": files,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "balanced": balanced,
        "truncated": sorted(truncated, key=lambda t: t["path"]),
    }
    for counted in keys:
        # why: rows in = rows out holds with two rows of one key; every later job then loses one
        books.update(
            distinct_keys=counted["distinct"], doubled_keys=counted["doubled_keys"], doubled=counted["doubled"]
        )
        books["balanced"] = balanced and counted["distinct"] == rows_out and not counted["doubled_keys"]
    return books


def check_books(summary):
    """Raises BooksUnbalanced naming the first file whose rows written differ from its records.

    Args:
        summary: the summary.json document, with balance()'s result under "books".

    Returns:
        books, when they balance.
    """
    books = summary["books"]
    if books["balanced"]:
        return books
    for entry in books["files"]:
        expected = entry["records"] + entry.get("previous", 0)
        if expected != entry["rows"]:
            kept = f" + {entry['previous']} kept from OUT" if entry.get("previous") else ""
            raise BooksUnbalanced(
                f"the books do not balance: {entry['path'] or '(no source file)'}:"
                f" {entry['records']} records read{kept}, {entry['rows']} rows written"
                f" (all files: {books['rows_in']} in, {books['rows_out']} out)"
            )
    if books.get("doubled"):
        first = books["doubled"][0]
        raise BooksUnbalanced(
            f"the books do not balance: key {first['key']} is held by {first['rows']} rows"
            f" ({'; '.join(first['where'])}); {books['doubled_keys']} doubled key"
            f"{'s' if books['doubled_keys'] != 1 else ''},"
            f" {books['rows_out']} rows written with {books['distinct_keys']} distinct keys"
        )
    if books.get("distinct_keys", books["rows_out"]) != books["rows_out"]:
        raise BooksUnbalanced(
            f"the books do not balance: {books['rows_out']} rows written with {books['distinct_keys']} distinct keys"
        )
    raise BooksUnbalanced(f"the books do not balance: {books['rows_in']} rows in, {books['rows_out']} rows out")


class BalanceBooks(beam.PTransform):
    """{"records", "written", "truncated"[, "kept", "keys"]} PCollections -> one books dict (balance()).

    "kept" (--resume only) holds one source_file per kept row; they are counted per file before
    they meet.
    """

    def expand(self, inputs):
        inputs = dict(inputs)
        if "kept" in inputs:
            inputs["kept"] = inputs["kept"] | "CountKept" >> beam.combiners.Count.PerElement()
        side = {
            name: beam.pvalue.AsList(inputs[name])
            for name in ("records", "kept", "written", "truncated", "keys")
            if name in inputs
        }
        pipeline = inputs["written"].pipeline
        return (
            pipeline
            | "Once" >> beam.Create([None])
            | "Balance" >> beam.Map(lambda _, **lists: balance(**dict({"kept": []}, **lists)), **side)
        )

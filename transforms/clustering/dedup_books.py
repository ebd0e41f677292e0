"""The dedup job's books and summary.json (docs/integrity.md, "The books"): rows read = rows
written + rows replaced by a newer version of their key (+ rows left out as dead, with
--drop-dead), and each input's rows read = the rows of the table its check found before the run
(table_record.checked_table), checked by the job; OUT3/summary.json written whole;
OUT3/dead_blobs.txt written aside and put in place once the books balance.

- `dedup_books(rows_in, written, replaced, inputs, dropped_dead, tables)`: the books.
- `check_dedup_books(_, books, written, previous, output)`: BooksUnbalanced (this run's files go).
- `dedup_summary(...)`: the summary document; `WriteDedupSummary`: writes it.
- `write_dead_blobs(out, run_id, uris)`, `publish_dead_blobs(...)`: OUT3/dead_blobs.txt.
"""

import hashlib

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.errors import BooksUnbalanced
from transforms.io.sinks import join_path, publish_file, write_json
from transforms.io.table_record import RECORD, roll_back, table_record

__all__ = [
    "DEAD_BLOBS",
    "WriteDedupSummary",
    "check_dedup_books",
    "dedup_books",
    "dedup_summary",
    "publish_dead_blobs",
    "write_dead_blobs",
]

DEAD_BLOBS = "dead_blobs.txt"


class WriteDedupSummary(beam.DoFn):
    """OUT3/summary.json, whole or not at all (write_json); `previous`: the table files OUT3 held."""

    def __init__(self, path, previous=(), guard=None):
        self._path = path
        self._previous = list(previous)
        self._guard = guard

    def process(self, document, written=()):
        try:
            if self._guard is not None:  # why: taken over, this run's summary would replace the holder's
                self._guard.confirm()
            write_json(self._path, document, sort_keys=False)
        except Exception:
            # Why: unwritten (a full disk), OUT3's summary.json still records the previous table, so
            # this run's files go again, as after unbalanced books; else every reader refused OUT3.
            roll_back(written, keep=self._previous)
            raise
        yield self._path


def dedup_summary(
    stats, replaced, inputs, output, books, repeated=0, warnings=(), written=(), previous=None, drop_dead=None
):
    """summary.json; "table" records the files OUT3/images holds (table_record): this run's once
    the books balance, else the previous table's, which a failed run leaves in place.

    Args:
        stats: Dedup's figures; replaced, repeated: NewestRows' counts; inputs, output: the paths;
        books: dedup_books; warnings: lines; written: CopyTables' records; previous: the previous
        table's record; drop_dead: with --drop-dead, {"night": PublishedNight fields, "counts",
        "dead_blobs": write_dead_blobs' record}, else None.
    Returns:
        The document.
    """
    warnings = list(warnings)
    if repeated:
        warnings.append(
            f"{repeated} keys occur more than once within one input (an ingest output whose keys"
            " collided): all their rows are kept"
        )
    extra = {}
    if drop_dead is not None:
        blobs = drop_dead["dead_blobs"]
        extra = {
            "drop_dead": {**drop_dead["night"], **drop_dead["counts"], "dead_blobs_sha256": blobs["sha256"]},
            "blobs_only_dead": blobs["uris"],
            "dead_blobs": DEAD_BLOBS,
        }
    return dict(
        {
            "job": "dedup",
            "inputs": inputs,
            "output": output,
            "replaced_rows": replaced,
            **extra,
            "books": books,
            RECORD: table_record(written) if books["balanced"] else previous,
            "warnings": warnings,
        },
        **stats,
    )


def dedup_books(rows_in, written, replaced, inputs, dropped_dead=None, tables=None):
    """Rows read per input against rows written + rows replaced by a newer version of their key
    (+ rows left out as dead), and against the rows of each input's table as checked before the run.

    Args:
        rows_in: [(input index, rows read)] (an index may come several times: summed).
        written: CopyTables' counts, [{"path", "rows"}], one per file written.
        replaced: rows replaced.
        inputs: the --input values, in order.
        dropped_dead: with --drop-dead, the rows left out as dead; None without.
        tables: which table of each input was read (table_record.checked_table), in order; None: unknown.

    Returns:
        {"inputs": [{"path", "rows", "table"?}], "rows_in", "rows_out", "replaced"[, "dropped_dead"],
        "balanced"}.
    """
    per_input = {}
    for index, rows in rows_in:
        per_input[index] = per_input.get(index, 0) + rows
    total_in = sum(per_input.values())
    rows_out = sum(part["rows"] for part in written)
    read = [{"path": path, "rows": per_input.get(i, 0)} for i, path in enumerate(inputs)]
    for entry, table in zip(read, tables or [], strict=False):
        entry["table"] = table
    books = {"inputs": read, "rows_in": total_in, "rows_out": rows_out, "replaced": replaced}
    if dropped_dead is not None:
        books["dropped_dead"] = dropped_dead
    # why the tables: an input read short (a file lost between the check and the read) would
    # balance as fewer rows in
    books["balanced"] = total_in == rows_out + replaced + (dropped_dead or 0) and all(
        e["rows"] == e["table"]["rows"] for e in read if "table" in e
    )
    return books


def check_dedup_books(_, books, written=(), previous=(), output="OUT3"):
    """Raises BooksUnbalanced unless rows in = rows out + replaced (+ dropped as dead), once this
    run's files (`written`) are removed again: OUT3/images keeps the `previous` files, whole."""
    if not books["balanced"]:
        roll_back(written, keep=previous)
        dropped = f" + {books['dropped_dead']} dropped as dead" if "dropped_dead" in books else ""
        short = "".join(
            f"; {i['path']}: {i['rows']} rows read of its table's {i['table']['rows']}"
            for i in books["inputs"]
            if "table" in i and i["rows"] != i["table"]["rows"]
        )
        raise BooksUnbalanced(
            f"the books do not balance: {books['rows_in']} rows read from"
            f" {', '.join(i['path'] for i in books['inputs'])}, {books['rows_out']} rows written"
            f" to {output} + {books['replaced']} replaced{dropped}{short}; {output} keeps its previous table"
        )
    return books


def write_dead_blobs(out: str, run_id: str, uris: list[str]) -> dict:
    """OUT3/dead_blobs.txt written aside (OUT3/dead_blobs.txt.tmp-<run>), one URI a line.

    Args:
        out: OUT3.
        run_id: names the file aside.
        uris: dead_rows.dead_only_blobs.
    Returns:
        {"path": the file aside, "uris": how many, "sha256": of its bytes}.
    """
    data = "".join(f"{uri}\n" for uri in uris).encode("utf-8")
    path = join_path(out, f"{DEAD_BLOBS}.tmp-{run_id}")
    with FileSystems.create(path, mime_type="text/plain") as handle:
        handle.write(data)
    return {"path": path, "uris": len(uris), "sha256": hashlib.sha256(data).hexdigest()}


def publish_dead_blobs(record: dict, out: str, checked=()) -> str:
    """The dead_blobs.txt written aside put in place, once the books balanced (`checked`).

    Args:
        record: write_dead_blobs' record.
        out: OUT3.
        checked: the books' check (a side input: its presence is the gate).
    Returns:
        OUT3/dead_blobs.txt.
    """
    return publish_file(record["path"], join_path(out, DEAD_BLOBS))

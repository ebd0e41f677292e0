"""The dedup job's `--drop-dead REFRESH_OUT`: the rows a refresh night calls `dead`, left out of
OUT3, and the blobs only they referenced (docs/refresh.md, "Deleting what the refresh calls dead").

A row is dropped only when the night holds a `dead` verdict for its key AND its URL, checked after
the row was fetched: a key whose URL changed since the night's snapshot names another record
(kept), a key the night did not check has no verdict (kept), a row fetched after the night's check
(a later ingest, the URL back up) is a record the night never judged (kept). Matched on
fixed-size records grouped by key digest (through files in local runs, like
`key_versions.NewestRows`): no full row crosses a shuffle, and the verdicts are never held in
memory whole.

- `DropDead(status_files, spill_dir)`: {"files", "skip"} -> {"skip": the dropped rows as skip
  lists, "counts": (kind, rows), "dead_blobs": one sorted list of blob URIs}.
- `COUNT_KINDS`: the kinds of "counts".
"""

from __future__ import annotations

import collections
import typing

import apache_beam as beam
import numpy as np

from transforms.clustering.key_versions import NO_STAMP, key_digest, key_shards, stamps, url_digest
from transforms.clustering.spill import GroupRecords, split_by
from transforms.clustering.table_dedup import file_batches, file_id, skipped_rows
from transforms.io.sinks import file_name

__all__ = ["COUNT_KINDS", "DEAD_RECORD", "DropDead", "dead_only_blobs", "files_after"]

DEAD_RECORD = np.dtype(
    [
        ("key", "S16"),
        ("url", "S8"),
        ("source", "u1"),
        ("dead", "u1"),
        ("file", "<i8"),
        ("row", "<u4"),
        ("blob", "S8"),
        ("at", "<i8"),  # a table row's fetched_at, a verdict's checked_at (microseconds, UTC)
    ]
)
# why the newest for a verdict without checked_at: no row counts as fetched after it (as before)
NO_CHECK = np.iinfo(np.int64).max
TABLE, VERDICT = 0, 1
DROPPED = "dropped_dead"
KEPT_NOT_DEAD = "kept_verdict_not_dead"
KEPT_OTHER_URL = "kept_other_url"
KEPT_NO_VERDICT = "kept_no_verdict"
KEPT_FETCHED_AFTER = "kept_fetched_after_verdict"
VERDICT_ROWS = "verdict_rows"
DEAD_VERDICTS = "dead_verdicts"
COUNT_KINDS = (
    DROPPED,
    KEPT_NOT_DEAD,
    KEPT_OTHER_URL,
    KEPT_NO_VERDICT,
    KEPT_FETCHED_AFTER,
    VERDICT_ROWS,
    DEAD_VERDICTS,
)
DEAD = "dead"


@beam.typehints.with_output_types(tuple[int, typing.Any])
class _TableRecords(beam.DoFn):
    """(input index, path) -> (key shard, DEAD_RECORD array) of the file's rows that no newer
    version replaced (`skip`: NewestRows' skip lists)."""

    def process(self, element, skip):
        _index, path = element
        fid = np.int64(file_id(path))
        skipped = skipped_rows(path, skip)
        for first, batch in file_batches(path, ["key", "url", "blob", "fetched_at"]):
            keys, urls, blobs = (batch.column(i).to_pylist() for i in range(3))
            rows = np.arange(first, first + batch.num_rows, dtype=np.uint32)
            keep = np.ones(batch.num_rows, dtype=bool) if skipped is None else ~np.isin(rows, list(skipped))
            records = np.zeros(int(keep.sum()), dtype=DEAD_RECORD)
            picked = np.flatnonzero(keep).tolist()
            records["key"] = [key_digest(keys[i]) for i in picked]
            records["url"] = [url_digest(urls[i]) for i in picked]
            # why: no blob (a failed fetch) is the empty digest, which no URI's digest is
            records["blob"] = [url_digest(file_name(blobs[i])) if blobs[i] else b"" for i in picked]
            records["source"], records["file"], records["row"] = TABLE, fid, rows[keep]
            records["at"] = stamps(batch.column(3), NO_STAMP)[keep]
            yield from key_shards(records)


@beam.typehints.with_output_types(tuple[int, typing.Any])
class _VerdictRecords(beam.DoFn):
    """A status file of the night -> (key shard, DEAD_RECORD array) per verdict row; tagged
    `counts`: (VERDICT_ROWS, n), (DEAD_VERDICTS, n)."""

    COUNTS = "counts"

    def process(self, path):
        from transforms.io.checked_parquet import table_batches  # noqa: PLC0415 (as file_batches does)

        for batch in table_batches(path, ["key", "url", "status", "checked_at"]):
            keys, urls, statuses = (batch.column(i).to_pylist() for i in range(3))
            records = np.zeros(batch.num_rows, dtype=DEAD_RECORD)
            records["key"] = [key_digest(k) for k in keys]
            records["url"] = [url_digest(u) for u in urls]
            records["dead"] = [s == DEAD for s in statuses]
            records["source"] = VERDICT
            records["at"] = stamps(batch.column(3), NO_CHECK)
            yield beam.pvalue.TaggedOutput(self.COUNTS, (VERDICT_ROWS, batch.num_rows))
            yield beam.pvalue.TaggedOutput(self.COUNTS, (DEAD_VERDICTS, int(records["dead"].sum())))
            yield from key_shards(records)


@beam.typehints.with_output_types(tuple[int, typing.Any])
class _Match(beam.DoFn):
    """(key shard, [DEAD_RECORD arrays]) -> (file id, row numbers) of the dropped rows; tagged
    `counts`: (kind, rows) per kind; tagged `blobs`: the blob digest of each dropped row."""

    COUNTS = "counts"
    BLOBS = "blobs"

    def process(self, element):
        _shard, parts = element
        records = np.concatenate(list(parts))
        verdicts = records[records["source"] == VERDICT]
        table = records[records["source"] == TABLE]
        verdict_of: dict[bytes, list[tuple[bytes, bool, int]]] = {}
        columns = (verdicts[field].tolist() for field in ("key", "url", "dead", "at"))
        for key, url, dead, checked_at in zip(*columns, strict=True):
            verdict_of.setdefault(key, []).append((url, bool(dead), checked_at))
        counts: collections.Counter = collections.Counter()
        dropped = np.zeros(len(table), dtype=bool)
        rows = zip(table["key"].tolist(), table["url"].tolist(), table["at"].tolist(), strict=True)
        for i, (key, url, fetched_at) in enumerate(rows):
            of_key = verdict_of.get(key)
            same_url = [(dead, checked_at) for other, dead, checked_at in of_key or () if other == url]
            if not of_key:
                counts[KEPT_NO_VERDICT] += 1
            elif not same_url:
                counts[KEPT_OTHER_URL] += 1  # why: the key names another record now (its URL changed)
            elif not any(dead for dead, _ in same_url):
                counts[KEPT_NOT_DEAD] += 1
            elif all(fetched_at > checked_at for dead, checked_at in same_url if dead):
                # why: fetched after the night checked it (a later ingest, the URL back up): the night
                # judged an earlier fetch, not this record, whose blob a dead_blobs.txt would delete
                counts[KEPT_FETCHED_AFTER] += 1
            else:
                dropped[i] = True
                counts[DROPPED] += 1
        for kind, n in counts.items():
            yield beam.pvalue.TaggedOutput(self.COUNTS, (kind, n))
        gone = table[dropped]
        for digest in set(gone["blob"].tolist()) - {b""}:
            yield beam.pvalue.TaggedOutput(self.BLOBS, digest)
        if not len(gone):
            return
        for fid, idx in split_by(gone["file"]):
            yield fid, np.sort(gone["row"][idx])


def _blob_refs(element, replaced, dropped, dead_digests, blob_roots=None):
    """(DEAD, uri) for each dropped row's blob, (kept, uri) for each kept row's blob whose content
    address a dropped row's blob also has (by digest of the file name): one file's part of
    dead_only_blobs. An ingest output's blobs (blob_roots) are named under its own blobs/, as OUT3
    names them (blob_homes): a copied OUT's rows name the original's, which are not this table's."""
    from transforms.io.blob_homes import rooted_blobs

    index, path = element
    if not dead_digests:
        return
    home = (blob_roots or {}).get(index)
    skipped, gone = skipped_rows(path, replaced) or frozenset(), skipped_rows(path, dropped) or frozenset()
    for first, batch in file_batches(path, ["blob"]):
        column = batch.column(0) if home is None else rooted_blobs(batch.column(0), home)
        for row, blob in enumerate(column.to_pylist(), start=first):
            if not blob or row in skipped:
                continue
            if row in gone:
                yield DEAD, blob
            elif url_digest(file_name(blob)) in dead_digests:
                yield "kept", blob


def dead_only_blobs(refs: typing.Iterable[tuple[str, str]]) -> list[str]:
    """The blob URIs that dropped rows reference and no kept row does, sorted.

    A blob is known by its content address, the file name `<sha256>.<ext>`, not by its whole URI:
    one file has several spellings (an OUT ingested with a relative --output and resumed with its
    absolute path: `OUT/blobs/..` and `/data/OUT/blobs/..`), and listing one spelling deleted the
    picture of a kept row naming the other. So a dropped row's blob is left off the list when a
    kept row has a blob of the same name anywhere (another input's copy of the picture included).

    Args:
        refs: (DEAD or "kept", blob URI) pairs (_blob_refs).
    Returns:
        The URIs safe to delete once OUT3 replaces its inputs.
    """
    dead: set[str] = set()
    kept: set[str] = set()
    for kind, uri in refs:
        if kind == DEAD:
            dead.add(uri)
        else:
            kept.add(file_name(uri))
    return sorted(uri for uri in dead if file_name(uri) not in kept)


def files_after(gate: beam.PCollection, files: beam.PCollection, label: str) -> beam.PCollection:
    """`files` again, once `gate` is complete: for a pass over the files whose side inputs were
    made from `files` by DropDead. (A pass over `files` itself is fused by the local runner with
    DropDead's pass over them, and then waits on a side input made after it: a deadlock.)

    Args:
        gate: a PCollection to wait for.
        files: (input index, path) of the table files.
        label: names the steps.
    Returns:
        The same elements, Reshuffled.
    """
    return (
        gate
        | f"{label}Done" >> beam.combiners.Count.Globally()
        | f"FilesAfter{label}" >> beam.FlatMap(lambda _done, listed: listed, beam.pvalue.AsList(files))
        | f"Spread{label}" >> beam.Reshuffle()
    )


class DropDead(beam.PTransform):
    """{"files": (input index, path) of the table files, "skip": NewestRows' skip lists} ->
    {"skip": (file id, row numbers) of the rows the night calls dead (never a replaced row),
    "counts": (kind, rows) pairs (COUNT_KINDS; sum per kind), "dead_blobs": one element, the
    sorted blob URIs referenced by dropped rows and by no kept row}.

    status_files: the night's status files (night_reader.PublishedNight.status_files).
    spill_dir: local directory the records are grouped through (local runs); None: GroupByKey.
    blob_roots: blob_homes.blob_homes of the inputs (whose dead blobs are named under their blobs/).
    """

    def __init__(
        self, status_files: typing.Sequence[str], spill_dir: str | None = None, blob_roots: dict | None = None
    ) -> None:
        super().__init__()
        self._blob_roots = dict(blob_roots or {})
        self._status_files = list(status_files)
        self._spill_dir = spill_dir

    def expand(self, inputs):
        files, replaced = inputs["files"], beam.pvalue.AsMultiMap(inputs["skip"])
        pipeline = files.pipeline
        table = files | "TableRecords" >> beam.ParDo(_TableRecords(), skip=replaced)
        verdicts = (
            pipeline
            | "StatusFiles" >> beam.Create(self._status_files)
            | "VerdictRecords" >> beam.ParDo(_VerdictRecords()).with_outputs(_VerdictRecords.COUNTS, main="records")
        )
        matched = (
            (table, verdicts.records)
            | "Records" >> beam.Flatten()
            | "GroupByKey" >> GroupRecords(self._spill_dir, dtype_of=lambda _key: DEAD_RECORD)
            | "Match" >> beam.ParDo(_Match()).with_outputs(_Match.COUNTS, _Match.BLOBS, main="skip")
        )
        counts = (
            (matched[_Match.COUNTS], verdicts[_VerdictRecords.COUNTS])
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombinePerKey(sum)
        )
        # why a frozenset singleton: each file's pass looks its kept rows' blobs up in it
        digests = (
            matched[_Match.BLOBS] | "DeadDigestList" >> beam.combiners.ToList() | "DeadDigests" >> beam.Map(frozenset)
        )
        refs = files_after(digests, files, "Match") | "BlobRefs" >> beam.FlatMap(
            _blob_refs,
            replaced=replaced,
            dropped=beam.pvalue.AsMultiMap(matched.skip),
            dead_digests=beam.pvalue.AsSingleton(digests),
            blob_roots=self._blob_roots,
        )
        dead_blobs = refs | "RefList" >> beam.combiners.ToList() | "DeadOnly" >> beam.Map(dead_only_blobs)
        return {"skip": matched.skip, "counts": counts, "dead_blobs": dead_blobs}

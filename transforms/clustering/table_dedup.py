"""Dedup of rows that sit in Parquet tables (the standalone dedup job): full rows never cross a
shuffle, and a key kept by several inputs is resolved on small fixed-size records.

Three passes over the files, each one file at a time:
  1. keys: per row a 40-byte record (key digest, fetched_at, input index, file id, row number),
     grouped by key digest (through `spill.GroupRecords`, on disk in local runs); a key held by
     several rows keeps the newest (see `newest_order`), the others are listed per file as rows
     to skip (`skip`: (file id, row numbers)), a few bytes per replaced row;
  2. slim: the dedup columns of the kept rows -> `Dedup.find_components` (its own compact records);
  3. rows: every kept row, read again, meets its component (a side input as small as the
     duplicates); rows alone get their cluster columns at once, rows of clusters go to the
     clustering GroupByKey (only they cross a shuffle).
So memory holds a file's batch, the records of one key shard and the clustered rows, whatever
the row count.
"""
import hashlib
import typing

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms.clustering.clusters import Dedup, _place, _SINGLE, slim_row
from transforms.clustering.spill import GroupRecords, split_by
from transforms.errors import BadInput

__all__ = ["ListTables", "NewestRows", "DedupTables", "newest_order", "file_id"]

KEY_RECORD = np.dtype([("key", "S16"), ("stamp", "<i8"), ("input", "<i4"), ("file", "<i8"), ("row", "<u4")])
KEY_SHARDS = 256
NO_STAMP = np.iinfo(np.int64).min  # a row without fetched_at counts as the oldest
SLIM_COLUMNS = ["key", "url", "sha256", "phash", "dhash"]
READ_BATCH = 4096


def file_id(path: str) -> int:
    """63 bits naming a table file in the skip lists (a chance clash among 10^6 files: ~1e-7);
    63 so that Beam's integer coder takes it as a key.

    Args:
        path: the file's path as matched.
    Returns:
        The id, an int below 2**63.
    """
    return int.from_bytes(hashlib.blake2b(path.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def newest_order(records: np.ndarray) -> np.ndarray:
    """Indices sorting key records by key, then from oldest to newest version.

    Newest: the latest fetched_at (none counts as oldest), then the input listed last, then the
    larger file id and row number (any fixed rule: one input should not hold a key twice).

    Args:
        records: KEY_RECORD array.
    Returns:
        The sorting indices (the last of each key's run is the row kept).
    """
    return np.lexsort((records["row"], records["file"], records["input"], records["stamp"], records["key"]))


class _ListFiles(beam.DoFn):
    """(input index, OUT) -> (input index, path) of every OUT/images/*.parquet."""

    def process(self, element):
        index, root = element
        pattern = FileSystems.join(root, "images", "*.parquet")
        paths = sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
        if not paths:
            raise BadInput(f"{root}: no Parquet table (nothing matches {pattern}); is it an ingest output?")
        for path in paths:
            yield index, path


class ListTables(beam.PTransform):
    """The table files of each input, as (input index, path); Reshuffled so the files of one
    input spread over workers."""

    def __init__(self, inputs):
        super().__init__()
        self._inputs = list(inputs)

    def expand(self, pbegin):
        return (
            pbegin
            | "Inputs" >> beam.Create(list(enumerate(self._inputs)))
            | "Match" >> beam.ParDo(_ListFiles())
            | "Spread" >> beam.Reshuffle()
        )


def _open_parquet(path):
    import pyarrow.parquet as pq
    try:
        return pq.ParquetFile(FileSystems.open(path))
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError for a damaged footer
        raise BadInput(f"{path}: not a readable Parquet file ({error})") from error


def _batches(path, columns):
    """(first row number, record batch) of `columns` of one file."""
    parquet = _open_parquet(path)
    missing = [c for c in (columns or []) if c not in parquet.schema_arrow.names]
    if missing:
        raise BadInput(f"{path}: missing column(s) {', '.join(missing)}: not an ingest table")
    first = 0
    for batch in parquet.iter_batches(batch_size=READ_BATCH, columns=columns):
        yield first, batch
        first += batch.num_rows


@beam.typehints.with_output_types(typing.Tuple[int, typing.Any])
class _KeyRecords(beam.DoFn):
    """(input index, path) -> (key shard, KEY_RECORD array) for every row of the file."""

    def process(self, element):
        import pyarrow as pa
        index, path = element
        fid = np.int64(file_id(path))
        for first, batch in _batches(path, ["key", "fetched_at"]):
            n = batch.num_rows
            records = np.empty(n, dtype=KEY_RECORD)
            records["key"] = [hashlib.blake2b(str(k).encode("utf-8"), digest_size=16).digest()
                              for k in batch.column(0).to_pylist()]
            stamps = batch.column(1).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            records["stamp"] = stamps.fill_null(NO_STAMP).to_numpy(zero_copy_only=False)
            records["input"], records["file"] = index, fid
            records["row"] = np.arange(first, first + n, dtype=np.uint32)
            shard = np.ascontiguousarray(records["key"]).view(np.uint8).reshape(-1, 16)[:, 0]
            for s, idx in split_by(shard.astype(np.int64) % KEY_SHARDS):
                yield s, records[idx]


@beam.typehints.with_output_types(typing.Tuple[int, typing.Any])
class _Newest(beam.DoFn):
    """(key shard, [KEY_RECORD arrays]) -> (file id, row numbers to skip); tagged `replaced`:
    how many rows of the shard lost to a newer version of their key."""
    REPLACED = "replaced"

    def process(self, element):
        _shard, parts = element
        records = np.concatenate(list(parts))
        records = records[newest_order(records)]
        keys = records["key"]
        older = np.zeros(len(records), dtype=bool)
        older[:-1] = keys[:-1] == keys[1:]  # not the last of its key's run: replaced
        losers = records[older]
        if len(losers):
            beam.metrics.Metrics.counter("dedup", "replaced_rows").inc(len(losers))
            yield beam.pvalue.TaggedOutput(self.REPLACED, len(losers))
            for fid, idx in split_by(losers["file"]):
                yield fid, np.sort(losers["row"][idx])


class NewestRows(beam.PTransform):
    """(input index, path) of table files -> {"skip": (file id, row numbers) of the rows a newer
    version of their key replaces, "replaced": per-shard counts of those rows (sum them)}.

    spill_dir: local directory the key records are grouped through (local runs); None: the
    runner's GroupByKey.
    """

    def __init__(self, spill_dir=None):
        super().__init__()
        self._spill_dir = spill_dir

    def expand(self, files):
        newest = (
            files
            | "KeyRecords" >> beam.ParDo(_KeyRecords())
            | "GroupKeys" >> GroupRecords(self._spill_dir, dtype_of=lambda _key: KEY_RECORD)
            | "Newest" >> beam.ParDo(_Newest()).with_outputs(_Newest.REPLACED, main="skip")
        )
        return {"skip": newest.skip, "replaced": newest[_Newest.REPLACED]}


def _skipped(path, skip):
    rows = list(skip[file_id(path)])  # a MultiMap: empty for a file with nothing to skip
    if not rows:
        return None
    return frozenset(np.concatenate(rows).tolist())


def _kept_rows(path, columns, skip):
    """Rows (dicts) of one file, minus the replaced ones."""
    skipped = _skipped(path, skip)
    for first, batch in _batches(path, columns):
        for i, row in enumerate(batch.to_pylist(), start=first):
            if skipped is None or i not in skipped:
                yield row


def _slim_rows(element, skip):
    _index, path = element
    for row in _kept_rows(path, SLIM_COLUMNS, skip):
        yield slim_row(row)


def _placed_rows(element, skip, components):
    _index, path = element
    for row in _kept_rows(path, None, skip):
        yield from _place(row, components)


class DedupTables(beam.PTransform):
    """Dedup over rows kept in Parquet files, streamed from them (no full row in a shuffle
    except those of clusters).

    Input {"files": (input index, path) of every table file, "skip": NewestRows' skip lists}.
    Output: as Dedup's, {"rows": every kept row with cluster columns, "clusters", "stats"}.

    dedup: the configured Dedup whose steps run here (job_runner.dedup_transform).
    """

    def __init__(self, dedup: Dedup):
        super().__init__()
        self._dedup = dedup

    def expand(self, inputs):
        files, skip = inputs["files"], beam.pvalue.AsMultiMap(inputs["skip"])
        # why: pass 2, only the dedup columns of each kept row, for the graph
        slim = files | "SlimRows" >> beam.FlatMap(_slim_rows, skip=skip)
        found = self._dedup.find_components(slim)
        # why: pass 3, every kept row meets its component; only clustered rows go on to a shuffle
        placed = files | "PlaceRows" >> beam.FlatMap(
            _placed_rows, skip=skip, components=beam.pvalue.AsDict(found["components"])).with_output_types(
            typing.Tuple[str, typing.Any]).with_outputs(_SINGLE, main="members")
        clustered = self._dedup.cluster(placed.members)
        out_rows = (placed[_SINGLE], clustered["rows"]) | "AllRows" >> beam.Flatten()
        stats = self._dedup.stats(clustered["clusters"], slim, found["near_pairs"])
        return {"rows": out_rows, "clusters": clustered["clusters"], "stats": stats}

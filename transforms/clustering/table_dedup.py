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
import uuid

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.clustering.clusters import MEMBER_FIELDS, Dedup, _place, slim_row
from transforms.clustering.freed_memory import release_freed_memory
from transforms.clustering.spill import GroupRecords, split_by
from transforms.errors import BadInput

__all__ = [
    "CopyTables",
    "DedupTables",
    "ListTables",
    "NewestRows",
    "copy_table_file",
    "file_id",
    "newest_order",
    "slim_columns",
]

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
    from transforms.io.checked_parquet import open_table_file

    return open_table_file(path)


# Columns without which a file is no ingest table; any other column asked for may be missing
# (an older table, or one without phash): it reads as nulls.
REQUIRED_COLUMNS = ("key", "dataset", "url", "status")


def _batches(path, columns):
    """(first row number, record batch) of `columns` of one file (all of them if None); a
    missing column other than REQUIRED_COLUMNS comes as nulls of its IMAGE_SCHEMA type."""
    from transforms import schema
    from transforms.io.checked_parquet import table_batches

    parquet = _open_parquet(path)
    names = parquet.schema_arrow.names
    missing = [c for c in (columns or []) if c not in names]
    required = [c for c in missing if c in REQUIRED_COLUMNS or c not in schema.IMAGE_SCHEMA.names]
    if required:
        raise BadInput(f"{path}: missing column(s) {', '.join(required)}: not an ingest table")
    present = None if columns is None else [c for c in columns if c in names]
    first = 0
    for batch in table_batches(path, present, batch_size=READ_BATCH, parquet=parquet):
        if missing:
            arrays = [
                batch.column(present.index(c))
                if c in present
                else pa.nulls(batch.num_rows, schema.IMAGE_SCHEMA.field(c).type)
                for c in columns
            ]
            batch = pa.RecordBatch.from_arrays(arrays, names=list(columns))
        yield first, batch
        first += batch.num_rows


@beam.typehints.with_output_types(tuple[int, typing.Any])
class _KeyRecords(beam.DoFn):
    """(input index, path) -> (key shard, KEY_RECORD array) for every row of the file; tagged
    `rows_in`: (input index, rows read) per batch, the books' "in" side."""

    ROWS_IN = "rows_in"

    def process(self, element):
        index, path = element
        fid = np.int64(file_id(path))
        for first, batch in _batches(path, ["key", "fetched_at"]):
            n = batch.num_rows
            yield beam.pvalue.TaggedOutput(self.ROWS_IN, (index, n))
            records = np.empty(n, dtype=KEY_RECORD)
            records["key"] = [
                hashlib.blake2b(str(k).encode("utf-8"), digest_size=16).digest() for k in batch.column(0).to_pylist()
            ]
            stamps = batch.column(1).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            records["stamp"] = stamps.fill_null(NO_STAMP).to_numpy(zero_copy_only=False)
            records["input"], records["file"] = index, fid
            records["row"] = np.arange(first, first + n, dtype=np.uint32)
            shard = np.ascontiguousarray(records["key"]).view(np.uint8).reshape(-1, 16)[:, 0]
            for s, idx in split_by(shard.astype(np.int64) % KEY_SHARDS):
                yield s, records[idx]


@beam.typehints.with_output_types(tuple[int, typing.Any])
class _Newest(beam.DoFn):
    """(key shard, [KEY_RECORD arrays]) -> (file id, row numbers to skip); tagged `replaced`:
    how many rows of the shard lost to a newer version of their key; tagged `repeated`: how many
    keys of the shard some input holds more than once.

    Only versions from different inputs replace each other: the input of a key's newest version
    keeps all its rows of that key (an output of an earlier ingest whose keys collided holds
    distinct records under one key), the other inputs' rows of it are replaced.
    """

    REPLACED = "replaced"
    REPEATED = "repeated"

    def process(self, element):
        _shard, parts = element
        records = np.concatenate(list(parts))
        if not len(records):
            return
        records = records[newest_order(records)]
        keys = records["key"]
        starts = np.ones(len(records), dtype=bool)
        starts[1:] = keys[1:] != keys[:-1]
        run = np.cumsum(starts) - 1  # each record's key run
        ends = np.append(np.flatnonzero(starts)[1:], len(records)) - 1  # the newest of each run
        inputs = records["input"].astype(np.int64)
        older = inputs != inputs[ends][run]  # not of the winning input: replaced
        pairs, counts = np.unique(run * (int(inputs.max()) + 1) + inputs, return_counts=True)
        repeated = len(np.unique(pairs[counts > 1] // (int(inputs.max()) + 1)))
        if repeated:
            yield beam.pvalue.TaggedOutput(self.REPEATED, repeated)
        losers = records[older]
        if len(losers):
            beam.metrics.Metrics.counter("dedup", "replaced_rows").inc(len(losers))
            yield beam.pvalue.TaggedOutput(self.REPLACED, len(losers))
            for fid, idx in split_by(losers["file"]):
                yield fid, np.sort(losers["row"][idx])


class NewestRows(beam.PTransform):
    """(input index, path) of table files -> {"skip": (file id, row numbers) of the rows a newer
    version of their key replaces, "replaced": per-shard counts of those rows (sum them),
    "repeated": per-shard counts of keys an input holds twice (sum them), "rows_in": (input
    index, rows read) per batch (sum per input)}.

    spill_dir: local directory the key records are grouped through (local runs); None: the
    runner's GroupByKey.
    """

    def __init__(self, spill_dir=None):
        super().__init__()
        self._spill_dir = spill_dir

    def expand(self, files):
        keyed = files | "KeyRecords" >> beam.ParDo(_KeyRecords()).with_outputs(_KeyRecords.ROWS_IN, main="records")
        newest = (
            keyed.records
            | "GroupKeys" >> GroupRecords(self._spill_dir, dtype_of=lambda _key: KEY_RECORD)
            | "Newest" >> beam.ParDo(_Newest()).with_outputs(_Newest.REPLACED, _Newest.REPEATED, main="skip")
        )
        return {
            "skip": newest.skip,
            "replaced": newest[_Newest.REPLACED],
            "repeated": newest[_Newest.REPEATED],
            "rows_in": keyed[_KeyRecords.ROWS_IN],
        }


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


def slim_columns(views):
    """SLIM_COLUMNS and each matched view's pHash/dHash: without them the view search sees nothing."""
    return SLIM_COLUMNS + [f"{h}_{view}" for view in views for h in ("phash", "dhash")]


def _slim_rows(element, skip, columns=SLIM_COLUMNS):
    _index, path = element
    for row in _kept_rows(path, columns, skip):
        yield slim_row(row)


def _member_rows(element, skip, components):
    """(component, member facts) of the kept rows of one file that are in a cluster."""
    _index, path = element
    if not components:
        return
    for row in _kept_rows(path, list(MEMBER_FIELDS), skip):
        yield from _place(row, components, singles=False, placeholder_views=False)


def _final_rows(element, skip, clustered):
    """Every kept row of one file with its cluster columns (alone: no cluster, canonical)."""
    _index, path = element
    for row in _kept_rows(path, None, skip):
        row["cluster_id"], row["is_canonical"], row["is_placeholder"] = clustered.get(row["key"], _ALONE)
        yield row


_ALONE = (None, True, False)


def _cluster_columns(row):
    return row["key"], (row["cluster_id"], bool(row.get("is_canonical")), bool(row.get("is_placeholder")))


class DedupTables(beam.PTransform):
    """Dedup over rows kept in Parquet files, streamed from them: no full row crosses a shuffle
    (the local runner holds whatever crosses one in memory, and so does a Flatten of two stages).

    Input {"files": (input index, path) of every table file, "skip": NewestRows' skip lists}.
    Output {"cluster_columns": (key, (cluster_id, is_canonical, is_placeholder)) of the rows in a
    cluster (rows not listed are alone: (None, True, False)), "clusters", "stats"}, and with
    rows=True also "rows": every kept row with its cluster columns, as Dedup's.

    dedup: the configured Dedup whose steps run here (job_runner.dedup_transform).
    rows: also make the rows (a pass over every column of every row: leave it off when the
        table is copied at the Arrow level instead, `CopyTables`).
    """

    def __init__(self, dedup: Dedup, rows: bool = True):
        super().__init__()
        self._dedup = dedup
        self._rows = rows

    def expand(self, inputs):
        files, skip = inputs["files"], beam.pvalue.AsMultiMap(inputs["skip"])
        # why: pass 2, only the dedup columns of each kept row, for the graph
        slim = files | "SlimRows" >> beam.FlatMap(_slim_rows, skip=skip, columns=slim_columns(self._dedup.views))
        found = self._dedup.find_components(slim)
        # why: pass 3, the facts the cluster records need, of clustered rows only
        members = files | "MemberRows" >> beam.FlatMap(
            _member_rows, skip=skip, components=beam.pvalue.AsDict(found["components"])
        ).with_output_types(tuple[str, typing.Any])
        clustered = self._dedup.cluster(members)
        columns = clustered["rows"] | "ClusterColumns" >> beam.Map(_cluster_columns)
        stats = self._dedup.stats(clustered["clusters"], slim, found["near_pairs"], found["view_pairs"])
        out = {"cluster_columns": columns, "clusters": clustered["clusters"], "stats": stats}
        if self._rows:
            # why: pass 4, every kept row once with its columns: one stage, so rows stream on
            out["rows"] = files | "FinalRows" >> beam.FlatMap(
                _final_rows, skip=skip, clustered=beam.pvalue.AsDict(columns)
            )
        return out


def copy_table_file(element, skip, assignments, images_dir, run_id, batch_rows=READ_BATCH):
    """One input file -> OUT/images/part-<run>-<file id>.parquet: its kept rows, every column
    of IMAGE_SCHEMA (missing ones null), cluster columns from `assignments`.

    Arrow batches in and out (no Python row objects); written under a temporary name, then
    renamed, so a retried copy overwrites rather than duplicates.

    Args:
        element: (input index, path) of the input file.
        skip: NewestRows' skip lists (file id -> row number arrays).
        assignments: key -> (cluster_id, is_canonical, is_placeholder) of clustered rows.
        images_dir: OUT/images.
        run_id: names this run's files.
    Returns:
        {"path": the file written, "rows": rows copied}.
    """
    from transforms import schema
    from transforms.io.checked_parquet import table_writer
    from transforms.io.table import _with_cluster_columns

    _index, path = element
    release_freed_memory()  # why: the searches' freed temporaries would be this copy's floor
    skipped = _skipped(path, skip)
    target = FileSystems.join(images_dir, f"part-{run_id}-{file_id(path):016x}.parquet")
    temporary = f"{target}.tmp-{uuid.uuid4().hex}"
    copied = 0
    with FileSystems.create(temporary) as handle:
        with table_writer(handle, schema.IMAGE_SCHEMA) as writer:
            for first, batch in _batches(path, None):
                if skipped:
                    keep = np.array([i not in skipped for i in range(first, first + batch.num_rows)], dtype=bool)
                    batch = batch.filter(pa.array(keep))
                names = batch.schema.names
                columns = [
                    batch.column(names.index(f.name)).cast(f.type)
                    if f.name in names
                    else pa.nulls(batch.num_rows, f.type)
                    for f in schema.IMAGE_SCHEMA
                ]
                table = pa.Table.from_arrays(columns, schema=schema.IMAGE_SCHEMA)
                writer.write_table(_with_cluster_columns(table, assignments))
                copied += table.num_rows
    FileSystems.rename([temporary], [target])
    beam.metrics.Metrics.counter("table", "rows_written").inc(copied)
    return {"path": target, "rows": copied}


class CopyTables(beam.PTransform):
    """(input index, path) of the input files -> {"path", "rows"} of each file written to
    OUT/images (see copy_table_file): the dedup job's output table, copied file by file.

    skip: NewestRows' skip lists; cluster_columns: DedupTables' cluster_columns.
    """

    def __init__(self, out_dir: str, run_id: str, skip, cluster_columns):
        super().__init__()
        self._images_dir = FileSystems.join(out_dir, "images")
        self._run_id = run_id
        self._skip = skip
        self._columns = cluster_columns

    def expand(self, files):
        return files | "Copy" >> beam.Map(
            copy_table_file,
            skip=beam.pvalue.AsMultiMap(self._skip),
            assignments=beam.pvalue.AsDict(self._columns),
            images_dir=self._images_dir,
            run_id=self._run_id,
        )

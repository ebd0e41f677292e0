"""Dedup of rows that sit in Parquet tables (the standalone dedup job): full rows never cross a
shuffle, and a key kept by several inputs is resolved on small fixed-size records.

Three passes over the files, each one file at a time:
  1. keys (`key_versions.NewestRows`): which rows a newer version of their key replaces, listed
     per file as rows to skip (`skip`: (file id, row numbers)), a few bytes per replaced row;
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
from transforms.errors import BadInput

__all__ = [
    "CopyTables",
    "DedupTables",
    "ListTables",
    "copy_table_file",
    "file_batches",
    "file_id",
    "skipped_rows",
    "slim_columns",
]

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
    input spread over workers. `files`: each input's files as checked before the run (the job's
    table_record.checked_table); None: listed when the pipeline runs."""

    def __init__(self, inputs, files=None):
        super().__init__()
        self._inputs = list(inputs)
        self._files = None if files is None else [list(paths) for paths in files]

    def expand(self, pbegin):
        if self._files is not None:
            # why: listed again here, a table an ingest rerun was publishing into meanwhile came as
            # both tables' parts (14 rows written of a 6- and an 8-row table), exit 0
            listed = pbegin | "Files" >> beam.Create(
                [(i, path) for i, paths in enumerate(self._files) for path in paths]
            )
        else:
            listed = (
                pbegin | "Inputs" >> beam.Create(list(enumerate(self._inputs))) | "Match" >> beam.ParDo(_ListFiles())
            )
        return listed | "Spread" >> beam.Reshuffle()


def _open_parquet(path):
    from transforms.io.checked_parquet import open_table_file

    return open_table_file(path)


# Columns without which a file is no ingest table; any other column asked for may be missing
# (an older table, or one without phash): it reads as nulls.
REQUIRED_COLUMNS = ("key", "dataset", "url", "status")


def file_batches(path: str, columns: list[str] | None) -> typing.Iterator[tuple[int, pa.RecordBatch]]:
    """(first row number, record batch) of `columns` of one table file (all of them if None); a
    missing column other than REQUIRED_COLUMNS comes as nulls of its IMAGE_SCHEMA type.

    Args:
        path: the Parquet file (local or gs://), read in READ_BATCH-row batches.
        columns: the columns to read, in this order; None: every column of the file.
    """
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
            assert columns is not None and present is not None  # what is missing was asked for
            arrays = [
                batch.column(present.index(c))
                if c in present
                else pa.nulls(batch.num_rows, schema.IMAGE_SCHEMA.field(c).type)
                for c in columns
            ]
            batch = pa.RecordBatch.from_arrays(arrays, names=list(columns))
        yield first, batch
        first += batch.num_rows


def skipped_rows(path: str, skip) -> frozenset | None:
    """The row numbers of one file that the skip lists name.

    Args:
        path: the table file.
        skip: the skip lists as a side input (beam.pvalue.AsMultiMap: file id -> row arrays).
    Returns:
        The rows, or None when the file has none to skip.
    """
    rows = list(skip[file_id(path)])  # a MultiMap: empty for a file with nothing to skip
    if not rows:
        return None
    return frozenset(np.concatenate(rows).tolist())


def _kept_rows(path, columns, skip):
    """Rows (dicts) of one file, minus the replaced ones."""
    skipped = skipped_rows(path, skip)
    for first, batch in file_batches(path, columns):
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
        stats = self._dedup.stats(clustered["clusters"], slim, found)
        out = {"cluster_columns": columns, "clusters": clustered["clusters"], "stats": stats}
        if self._rows:
            # why: pass 4, every kept row once with its columns: one stage, so rows stream on
            out["rows"] = files | "FinalRows" >> beam.FlatMap(
                _final_rows, skip=skip, clustered=beam.pvalue.AsDict(columns)
            )
        return out


def copy_table_file(element, skip, assignments, images_dir, run_id, batch_rows=READ_BATCH, guard=None, blob_roots=None):
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
        guard: a LeaseGuard confirmed before the rename (lost: this run's parts in images/ go).
        blob_roots: {input index: OUT} of the ingest outputs, whose rows' blobs are re-pointed to
            OUT/blobs/ (blob_homes.rooted_blobs: an OUT moved, or an older version's relative URIs).
    Returns:
        {"path": the file written, "rows": rows copied}.
    """
    from transforms import schema
    from transforms.io.blob_homes import rooted_blobs
    from transforms.io.checked_parquet import table_writer
    from transforms.io.table import _with_cluster_columns

    index, path = element
    home = (blob_roots or {}).get(index)
    release_freed_memory()  # why: the searches' freed temporaries would be this copy's floor
    skipped = skipped_rows(path, skip)
    target = FileSystems.join(images_dir, f"part-{run_id}-{file_id(path):016x}.parquet")
    temporary = f"{target}.tmp-{uuid.uuid4().hex}"
    copied = 0
    with FileSystems.create(temporary) as handle:
        with table_writer(handle, schema.IMAGE_SCHEMA) as writer:
            for first, batch in file_batches(path, None):
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
                if home is not None:
                    blob = schema.IMAGE_COLUMNS.index("blob")
                    table = table.set_column(blob, "blob", rooted_blobs(table.column(blob), home))
                writer.write_table(_with_cluster_columns(table, assignments))
                copied += table.num_rows
    if guard is not None:  # why: a run taken over published its parts among the new holder's
        guard.confirm([temporary, FileSystems.join(images_dir, f"part-{run_id}-*.parquet")])
    FileSystems.rename([temporary], [target])
    beam.metrics.Metrics.counter("table", "rows_written").inc(copied)
    return {"path": target, "rows": copied}


class CopyTables(beam.PTransform):
    """(input index, path) of the input files -> {"path", "rows"} of each file written to
    OUT/images (see copy_table_file): the dedup job's output table, copied file by file.

    skip: NewestRows' skip lists; cluster_columns: DedupTables' cluster_columns; blob_roots:
    blob_homes.blob_homes of the inputs.
    """

    def __init__(self, out_dir: str, run_id: str, skip, cluster_columns, guard=None, blob_roots=None):
        super().__init__()
        self._blob_roots = dict(blob_roots or {})
        self._guard = guard
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
            guard=self._guard,
            blob_roots=self._blob_roots,
        )

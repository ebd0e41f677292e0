"""The OUT/images table: reading a previous run's rows, writing this run's, retiring the old files.

Writing is two-phase so that full rows never cross a shuffle (a runner buffers what crosses one;
the local runner holds it all in memory):
  1. `WriteTableShards`, fused with the fetch, streams each bundle's rows into a temporary Parquet shard;
  2. once the duplicate clusters are known (computed from a small projection of the rows),
     `FinalizeTable` rewrites each shard into OUT/images with cluster_id / is_canonical set.
Each run writes its part files under a run-unique prefix and deletes the files it found at launch
only after its own are final, so a re-run or resume never mixes generations, and a failed run
leaves the previous table whole. A failed bundle's shards are orphans in the run's temporary
directory, which is removed at the end: only shards of committed bundles reach OUT/images.

Public transforms (rows are `schema.Row` dicts):

- `ReadImageTable(files)`: PBegin -> the rows of those OUT/images Parquet files.
- `WriteTableShards(out_dir, run_id)`: rows -> `str` paths of temporary shards (phase 1).
- `FinalizeTable(out_dir, run_id, clusters)`: shard paths -> `str` final file names (phase 2);
  `clusters` is a PCollection of `(key, (cluster_id, is_canonical, is_placeholder))`.
- `RetireFiles(stale, after)`: this run's file names -> the `stale` paths, each deleted unless written now
  (once `after`, e.g. the books' check, is complete).
- `RemoveDirectory(directory, *more)`: any PCollection -> the directories, deleted once the input is complete.
"""

from __future__ import annotations

import collections
import hashlib
import os
import uuid
from collections.abc import Iterable

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from transforms import schema
from transforms.io.checked_parquet import ParquetShardsDoFn, ReadTableRecords, table_batches, table_writer
from transforms.io.sinks import delete_tree, join_path

CLUSTER_COLUMNS = ("cluster_id", "is_canonical", "is_placeholder")

PART_PREFIX = "part"

__all__ = [
    "CLUSTER_COLUMNS",
    "PART_PREFIX",
    "list_table_files",
    "list_orphan_shards",
    "restore_row",
    "ReadImageTable",
    "WriteShardsDoFn",
    "final_name",
    "finalize_shard",
    "temporary_dir",
    "WriteTableShards",
    "FinalizeTable",
    "RemoveDirectory",
    "RetireFiles",
]


def list_table_files(out_dir: str) -> list[str]:
    """The Parquet files of OUT/images, sorted; [] if there is no table yet."""
    pattern = join_path(out_dir, "images", "*.parquet")
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def list_orphan_shards(out_dir: str) -> list[str]:
    """Shards a crashed run left in its temporary directory."""
    pattern = join_path(out_dir, "_tmp-*", "*")
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def list_duplicates_files(out_dir):
    """OUT/duplicates/clusters-*.jsonl of an earlier run: replaced by this run's once written."""
    pattern = join_path(out_dir, "duplicates", "clusters-*")
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


STALE_PATTERNS = (
    "_tmp-*/**",  # a failed run's shards, spill files and blob temporaries
    "images/*.tmp-*",  # a part file cut short while being finalised
    "images/beam-temp-*/**",  # Beam's own temporaries (earlier dedup versions)
    "duplicates/beam-temp-*/**",
    "summary.json.tmp-*",  # a summary being written aside (sinks.write_json) when the run was killed
    "dead_blobs.txt.tmp-*",  # the dedup job's --drop-dead list, written aside, of a run that failed or was killed
)


def remove_stale_leftovers(out_dir):
    """Deletes what failed or interrupted runs left in OUT; call it holding OUT's lease.

    Returns:
        The number of files removed.
    """
    removed = 0
    for pattern in STALE_PATTERNS:
        files = [m.path for r in FileSystems.match([join_path(out_dir, pattern)]) for m in r.metadata_list]
        if files:
            FileSystems.delete(files)
            removed += len(files)
    if "://" not in out_dir:  # local folders stay behind once empty; object stores have none
        import glob  # noqa: PLC0415
        import shutil  # noqa: PLC0415

        for pattern in ("_tmp-*", "images/beam-temp-*", "duplicates/beam-temp-*"):
            for folder in glob.glob(os.path.join(out_dir, pattern)):
                shutil.rmtree(folder, ignore_errors=True)
    return removed


def restore_row(record):
    """A Parquet record back into a full row (columns added since it was written get defaults)."""
    row = schema.new_row(record.get("dataset"), record.get("key"))
    for name, value in record.items():
        if name in row and value is not None:
            row[name] = value
    return row


class ReadImageTable(beam.PTransform):
    """Rows of the given OUT/images Parquet files (listed at construction)."""

    def __init__(self, files: Iterable[str]) -> None:
        super().__init__()
        self._files = list(files)

    def expand(self, pbegin):
        return pbegin | "Read" >> ReadTableRecords(self._files) | "Restore" >> beam.Map(restore_row)


class WriteShardsDoFn(ParquetShardsDoFn):
    """Rows -> temporary Parquet shards of OUT/images rows, at most `shard_rows` rows each;
    yields each shard's path (checked_parquet.ParquetShardsDoFn, counted as table/rows_written).
    """

    def __init__(self, tmp_dir: str, batch_rows: int = 2000, shard_rows: int = 20000) -> None:
        super().__init__(
            tmp_dir,
            schema.IMAGE_SCHEMA,
            schema.to_parquet_record,
            batch_rows,
            shard_rows,
            counter=("table", "rows_written"),
        )


def final_name(images_dir: str, run_id: str, shard_path: str) -> str:
    """Deterministic per shard, so a retried finalisation overwrites rather than duplicates."""
    digest = hashlib.sha1(os.path.basename(shard_path).encode()).hexdigest()[:16]
    return join_path(images_dir, f"{PART_PREFIX}-{run_id}-{digest}.parquet")


def finalize_shard(shard_path, assignments, images_dir, run_id, batch_rows=5000, guard=None):
    """Copies a shard to OUT/images with the cluster columns from `assignments` (key -> tuple;
    None: the shard's own cluster columns are kept).

    Streamed in batches of `batch_rows`: memory holds one batch, not the shard. `guard` (a
    LeaseGuard) confirms the lease before the rename; lost, this run's parts in images/ go.

    Returns:
        {"path": the final file, "rows": rows written, "per_file": {source_file: rows}}; the
        books' "out" side.
    """
    target = final_name(images_dir, run_id, shard_path)
    temporary = f"{target}.tmp-{uuid.uuid4().hex}"
    per_file = collections.Counter()
    with FileSystems.create(temporary) as handle:
        with table_writer(handle, schema.IMAGE_SCHEMA) as writer:
            for batch in table_batches(shard_path, batch_size=batch_rows):
                table = pa.Table.from_batches([batch])
                if assignments is not None:
                    table = _with_cluster_columns(table, assignments)
                writer.write_table(table)
                for entry in pc.value_counts(table.column("source_file")).to_pylist():
                    per_file[entry["values"] or ""] += entry["counts"]
    if guard is not None:  # why: a run taken over published its parts among the new holder's
        mine = [temporary, join_path(images_dir, f"{PART_PREFIX}-{run_id}-*.parquet")]
        guard.confirm([*mine, temporary_dir(os.path.dirname(images_dir.rstrip("/")), run_id) + "/"])
    FileSystems.rename([temporary], [target])
    return {"path": target, "rows": sum(per_file.values()), "per_file": dict(per_file)}


def write_empty_part(images_dir, run_id, finalized, guard=None):
    """OUT/images/part-<run>-empty.parquet, zero rows, full schema, when no shard was finalised:
    an empty manifest is an empty dataset that readers (dedup, refresh, export) accept."""
    if finalized:
        return []
    if guard is not None:
        guard.confirm()
    target = join_path(images_dir, f"{PART_PREFIX}-{run_id}-empty.parquet")
    with FileSystems.create(target) as handle:
        with table_writer(handle, schema.IMAGE_SCHEMA) as writer:
            writer.write_table(schema.IMAGE_SCHEMA.empty_table())
    return [{"path": target, "rows": 0, "per_file": {}}]


def _with_cluster_columns(table, assignments):
    found = [assignments.get(key) for key in table.column("key").to_pylist()]
    for position, name in enumerate(CLUSTER_COLUMNS):
        default = True if name == "is_canonical" else (False if name == "is_placeholder" else None)
        values = [value[position] if value is not None else default for value in found]
        field = schema.IMAGE_SCHEMA.field(name)
        table = table.set_column(table.schema.get_field_index(name), field, pa.array(values, type=field.type))
    return table


def temporary_dir(out_dir: str, run_id: str) -> str:
    """OUT/_tmp-<run>: where a run's shards wait for their cluster columns."""
    return join_path(out_dir, f"_tmp-{run_id}")


class WriteTableShards(beam.PTransform):
    """Rows -> paths of temporary Parquet shards in OUT/_tmp-<run> (phase 1)."""

    def __init__(self, out_dir: str, run_id: str, shard_rows: int = 20000) -> None:
        super().__init__()
        self._tmp_dir = temporary_dir(out_dir, run_id)
        self._shard_rows = shard_rows

    def expand(self, rows):
        return rows | "Shards" >> beam.ParDo(WriteShardsDoFn(self._tmp_dir, shard_rows=self._shard_rows))


class FinalizeTable(beam.PTransform):
    """Shard paths -> OUT/images/part-<run>-<shard>.parquet, cluster columns joined from `clusters`
    (phase 2); removes the temporary directory after. Returns the final file names, or with
    with_counts {"files": names, "counts": finalize_shard's dicts}. No shard at all (an empty
    input) gives one empty part file with the full schema.

    `clusters`: (key, (cluster_id, is_canonical, is_placeholder)) for rows in a cluster only; rows
    not listed get (None, True, False). None: the rows already carry their cluster columns.
    """

    def __init__(self, out_dir, run_id, clusters, with_counts=False, guard=None):
        super().__init__()
        self._guard = guard
        self._out_dir = out_dir
        self._run_id = run_id
        self._clusters = clusters
        self._with_counts = with_counts

    def expand(self, shards):
        images_dir = join_path(self._out_dir, "images")
        assignments = beam.pvalue.AsDict(self._clusters) if self._clusters is not None else None
        finalized = (
            shards
            | "SpreadShards" >> beam.Reshuffle()
            | "Finalize"
            >> beam.Map(
                finalize_shard, assignments=assignments, images_dir=images_dir, run_id=self._run_id, guard=self._guard
            )
        )
        # Why: zero rows must still leave a table with the full schema, not a missing folder.
        empty = (
            shards.pipeline
            | "Once" >> beam.Create([None])
            | "EmptyTable"
            >> beam.FlatMap(
                lambda _, done, run_id, guard: write_empty_part(images_dir, run_id, done, guard),
                done=beam.pvalue.AsList(finalized),
                run_id=self._run_id,
                guard=self._guard,
            )
        )
        counts = (finalized, empty) | "AllParts" >> beam.Flatten()
        final = counts | "Names" >> beam.Map(lambda written: written["path"])
        _ = final | "DropTemporary" >> RemoveDirectory(temporary_dir(self._out_dir, self._run_id))
        return {"files": final, "counts": counts} if self._with_counts else final


class RemoveDirectory(beam.PTransform):
    """Deletes `directory` (and any `more`) once the input PCollection is complete (it is a side
    input: keep it small, a count or the like)."""

    def __init__(self, directory: str, *more: str) -> None:
        super().__init__()
        self._directories = [directory, *more]

    def expand(self, done):
        return (
            done.pipeline
            | "Once" >> beam.Create(self._directories)
            | "Delete" >> beam.Map(_delete_tree, done=beam.pvalue.AsList(done))
        )


def _delete_tree(directory, done):
    delete_tree(directory)
    return directory


class RetireFiles(beam.PTransform):
    """Deletes `stale` files once `written` (this run's files) exist; never one of `written`.

    after: a PCollection that must be complete first, e.g. the books' check: a run whose books
    fail never gets this far, so the previous files stay (docs/integrity.md).
    guard: a LeaseGuard confirmed before each deletion (a run taken over deletes nothing).
    """

    def __init__(self, stale: Iterable[str], after=None, guard=None) -> None:
        super().__init__()
        self._stale = list(stale)
        self._after = after
        self._guard = guard

    def expand(self, written):
        gate = {} if self._after is None else {"after": beam.pvalue.AsList(self._after)}
        return (
            written.pipeline
            | "Stale" >> beam.Create(self._stale)
            | "Delete"
            >> beam.Map(_delete_unless_written, written=beam.pvalue.AsList(written), guard=self._guard, **gate)
        )


def _delete_unless_written(path, written, after=(), guard=None):
    if guard is not None:
        guard.confirm()
    if path not in set(written) and FileSystems.exists(path):
        FileSystems.delete([path])
    return path

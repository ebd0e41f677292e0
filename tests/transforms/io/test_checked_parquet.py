"""WriteTableFiles: every row once, in numbered files with page checksums, nothing else left."""

import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline

from transforms.io.checked_parquet import ParquetShardsDoFn, WriteTableFiles, _publish, table_batches

SCHEMA = pa.schema([("key", pa.string()), ("n", pa.int64()), ("note", pa.string())])


def _write(tmp_path, rows):
    directory = str(tmp_path / "status")
    with TestPipeline(runner="FnApiRunner") as p:
        _ = p | beam.Create(rows, reshuffle=True) | WriteTableFiles(directory, SCHEMA)
    return directory


def test_rows_of_many_bundles_are_written_once_in_numbered_files(tmp_path):
    rows = [
        {"key": f"k{i}", "n": i, "note": None if i % 3 else "x" * (i % 50)} for i in range(12345)
    ]  # no multiple of 2000: a last part-batch
    directory = _write(tmp_path, rows)
    names = sorted(os.listdir(directory))
    count = len(names)
    assert names == [f"part-{i:05d}-of-{count:05d}.parquet" for i in range(count)]  # no _tmp-* left
    read = [r for name in names for batch in table_batches(os.path.join(directory, name)) for r in batch.to_pylist()]
    assert sorted(read, key=lambda r: r["n"]) == rows
    assert pq.read_schema(os.path.join(directory, names[0])) == SCHEMA


def test_no_rows_give_one_empty_file_with_the_schema(tmp_path):
    directory = _write(tmp_path, [])
    assert os.listdir(directory) == ["part-00000-of-00001.parquet"]
    table = pq.read_table(os.path.join(directory, "part-00000-of-00001.parquet"))
    assert table.num_rows == 0 and table.schema == SCHEMA


def _attempt(dofn, rows):
    """One bundle attempt of ParquetShardsDoFn driven as a runner would: the paths it outputs."""
    dofn.setup()
    dofn.start_bundle()
    paths = [path for row in rows for path in dofn.process(row)]
    return paths + [value.value for value in dofn.finish_bundle()]


def test_a_retried_bundle_and_a_retried_publish_leave_every_row_once(tmp_path):
    # A runner retries a failed bundle (Dataflow does; the local runner fails the job instead):
    # the failed attempt's files stay in the temporary folder, uncommitted. Only the committed
    # attempts' paths reach Publish; a retried Publish finds its files renamed already.
    directory = str(tmp_path / "status")
    temp_dir = os.path.join(directory, "_tmp-test")
    rows = [{"key": f"k{i}", "n": i, "note": None} for i in range(4500)]
    dofn = ParquetShardsDoFn(temp_dir, SCHEMA, batch_rows=1000, shard_rows=2000)
    failed = _attempt(dofn, rows[:3000])  # its outputs are never committed
    committed = _attempt(dofn, rows[:3000]) + _attempt(dofn, rows[3000:])
    assert len(failed) == 2 and len(committed) == 3 and not set(failed) & set(committed)

    finals = _publish(committed, directory, "part", temp_dir, SCHEMA)
    again = _publish(committed, directory, "part", temp_dir, SCHEMA)  # the Publish step retried

    assert again == finals == [os.path.join(directory, f"part-{i:05d}-of-00003.parquet") for i in range(3)]
    assert sorted(os.listdir(directory)) == [os.path.basename(f) for f in finals]  # the orphans went with _tmp
    read = [r for path in finals for batch in table_batches(path) for r in batch.to_pylist()]
    assert sorted(read, key=lambda r: r["n"]) == rows

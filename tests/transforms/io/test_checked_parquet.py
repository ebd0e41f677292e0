"""WriteTableFiles: every row once, in numbered files with page checksums, nothing else left."""

import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline

from transforms.io.checked_parquet import WriteTableFiles, table_batches

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

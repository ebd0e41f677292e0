"""GroupRecords through files groups numpy records exactly like the runner's GroupByKey."""

import os

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.clustering.spill import GroupRecords, RecordFiles

RECORD = np.dtype([("a", "<u8"), ("tag", "S3")])


def batches():
    # 40 batches over 3 keys, each batch a few records: many appends per key and file.
    rng = np.random.default_rng(5)
    out = []
    for i in range(40):
        records = np.zeros(int(rng.integers(1, 20)), dtype=RECORD)
        records["a"] = rng.integers(0, 2**63, len(records), dtype=np.uint64)
        records["tag"] = b"t%d" % (i % 7)
        out.append((("k", i % 3), records))
    return out


def as_sorted_tuples(element):
    key, parts = element
    records = np.concatenate(list(parts))
    return key, sorted(zip(records["a"].tolist(), records["tag"].tolist(), strict=False))


def test_grouping_through_files_equals_group_by_key(tmp_path):
    expected = {}
    for key, records in batches():
        expected.setdefault(key, []).extend(zip(records["a"].tolist(), records["tag"].tolist(), strict=False))
    expected = [(key, sorted(values)) for key, values in expected.items()]
    spill = str(tmp_path / "spill")
    with TestPipeline(runner="FnApiRunner") as p:
        records = p | beam.Create(batches(), reshuffle=True)  # several bundles
        through_files = records | "Files" >> GroupRecords(spill, dtype_of=lambda _key: RECORD, flush_bytes=200)
        in_memory = records | "Memory" >> GroupRecords(None)
        assert_that(through_files | "F" >> beam.Map(as_sorted_tuples), equal_to(expected), label="files")
        assert_that(in_memory | "M" >> beam.Map(as_sorted_tuples), equal_to(expected), label="memory")
    # one file per key and bundle, appended to at every flush (200 bytes: most batches)
    assert os.listdir(spill) and all(name.endswith(".bin") for name in os.listdir(spill))


def test_grouping_in_chunks_reads_bounded_chunks_and_iterates_again(tmp_path):
    """chunk_records: each key's records come back in arrays of at most that many, as often as
    they are iterated, and together they are the key's records."""
    expected = {}
    for key, records in batches():
        expected.setdefault(key, []).extend(zip(records["a"].tolist(), records["tag"].tolist(), strict=False))
    expected = [(key, sorted(values)) for key, values in expected.items()]

    def chunked(element):
        key, parts = element
        sizes = [len(part) for part in parts]
        again = sum(len(part) for part in parts)  # a second pass reads the same records
        assert max(sizes) <= 7 and sum(sizes) == again, sizes
        return as_sorted_tuples(element)

    with TestPipeline(runner="FnApiRunner") as p:
        grouped = (
            p
            | beam.Create(batches(), reshuffle=True)
            | GroupRecords(str(tmp_path / "spill"), dtype_of=lambda _key: RECORD, flush_bytes=200, chunk_records=7)
        )
        assert_that(grouped | beam.Map(chunked), equal_to(expected))


def test_record_files_reads_each_file_in_chunks(tmp_path):
    records = np.zeros(25, dtype=RECORD)
    records["a"] = np.arange(25)
    paths = []
    for i, part in enumerate((records[:10], records[10:11], records[11:])):
        paths.append(str(tmp_path / f"{i}.bin"))
        part.tofile(paths[-1])
    files = RecordFiles(paths, RECORD, 4)
    assert [len(c) for c in files] == [4, 4, 2, 1, 4, 4, 4, 2]
    assert np.concatenate(list(files))["a"].tolist() == list(range(25))

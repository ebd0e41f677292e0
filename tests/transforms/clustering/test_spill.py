"""GroupRecords and GroupEncoded through files group exactly like the runner's GroupByKey."""

import datetime
import os
import pickle

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.clustering.spill import EncodedGroup, GroupEncoded, GroupRecords, RecordFiles

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


def rows_of_clusters():
    # 300 rows over 40 keys of two kinds, one key holding a third of them (a placeholder's group),
    # values of the types a table row holds.
    rng = np.random.default_rng(11)
    out = []
    for i in range(300):
        key = "p:big" if i % 3 == 0 else ("c", int(rng.integers(0, 39)))
        value = {
            "key": f"cc3m:{i}",
            "width": int(rng.integers(1, 5000)),
            "score": float(rng.random()),
            "phash_mirror": None if i % 5 else "00ff" * 4,
            "labels": ["a", "b"][: i % 3],
            "fetched_at": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=i),
            "ok": bool(i % 2),
        }
        out.append((key, value))
    return out


def test_grouping_encoded_values_through_files_equals_group_by_key(tmp_path):
    """Every value comes back once, under its key, however the bundles split them; a group can be
    iterated again (the cluster step reads its rows twice) and counted without reading it."""
    expected = {}
    for key, value in rows_of_clusters():
        expected.setdefault(key, []).append(value)
    expected = [(key, sorted(values, key=lambda v: v["key"])) for key, values in expected.items()]

    def twice(element):
        key, values = element
        first, second = list(values), list(values)
        assert first == second
        if isinstance(values, EncodedGroup):
            assert len(values) == len(first)
        return key, sorted(first, key=lambda v: v["key"])

    spill = str(tmp_path / "spill")
    with TestPipeline(runner="FnApiRunner") as p:
        rows = p | beam.Create(rows_of_clusters(), reshuffle=True)  # several bundles
        through_files = rows | "Files" >> GroupEncoded(spill, buckets=4, flush_bytes=500)
        in_memory = rows | "Memory" >> GroupEncoded(None)
        assert_that(through_files | "F" >> beam.Map(twice), equal_to(expected), label="files")
        assert_that(in_memory | "M" >> beam.Map(twice), equal_to(expected), label="memory")
    names = os.listdir(spill)
    assert names and all(name.endswith(".pkl") for name in names)
    assert {name.split("-")[0] for name in names} <= {"0", "1", "2", "3"}  # one file per bucket and bundle


def test_an_encoded_group_reads_its_ranges_across_files(tmp_path):
    first, second = tmp_path / "a.pkl", tmp_path / "b.pkl"
    first.write_bytes(b"xx" + pickle.dumps({"n": 1}) + b"yyy")
    second.write_bytes(pickle.dumps([2, 3]))
    ranges = [(str(first), 2, first.stat().st_size - 5), (str(second), 0, second.stat().st_size)]
    group = EncodedGroup(ranges)
    assert list(group) == [{"n": 1}, [2, 3]] == list(group) and len(group) == 2

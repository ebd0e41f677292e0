import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.io.sinks import CountBlobs, publish_file


def test_count_blobs_counts_each_distinct_blob_once_across_shards_and_batches():
    # 3000 distinct blobs, each pointed at by 1-3 rows, plus rows without a blob: the digests
    # spread over every shard and several batches, and duplicates meet in different batches.
    rows = [{"blob": f"out/blobs/{i:05d}.jpg"} for i in range(3000) for _ in range(1 + i % 3)]
    rows += [{"blob": None}, {}] * 50
    with TestPipeline() as p:
        count = p | beam.Create(rows, reshuffle=True) | CountBlobs()
        assert_that(count, equal_to([3000]))


def test_count_blobs_of_nothing_is_zero():
    with TestPipeline() as p:
        assert_that(p | beam.Create([{"blob": None}]) | CountBlobs(), equal_to([0]))


def test_publish_file_renames_once_and_a_retry_finds_it_in_place(tmp_path):
    aside, final = tmp_path / "_tmp-run" / "summary.json", tmp_path / "summary.json"
    aside.parent.mkdir()
    aside.write_text("new")
    final.write_text("earlier")
    assert publish_file(str(aside), str(final)) == str(final)
    assert final.read_text() == "new" and not aside.exists()
    assert publish_file(str(aside), str(final)) == str(final)  # a retried step
    final.unlink()
    with pytest.raises(OSError, match="vanished before it reached"):
        publish_file(str(aside), str(final))

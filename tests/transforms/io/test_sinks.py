import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.io.sinks import CountBlobs


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

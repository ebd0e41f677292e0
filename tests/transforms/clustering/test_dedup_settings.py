"""DedupSettings.transform: the near search's shard count by where and how big the run is."""

from transforms.clustering.dedup_settings import DedupSettings


def _shard_bits(settings, **kwargs):
    return settings.transform(**kwargs).config()["near_search"]["shard_bits"]


def test_one_process_shards_follow_the_expected_rows():
    settings = DedupSettings()
    assert _shard_bits(settings, one_process=True) == 0  # rows unknown (the ingest): unsharded
    assert _shard_bits(settings, one_process=True, expected_rows=1_000_000) == 0
    assert _shard_bits(settings, one_process=True, expected_rows=10_000_000) == 4
    assert _shard_bits(settings, one_process=True, expected_rows=15_700_000) == 4
    assert _shard_bits(settings, one_process=False, expected_rows=15_700_000) == 3  # worker processes, Dataflow
    assert _shard_bits(DedupSettings(shard_bits=2), one_process=True, expected_rows=10**8) == 2  # --shard-bits wins


def test_view_search_sharded_as_the_plain_search():
    """The view search's groups hold as many owners as the plain search's (a key a picture per
    band), so they get the same shard bits: bounded owners at any row count (issue 16)."""
    for rows, bits in ((1_000_000, 0), (3_000_000, 2), (15_700_000, 4)):
        config = DedupSettings().transform(one_process=True, expected_rows=rows).config()
        assert config["near_search"]["shard_bits"] == config["view_search"]["shard_bits"] == bits

"""The ingest's distinct-keys count (transforms/clustering/row_keys.py): the pieces of the check
that tests/pipelines/test_mishaps.py runs end to end."""

from transforms.clustering import row_keys


def test_a_shard_counts_its_distinct_keys_and_lists_only_a_few_doubled():
    keys = ["a", "b", "a", "c", "c", "c", None, ""] + [f"k{n}" for n in range(20)] * 2
    records, shards = row_keys.row_key_digests(keys, 256)
    assert len(records) == len(shards) == len(keys) and all(0 <= s < 256 for s in shards.tolist())
    distinct, doubled, listed = row_keys.count_row_keys(records)
    # None and "" are two keys; a, c and the 20 k's are doubled
    assert (distinct, doubled) == (25, 22)
    assert len(listed) == row_keys.KEYS_LISTED and all(len(d) == 12 for d in listed)


def test_the_books_name_a_doubled_key_and_tell_a_chance_digest_collision_apart(monkeypatch):
    counts = [(3, 1, [b"d" * 12]), (4, 0, [])]
    found = [("zero:k1", "/m.jsonl line 3"), ("zero:k1", "/m.jsonl line 1")]
    assert row_keys._key_books(counts, found) == {
        "distinct": 7,
        "doubled_keys": 1,
        "doubled": [{"key": "zero:k1", "rows": 2, "where": ["/m.jsonl line 1", "/m.jsonl line 3"]}],
    }
    # two keys whose digests meet by chance (forced here): two keys, none doubled
    monkeypatch.setattr(row_keys, "_digest", lambda key: b"d" * 12)
    found = [("zero:k1", "/m.jsonl line 1"), ("zero:k2", "/m.jsonl line 2")]
    assert row_keys._key_books(counts, found) == {"distinct": 8, "doubled_keys": 0, "doubled": []}

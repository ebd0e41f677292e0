"""Near-duplicate search: exactly the brute-force pair set, each pair once, for several
thresholds and geometries, in numpy and through Beam."""

import random
from collections import defaultdict

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.clustering import near_search
from transforms.clustering.near_search import (
    OWNERS_PER_GROUP,
    ROUTED_RECORD,
    BandPlan,
    NearDuplicatePairs,
    _SearchShard,
    plan_bands,
    query_chunks,
    shard_bits_for,
    volume,
)


def _dense_hashes(n, seed):
    """Hashes in tight families (random walks from a few seeds), so that many pairs fall at
    every distance up to ~16: a hard case for banding, unlike uniform random hashes."""
    rng = random.Random(seed)
    out = set()
    seeds = [rng.getrandbits(64) for _ in range(max(1, n // 40))]
    while len(out) < n:
        h = rng.choice(seeds)
        for _ in range(rng.randint(0, 8)):
            h ^= 1 << rng.randrange(64)
        out.add((h, rng.getrandbits(64) | 1))
    return sorted(out)


def _brute(nodes, k, dmax):
    p = np.array([a for a, _ in nodes], dtype=np.uint64)
    d = np.array([b for _, b in nodes], dtype=np.uint64)
    pairs = set()
    for i in range(len(nodes)):
        pd = np.bitwise_count(p[i] ^ p[i + 1 :])
        dd = np.bitwise_count(d[i] ^ d[i + 1 :])
        ok = pd <= k
        if dmax is not None:
            ok &= dd <= dmax
        for j in np.nonzero(ok)[0]:
            a, b = nodes[i], nodes[i + 1 + j]
            pairs.add((min(a, b), max(a, b)))
    return pairs


def _search(nodes, plan, dmax):
    shards = defaultdict(lambda: ([], [], [], []))
    p = np.array([a for a, _ in nodes], dtype=np.uint64)
    d = np.array([b for _, b in nodes], dtype=np.uint64)
    for start in range(0, len(nodes), 97):  # several batches, as BatchElements would make
        for (j, s), role, pp, dd in plan.route(p[start : start + 97], d[start : start + 97]):
            e = shards[(j, s)]
            (e[0] if role == "o" else e[2]).append(pp)
            (e[1] if role == "o" else e[3]).append(dd)
    found = []
    for (j, s), (op, od, qp, qd) in shards.items():
        if not op or not qp:
            continue
        op, od, qp, qd = (np.concatenate(x) for x in (op, od, qp, qd))
        for a, b, c, e, _pd, _dd in plan.search_shard(
            j, s, (op, od, od != 0), (qp, qd, qd != 0), dmax, chunk_pairs=50, chunk_probes=500
        ):
            found += [
                ((w, x), (y, z)) for w, x, y, z in zip(a.tolist(), b.tolist(), c.tolist(), e.tolist(), strict=False)
            ]
    return found


@pytest.mark.parametrize(
    "k,bands,shard_bits,dmax",
    [
        (8, None, 3, None),
        (8, None, 3, 30),
        (8, 4, 2, None),
        (3, None, 4, None),
        (0, None, 3, None),
        (11, None, 2, None),
        (5, 2, 0, None),
    ],
)
@pytest.mark.parametrize("lookup", ["dense-table", "binary-search"])
def test_search_equals_brute_force(k, bands, shard_bits, dmax, lookup, monkeypatch):
    # why both: a shard's owners are looked up in a dense table only when they are many (a 1M-row
    # run), by binary search when few (1200 hashes here); the two must find the same pairs.
    monkeypatch.setattr(near_search, "_DENSE_TABLE_SLOTS_PER_OWNER_BITS", 64 if lookup == "dense-table" else 0)
    nodes = _dense_hashes(1200, seed=k)
    plan = BandPlan(k, bands=bands, shard_bits=shard_bits)
    found = _search(nodes, plan, dmax)
    assert len(found) == len(set(found))  # each pair once
    assert all(a < b for a, b in found)
    expected = _brute(nodes, k, dmax)
    assert len(expected) > 50  # the data really has near pairs
    assert set(found) == expected


def test_plan_guarantee_and_cost_choice():
    for k in range(0, 20):
        m, r = plan_bands(k)
        assert m * (r + 1) > k  # pigeonhole: some band within r for any pair within k
    assert plan_bands(8) == (3, 2)
    plan = BandPlan(8)
    assert plan.sizes == [22, 21, 21]
    assert plan.describe()["probes_per_hash"] == sum(volume(b, 2) for b in (22, 21, 21))


def test_permutation_keeps_distances():
    plan = BandPlan(8)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**63, 500, dtype=np.uint64) * np.uint64(2)
    b = rng.integers(0, 2**63, 500, dtype=np.uint64)
    assert (np.bitwise_count(plan.permute(a) ^ plan.permute(b)) == np.bitwise_count(a ^ b)).all()
    assert len(set(plan.permute(a).tolist())) == len(set(a.tolist()))


def test_beam_transform_matches_brute_force():
    nodes = _dense_hashes(600, seed=21)
    expected = sorted(_brute(nodes, 8, 20))
    with TestPipeline(runner="FnApiRunner") as p:
        pairs = (
            p
            | beam.Create([(f"{a:016x}", f"{b:016x}") for a, b in nodes])
            | NearDuplicatePairs(8, dhash_max_distance=20, batch_size=64)
            | beam.Map(lambda t: ((t[0], t[1]), (t[2], t[3])))
        )
        assert_that(pairs, equal_to(expected))


def _met(plan, a, b):
    """Whether the probes meet the pair (a, b): within plan.radius bits in some band."""
    x = plan.permute(np.array([a ^ b], dtype=np.uint64))[0]
    return any(int(np.bitwise_count(x & m)) <= plan.radius for m in plan.band_masks)


def test_wide_keeps_met_pairs_past_the_threshold_only_when_dhash_agrees_closely():
    # families of dense hashes with dHashes close to their family's, so pairs past 8 bits exist
    # with close and with far dHashes
    rng = random.Random(3)
    nodes = set()
    for _ in range(40):
        p0, d0 = rng.getrandbits(64), rng.getrandbits(64)
        for _ in range(30):
            p, d = p0, d0
            for _ in range(rng.randint(0, 7)):
                p ^= 1 << rng.randrange(64)
            for _ in range(rng.randint(0, 6)):
                d ^= 1 << rng.randrange(64)
            nodes.add((p, d | 1))
    nodes = sorted(nodes)
    plan = BandPlan(8)
    expected = _brute(nodes, 8, 16)
    wide_only = {(a, b) for a, b in _brute(nodes, 10, 8) if (a[0] ^ b[0]).bit_count() > 8 and _met(plan, a[0], b[0])}
    assert len(wide_only) > 20  # the data has met pairs at 9-10 bits with close dHashes
    not_met = {(a, b) for a, b in _brute(nodes, 10, 8) if not _met(plan, a[0], b[0])}
    assert not_met  # and pairs the probes never meet: past 8 bits recall is not guaranteed

    found = _search_wide(nodes, plan, 16, (10, 8))
    assert len(found) == len(set(found))
    assert set(found) == expected | wide_only
    assert set(_search_wide(nodes, plan, 16, None)) == expected  # without wide: as before


def _search_wide(nodes, plan, dmax, wide):
    p = np.array([a for a, _ in nodes], dtype=np.uint64)
    d = np.array([b for _, b in nodes], dtype=np.uint64)
    shards = defaultdict(lambda: ([], [], [], []))
    for (j, s), role, pp, dd in plan.route(p, d):
        e = shards[(j, s)]
        (e[0] if role == "o" else e[2]).append(pp)
        (e[1] if role == "o" else e[3]).append(dd)
    found = []
    for (j, s), (op, od, qp, qd) in shards.items():
        if not op or not qp:
            continue
        op, od, qp, qd = (np.concatenate(x) for x in (op, od, qp, qd))
        for a, b, c, e, _pd, _dd in plan.search_shard(j, s, (op, od, od != 0), (qp, qd, qd != 0), dmax, wide=wide):
            found += [
                ((w, x), (y, z)) for w, x, y, z in zip(a.tolist(), b.tolist(), c.tolist(), e.tolist(), strict=False)
            ]
    return found


def test_shard_bits_grow_with_the_hashes_so_groups_stay_bounded():
    assert shard_bits_for(0) == 0 and shard_bits_for(OWNERS_PER_GROUP) == 0
    assert shard_bits_for(OWNERS_PER_GROUP + 1) == 1
    for hashes in (10**5, 10**6, 10**7, 15_700_000, 10**8):
        bits = shard_bits_for(hashes)
        assert hashes / 2**bits <= OWNERS_PER_GROUP  # owners of one group, evenly spread
        assert bits == 0 or hashes / 2 ** (bits - 1) > OWNERS_PER_GROUP  # and no more shards than that
    assert shard_bits_for(15_700_000) == 4


def test_query_chunks_are_bounded_and_keep_every_query_in_order():
    parts = []
    for n in (5, 23, 1, 0, 40):
        part = np.zeros(n, dtype=ROUTED_RECORD)
        part["owner"] = np.arange(n) % 3 == 0
        part["phash"] = np.arange(n) + 100 * len(parts)
        parts.append(part)
    chunks = list(query_chunks(parts, 6))
    assert all(1 <= len(c) <= 6 for c in chunks)
    assert all(not c["owner"].any() for c in chunks)
    expected = np.concatenate([p[~p["owner"]] for p in parts])["phash"].tolist()
    assert np.concatenate(chunks)["phash"].tolist() == expected


def _routed_groups(nodes, plan, batch=97):
    groups = defaultdict(list)
    p = np.array([a for a, _ in nodes], dtype=np.uint64)
    d = np.array([b for _, b in nodes], dtype=np.uint64)
    for start in range(0, len(nodes), batch):
        for (j, s), role, pp, dd in plan.route(p[start : start + batch], d[start : start + batch]):
            records = np.zeros(len(pp), dtype=ROUTED_RECORD)
            records["owner"], records["phash"], records["dhash"] = role == "o", pp, dd
            groups[(j, s)].append(records)
    return groups


def test_a_group_searches_its_queries_a_chunk_at_a_time(monkeypatch):
    """The shard search holds its owners as one index and never all its queries at once: with a
    query chunk of 40, no search sees more than 40 queries, and the pairs are exactly the
    brute-force pairs."""
    nodes = _dense_hashes(900, seed=3)
    plan = BandPlan(8, shard_bits=1)
    seen = []
    search_index = BandPlan.search_index

    def spy(self, index, shard, queries, *args, **kwargs):
        seen.append(len(queries[0]))
        return search_index(self, index, shard, queries, *args, **kwargs)

    monkeypatch.setattr(BandPlan, "search_index", spy)
    search = _SearchShard(plan, None, query_chunk=40)
    found = set()
    for key, parts in _routed_groups(nodes, plan).items():
        for a, b, c, e, _pd, _dd in search.process((key, parts)):
            found.add(((a, b), (c, e)))
    assert seen and max(seen) <= 40
    assert sum(seen) == sum(int((~r["owner"]).sum()) for g in _routed_groups(nodes, plan).values() for r in g)
    assert found == _brute(nodes, 8, None)


def test_each_group_hands_its_freed_temporaries_back(monkeypatch):
    """After each (band, shard) group the search releases the heap's free pages (freed_memory):
    otherwise its temporaries stay resident under the stages after it."""
    calls = []
    monkeypatch.setattr(near_search, "release_freed_memory", lambda: calls.append(1))
    plan = BandPlan(8, shard_bits=1)
    groups = _routed_groups(_dense_hashes(300, seed=5), plan)
    search = _SearchShard(plan, None)
    for key, parts in groups.items():
        list(search.process((key, parts)))
    assert len(calls) == len(groups) > 1


@pytest.mark.parametrize("shard_bits,chunk", [(0, 64), (2, 29)])
def test_streaming_through_spill_files_keeps_recall_exact(tmp_path, shard_bits, chunk):
    """The Beam transform with its groups in spill files read back `chunk` records at a time
    (a group's queries in several chunks, the last one partial) finds exactly the brute-force
    pairs, each once."""
    nodes = _dense_hashes(700, seed=30 + shard_bits)
    expected = sorted(_brute(nodes, 8, 24))
    with TestPipeline(runner="FnApiRunner") as p:
        pairs = (
            p
            | beam.Create([(f"{a:016x}", f"{b:016x}") for a, b in nodes])
            | NearDuplicatePairs(
                8,
                dhash_max_distance=24,
                batch_size=64,
                shard_bits=shard_bits,
                spill_dir=str(tmp_path / "spill"),
                query_chunk=chunk,
            )
            | beam.Map(lambda t: ((t[0], t[1]), (t[2], t[3])))
        )
        assert_that(pairs, equal_to(expected))


def test_gather_owners_keeps_the_owners_of_every_part_in_order():
    from transforms.clustering.near_search import ROUTED_RECORD, gather_owners

    parts = []
    for start, size in ((0, 5), (5, 0), (5, 7), (12, 3)):
        part = np.zeros(size, dtype=ROUTED_RECORD)
        part["phash"] = np.arange(start, start + size, dtype=np.uint64)
        part["owner"] = part["phash"] % 3 != 1
        parts.append(part)
    owners = gather_owners(parts, ROUTED_RECORD)
    assert owners["phash"].tolist() == [n for n in range(15) if n % 3 != 1] and owners["owner"].all()
    assert len(gather_owners([], ROUTED_RECORD)) == 0

"""The view search (issue 14): exactly the brute-force set of view pairs, for every key space."""

import random
from collections import defaultdict

import numpy as np
import pytest

from transforms.clustering.near_search import VIEW_SPACES, BandPlan, _RouteViews, search_view_shard


def _pictures(n, seed):
    """n pictures (plain pHash, dHash) and views, many of them within a few bits of another
    picture's matching key, so pairs exist at every distance up to ~8."""
    rng = random.Random(seed)
    plain = [rng.getrandbits(64) for _ in range(n)]
    dh = [rng.getrandbits(64) | 1 for _ in range(n)]
    views = {v: ([0] * n, [0] * n) for v in VIEW_SPACES}
    for i in range(n):
        for v in VIEW_SPACES:
            if v == "trim" and rng.random() < 0.7:
                continue  # most pictures have no border to trim
            if rng.random() < 0.3:  # near some other picture's plain (or centre) key
                other = rng.randrange(n)
                base = views["centre"][0][other] or plain[other] if v == "centre" else plain[other]
                check = dh[other]
            else:
                base, check = rng.getrandbits(64), rng.getrandbits(64)
            for _ in range(rng.randint(0, 8)):
                base ^= 1 << rng.randrange(64)
            views[v][0][i], views[v][1][i] = base or 1, check
    return plain, dh, views


def _brute(plain, dh, views, k, dmax):
    pairs = set()
    n = len(plain)
    for v, (vp, vd) in views.items():
        for i in range(n):
            if not vp[i]:
                continue
            for j in range(n):
                if (plain[i], dh[i]) == (plain[j], dh[j]):
                    continue
                if v == "centre":
                    if not vp[j] or (plain[i], dh[i]) > (plain[j], dh[j]):
                        continue
                    key, check = vp[j], vd[j]
                else:
                    key, check = plain[j], dh[j]
                if (vp[i] ^ key).bit_count() <= k and (dmax is None or (vd[i] ^ check).bit_count() <= dmax):
                    pairs.add((plain[i], dh[i], plain[j], dh[j], v))
    return pairs


# Dedup's own view search is (5, 16, s) with s its plain search's shard bits: 3 on Dataflow and
# in worker processes, shard_bits_for(rows) in one process (test_dedup_searches_the_tested_geometry)
DEDUP_SHARD_BITS = (0, 1, 2, 3, 4)


@pytest.mark.parametrize(
    "k,dmax,shard_bits",
    [(5, 16, s) for s in DEDUP_SHARD_BITS] + [(5, None, 3), (5, 20, 2), (8, None, 3), (2, None, 0), (5, None, 6)],
)
def test_view_search_equals_brute_force(k, dmax, shard_bits):
    plain, dh, views = _pictures(300, seed=k + shard_bits)
    plan = BandPlan(k, bands=3, shard_bits=shard_bits)
    shards = defaultdict(list)
    route = _RouteViews(plan)
    for start in range(0, len(plain), 71):  # several batches, as BatchElements would make
        sl = slice(start, start + 71)
        batch = (
            np.array(plain[sl], dtype=np.uint64),
            np.array(dh[sl], dtype=np.uint64),
            {v: (np.array(p[sl], dtype=np.uint64), np.array(d[sl], dtype=np.uint64)) for v, (p, d) in views.items()},
        )
        for key, records in route.process(batch):
            shards[key].append(records)
    found = []
    for (_space, j, shard), parts in shards.items():
        found += [p[:5] for p in search_view_shard(plan, j, shard, np.concatenate(parts), dmax)]
    expected = _brute(plain, dh, views, k, dmax)
    assert len(expected) > 40  # the data really has view pairs
    assert {v for *_, v in expected} == set(VIEW_SPACES)  # of every view
    assert len(found) == len(set(found))  # each pair once
    assert set(found) == expected


def test_dedup_searches_the_tested_geometry():
    """The recall guarantee holds for every key Dedup indexes: its view search is the geometry
    tested above against brute force, and its plain search keeps the pigeonhole bound."""
    from transforms.clustering.clusters import DEFAULT_DHASH_MAX_DISTANCE, Dedup
    from transforms.clustering.dedup_settings import DedupSettings

    config = Dedup().config()
    view = config["view_search"]
    assert (view["max_distance"], view["bands"], view["shard_bits"]) == (5, 3, 3)
    assert DEFAULT_DHASH_MAX_DISTANCE == 16
    # sharded as the plain search, at every row count the job plans for (issue 16)
    for rows in (None, 100_000, 1_000_000, 3_000_000, 5_000_000, 10_000_000, 15_700_000, 10**9):
        for one_process in (True, False):
            got = DedupSettings().transform(one_process=one_process, expected_rows=rows).config()
            assert got["view_search"]["shard_bits"] == got["near_search"]["shard_bits"]
            if rows is not None and rows <= 15_700_000:
                assert got["view_search"]["shard_bits"] in DEDUP_SHARD_BITS  # tested above
    assert view["bands"] * (view["radius"] + 1) > view["max_distance"]
    plain = config["near_search"]
    assert plain["bands"] * (plain["radius"] + 1) > plain["max_distance"] == 8
    assert set(config["views"]) == set(VIEW_SPACES)  # every view is a searched key by default


def test_view_groups_search_their_queries_a_chunk_at_a_time(monkeypatch):
    """_SearchViewShard builds a group's owner index once and searches its queries 37 at a time:
    no search sees more queries than that, and the pairs are still exactly the brute-force pairs."""
    from transforms.clustering import near_search

    plain, dh, views = _pictures(300, seed=9)
    plan = BandPlan(5, bands=3, shard_bits=1)
    shards = defaultdict(list)
    route = _RouteViews(plan)
    for start in range(0, len(plain), 71):
        sl = slice(start, start + 71)
        batch = (
            np.array(plain[sl], dtype=np.uint64),
            np.array(dh[sl], dtype=np.uint64),
            {v: (np.array(p[sl], dtype=np.uint64), np.array(d[sl], dtype=np.uint64)) for v, (p, d) in views.items()},
        )
        for key, records in route.process(batch):
            shards[key].append(records)
    seen, built = [], []
    search, index = near_search.search_view_index, near_search.view_index

    def spy(plan, owner_index, shard, queries, dmax=None):
        seen.append(len(queries))
        return search(plan, owner_index, shard, queries, dmax)

    def spy_index(plan, j, owners):
        built.append(len(owners))
        return index(plan, j, owners)

    monkeypatch.setattr(near_search, "search_view_index", spy)
    monkeypatch.setattr(near_search, "view_index", spy_index)
    released = []
    monkeypatch.setattr(near_search, "release_freed_memory", lambda: released.append(1))
    found = []
    for key, parts in shards.items():
        found += [p[:5] for p in near_search._SearchViewShard(plan, None, query_chunk=37).process((key, parts))]
    assert seen and max(seen) <= 37 and len(seen) > len(shards)
    assert len(built) <= len(shards)  # one owner index a group, whatever its query chunks
    assert len(released) == len(built)  # and its temporaries handed back after it (freed_memory)
    expected = _brute(plain, dh, views, 5, None)
    assert len(found) == len(set(found)) and set(found) == expected

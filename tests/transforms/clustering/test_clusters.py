"""Dedup transform on the real Beam runner: planted pairs, thresholds, chains, skew, exact
matches, placeholders, canonical policy, stats."""

import os
import random

import pytest

from tests.dedup_helpers import (
    at_distance,
    check_invariants,
    cluster_of,
    flip,
    random_hash,
    row,
    run_dedup,
    run_dedup_shards,
)
from transforms.clustering.clusters import DEFAULT_MAX_DISTANCE, canonical_sort_key, normalize_url

K = DEFAULT_MAX_DISTANCE


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """One run: near pairs at every distance 0..K+3, 1500 unrelated rows, dHash-vetoed pairs."""
    rng = random.Random(11)
    rows, pairs = [], []
    for d in range(0, K + 4):
        for t in range(6):
            ph, dh = random_hash(rng), random_hash(rng)
            a = row(f"cc3m:pair{d}-{t}", "cc3m", phash=ph, dhash=dh)
            # The partner is another dataset's copy: pHash d bits away, dHash a little off (past
            # the threshold, 9-16 bits off: looser than the wide rule's 8, see test_wide_rule).
            dd = rng.randint(0, 6) if d <= K else rng.randint(9, 16)
            b = row(f"cc12m:pair{d}-{t}", "cc12m", phash=at_distance(ph, d, rng), dhash=at_distance(dh, dd, rng))
            rows += [a, b]
            pairs.append((d, a["key"], b["key"]))
    vetoed = []
    for t in range(6):  # pHash close but dHash far: a chance pHash collision, not a match
        ph, dh = random_hash(rng), random_hash(rng)
        rows += [
            row(f"zero:veto{t}a", "zero", phash=ph, dhash=dh),
            row(f"zero:veto{t}b", "zero", phash=at_distance(ph, 3, rng), dhash=at_distance(dh, 30, rng)),
        ]
        vetoed.append((f"zero:veto{t}a", f"zero:veto{t}b"))
    unrelated = [
        row(f"openimages:u{i}", "openimages", phash=random_hash(rng), dhash=random_hash(rng)) for i in range(1500)
    ]
    rows += unrelated
    out = run_dedup(rows, tmp_path_factory.mktemp("planted"))
    return rows, pairs, vetoed, unrelated, out


def test_planted_pairs_found_at_every_distance_up_to_threshold(planted):
    rows, pairs, _, _, (rows_out, clusters, _, _) = planted
    check_invariants(rows, rows_out, clusters)
    cid = cluster_of(rows_out)
    for d, a, b in pairs:
        if d <= K:
            assert cid[a] is not None and cid[a] == cid[b], (d, a, b)


def test_pairs_above_threshold_not_merged(planted):
    _, pairs, _, _, (rows_out, _, _, _) = planted
    cid = cluster_of(rows_out)
    above = [(a, b) for d, a, b in pairs if d > K]
    assert above
    for a, b in above:
        assert cid[a] is None and cid[b] is None


def test_unrelated_never_merged_and_dhash_vetoes(planted):
    _, _, vetoed, unrelated, (rows_out, clusters, stats, _) = planted
    cid = cluster_of(rows_out)
    assert all(cid[r["key"]] is None for r in unrelated)
    assert all(cid[a] is None and cid[b] is None for a, b in vetoed)
    assert stats["clusters"] == 6 * (K + 1) == len(clusters)
    assert stats["across_datasets"] == {"cc3m|cc12m": {"clusters": 6 * (K + 1), "rows": 12 * (K + 1)}}
    # a pair with distance > 0 is a near match; distance 0 is "phash" (same picture) when the
    # dHashes agree too, and near otherwise
    for c in clusters:
        same_picture = len({(m["phash"], m["dhash"]) for m in c["members"]}) == 1
        assert c["kind"] == ("exact" if same_picture else "near")
    assert max(c["max_distance"] for c in clusters) == K


def test_threshold_and_dhash_options(tmp_path):
    rng = random.Random(5)
    ph, dh = random_hash(rng), random_hash(rng)
    rows = [
        row("cc3m:a", phash=ph, dhash=dh),
        row("cc3m:b", phash=at_distance(ph, 4, rng), dhash=dh),
        row("cc3m:c", phash=flip(ph, range(50, 55)), dhash=dh),  # 5 bits from a
        row("cc3m:d", phash=random_hash(rng), dhash=dh),
    ]
    rows.append(row("cc3m:e", phash=at_distance(rows[3]["phash"], 2, rng), dhash=at_distance(dh, 40, rng)))
    rows_out, clusters, _, _ = run_dedup(rows, tmp_path, max_distance=4, dhash_max_distance=None)
    check_invariants(rows, rows_out, clusters)
    cid = cluster_of(rows_out)
    assert cid["cc3m:a"] == cid["cc3m:b"] is not None
    # c is 5 bits from a and (4 + 5 >= 5) maybe close to b: judge c only against the threshold
    b_to_c = (int(rows[1]["phash"], 16) ^ int(rows[2]["phash"], 16)).bit_count()
    assert (cid["cc3m:c"] == cid["cc3m:a"]) == (b_to_c <= 4)
    assert cid["cc3m:d"] == cid["cc3m:e"] is not None  # dHash confirmation switched off


def test_transitive_chain_across_datasets(tmp_path):
    rng = random.Random(8)
    ph, dh = random_hash(rng), random_hash(rng)
    p1 = flip(ph, range(0, 6))
    p2 = flip(p1, range(6, 12))  # 12 bits from ph: only linked through p1
    rows = [
        row("cc3m:0", "cc3m", phash=ph, dhash=dh),
        row("cc12m:1", "cc12m", phash=p1, dhash=dh),
        row("openimages:2", "openimages", phash=p2, dhash=dh, width=50, height=50),
        # ...then by URL to a failed row of ImageNet-Captions, then by sha256 to a Zero row
        row(
            "imagenet_captions:3",
            "imagenet_captions",
            url="HTTPS://IMG.example:443/openimages/2.jpg#top",
            status="http_error",
        ),
        row("zero:4", "zero", url="http://img.example/openimages/2.jpg", status="timeout"),
        row("zero:5", "zero", phash=random_hash(rng), dhash=random_hash(rng), sha256="sha-cc3m:0"),
        row("zero:6", "zero", phash=random_hash(rng), dhash=random_hash(rng)),  # unrelated
    ]
    rows_out, clusters, stats, _ = run_dedup(rows, tmp_path)
    by_cluster = check_invariants(rows, rows_out, clusters)
    assert len(clusters) == 1
    (cluster,) = clusters
    assert sorted(m["key"] for m in by_cluster[cluster["cluster_id"]]) == [
        "cc12m:1",
        "cc3m:0",
        "imagenet_captions:3",
        "openimages:2",
        "zero:4",
        "zero:5",
    ]
    assert cluster_of(rows_out)["zero:6"] is None
    match = {m["key"]: m["match"] for m in cluster["members"]}
    assert cluster["canonical_key"] == "cc12m:1"  # ok, largest area, then cc12m before cc3m
    assert match == {
        "cc12m:1": "canonical",
        "cc3m:0": "near",
        "openimages:2": "near",
        "imagenet_captions:3": "transitive",
        "zero:4": "transitive",
        "zero:5": "transitive",
    }
    assert stats["across_datasets"]["cc3m|cc12m"] == {"clusters": 1, "rows": 2}
    assert stats["within_dataset"] == {"zero": {"clusters": 1, "rows": 2}}


def test_exact_url_and_sha256_matches(tmp_path):
    rng = random.Random(2)
    rows = [
        # the same address written four ways, all failed to fetch: URL is all they have
        row("cc3m:1", "cc3m", url="http://Flickr.example/a.jpg", status="timeout"),
        row("cc12m:1", "cc12m", url="https://flickr.example:443/a.jpg", status="http_error"),
        row("cc12m:2", "cc12m", url="http://flickr.example:80/a.jpg#frag", status="timeout"),
        row("zero:1", "zero", url=" http://flickr.example/a.jpg ", status="timeout"),
        # path case and query matter
        row("zero:2", "zero", url="http://flickr.example/A.jpg", status="timeout"),
        row("zero:3", "zero", url="http://flickr.example/a.jpg?s=1", status="timeout"),
        # identical bytes under two URLs (pHash differs only in this synthetic setup)
        row("cc3m:7", "cc3m", phash=random_hash(rng), dhash=random_hash(rng), sha256="f00d"),
        row("cc12m:7", "cc12m", phash=random_hash(rng), dhash=random_hash(rng), sha256="F00D"),
        # identical picture, different bytes: one vertex
        row("openimages:8", "openimages", phash="00ff00ff00ff00ff", dhash="1234567812345678"),
        row("cc3m:8", "cc3m", phash="00FF00FF00FF00FF", dhash="1234567812345678"),
    ]
    rows_out, clusters, stats, _ = run_dedup(rows, tmp_path)
    check_invariants(rows, rows_out, clusters)
    cid = cluster_of(rows_out)
    assert cid["cc3m:1"] == cid["cc12m:1"] == cid["cc12m:2"] == cid["zero:1"] is not None
    assert cid["zero:2"] is None and cid["zero:3"] is None
    assert cid["cc3m:7"] == cid["cc12m:7"] is not None
    assert cid["openimages:8"] == cid["cc3m:8"] is not None
    assert len({cid["cc3m:1"], cid["cc3m:7"], cid["cc3m:8"]}) == 3
    match = {m["key"]: m["match"] for c in clusters for m in c["members"]}
    assert match["cc3m:7"] == "sha256" or match["cc12m:7"] == "sha256"
    assert match["cc3m:8"] == "phash"
    assert {match[k] for k in ("cc3m:1", "cc12m:2", "zero:1")} == {"url"}
    assert stats["exact_clusters"] == 3 and stats["near_clusters"] == 0
    assert stats["matches"]["url"] == 3 and stats["matches"]["sha256"] == 1
    assert stats["matches"]["phash"] == 1
    assert stats["within_dataset"]["cc12m"] == {"clusters": 1, "rows": 2}


def test_skewed_hash_and_placeholders(tmp_path):
    """3000 rows of one picture at 3000 URLs (a placeholder), 2000 rows of one picture at one
    URL (a real exact cluster): one cluster each, and the search sees each picture once."""
    rng = random.Random(4)
    blank = ("8000000000000000", "0000000000000000")
    rows = [
        row(
            f"cc12m:ph{i}",
            "cc12m" if i % 2 else "cc3m",
            url=f"http://f{i % 97}.example/{i}",
            phash=blank[0],
            dhash=blank[1],
            sha256="dead",
        )
        for i in range(3000)
    ]
    rows += [
        row(
            f"cc3m:same{i}",
            "cc3m",
            url="http://one.example/same.jpg",
            phash="0f0f0f0f0f0f0f0f",
            dhash="3333333333333333",
            sha256="beef",
        )
        for i in range(2000)
    ]
    # a real photo whose URL also served the placeholder in the other dataset: not merged
    rows.append(
        row("openimages:real", "openimages", url="http://f1.example/1", phash=random_hash(rng), dhash=random_hash(rng))
    )
    # near the placeholder's pHash: placeholders stay out of the near search
    rows.append(row("zero:nearblank", "zero", phash=flip(blank[0], [3]), dhash=random_hash(rng)))
    rows_out, clusters, stats, counters = run_dedup(rows, tmp_path, max_listed_members=100)
    by_cluster = check_invariants(rows, rows_out, clusters)
    cid = cluster_of(rows_out)
    assert cid["openimages:real"] is None and cid["zero:nearblank"] is None
    placeholder = [c for c in clusters if c["is_placeholder"]]
    assert len(placeholder) == 1 and placeholder[0]["size"] == 3000
    assert placeholder[0]["members_listed"] in (100, 101)  # the record is capped
    assert placeholder[0]["matches"] == {"placeholder": 2999}
    assert all(r["is_placeholder"] for r in by_cluster[placeholder[0]["cluster_id"]])
    real = [c for c in clusters if not c["is_placeholder"]]
    assert len(real) == 1 and real[0]["size"] == 2000
    assert stats["placeholder_groups"] == 1 and stats["placeholder_rows"] == 3000
    assert stats["placeholder_rows_by_dataset"] == {"cc3m": 1500, "cc12m": 1500}
    assert stats["clusters"] == 1 and stats["duplicated_rows"] == 2000
    assert stats["within_dataset"] == {"cc3m": {"clusters": 1, "rows": 2000}}
    # the near search saw 3 distinct non-placeholder pictures, not 5000 rows
    assert counters["near_nodes"] == 3
    assert counters["placeholder_groups"] == 1


def test_known_placeholder_hash_option(tmp_path):
    rows = [
        row("cc3m:1", phash="1111111111111111", dhash="2222222222222222", sha256="abc"),
        row("cc3m:2", phash="1111111111111111", dhash="2222222222222222", sha256="abd"),
    ]
    rows_out, clusters, stats, _ = run_dedup(rows, tmp_path, placeholder_hashes=["ABC"])
    check_invariants(rows, rows_out, clusters)
    assert [c["is_placeholder"] for c in clusters] == [True]
    assert stats["placeholder_rows"] == 2 and stats["clusters"] == 0


def test_placeholder_min_urls_zero_turns_the_rule_off(tmp_path):
    """--placeholder-min-urls 0: no picture is a placeholder for its URL count (the rule is off,
    as the refresh's option of the same name), while the built-in list still applies. Before, 0
    made every picture, one URL or sixty, a placeholder: export skipped them all, exit 0."""
    rows = [
        row(f"cc3m:{i}", url=f"http://a.example/{i}", phash="1111111111111111", dhash="2222222222222222")
        for i in range(60)
    ]
    rows.append(row("cc12m:alone", "cc12m", phash="3333333333333333", dhash="4444444444444444"))
    rows += [row(f"cc12m:blank{i}", "cc12m", phash="0000000000000000", dhash="0000000000000000") for i in range(2)]
    rows_out, clusters, stats, _ = run_dedup(rows, tmp_path, placeholder_min_urls=0)
    check_invariants(rows, rows_out, clusters)
    by_key = {r["key"]: r for r in rows_out}
    assert not any(by_key[f"cc3m:{i}"]["is_placeholder"] for i in range(60))
    assert not by_key["cc12m:alone"]["is_placeholder"] and by_key["cc12m:alone"]["cluster_id"] is None
    assert by_key["cc12m:blank0"]["is_placeholder"]  # on the built-in list
    assert stats["placeholder_rows"] == 2 and stats["clusters"] == 1 and stats["duplicated_rows"] == 60


def test_canonical_policy(tmp_path):
    def cluster(suffix, ph, dh, zero_width):
        """Five rows of one picture: a tie on area but for zero's row `zero_width` wide."""
        url = f"http://x.example/{suffix or 1}"
        return [
            row(f"cc3m:9{suffix}", "cc3m", url=url, status="timeout"),  # failed: never first
            row(f"cc3m:1{suffix}", "cc3m", url=url, phash=ph, dhash=dh, width=300, height=300),
            row(f"cc12m:1{suffix}", "cc12m", phash=ph, dhash=dh, width=300, height=300),
            row(f"cc12m:0{suffix}", "cc12m", phash=ph, dhash=dh, width=300, height=300),
            row(f"zero:1{suffix}", "zero", phash=ph, dhash=dh, width=zero_width, height=300),
        ]

    tie = cluster("", "0123456789abcdef", "fedcba9876543210", 299)
    # why one run for both default-policy clusters: independent pictures, URLs and keys (a run each
    # before); the bitwise complements are 64 bits from the tie's hashes
    wider = cluster("c", "fedcba9876543210", "0123456789abcdef", 301)
    _, clusters, _, _ = run_dedup(tie + wider, tmp_path / "a")
    by_canonical = {c["canonical_key"]: c for c in clusters}
    assert sorted(by_canonical) == ["cc12m:0", "zero:1c"]
    # area tie: cc12m before cc3m, then key; the largest area beats dataset priority
    _, by_priority, _, _ = run_dedup(tie, tmp_path / "b", dataset_priority=("cc3m", "cc12m"))
    assert [c["canonical_key"] for c in by_priority] == ["cc3m:1"]
    # the id depends on membership only (the smallest key), not on which row is canonical
    sha1 = __import__("hashlib").sha1
    assert by_canonical["cc12m:0"]["cluster_id"] == by_priority[0]["cluster_id"] == sha1(b"cc12m:0").hexdigest()[:16]
    assert by_canonical["zero:1c"]["cluster_id"] == sha1(b"cc12m:0c").hexdigest()[:16]


def test_canonical_sort_key_unknown_dataset_and_missing_size():
    a = {"key": "x:1", "dataset": "other", "status": "ok", "width": None, "height": None}
    b = {"key": "zero:1", "dataset": "zero", "status": "ok", "width": None, "height": None}
    assert canonical_sort_key(b) < canonical_sort_key(a)


@pytest.mark.parametrize(
    "url,expected",
    [
        ("HTTP://Example.COM/a/B.jpg", "http://example.com/a/B.jpg"),
        ("https://example.com:443/x?q=1#frag", "http://example.com/x?q=1"),
        ("http://example.com:80", "http://example.com/"),
        ("https://example.com:8443/x", "http://example.com:8443/x"),
        ("http://user:pw@Example.com/x", "http://example.com/x"),
        ("http://[2001:DB8::1]:80/x", "http://[2001:db8::1]/x"),
        ("  http://example.com/x  ", "http://example.com/x"),
        ("n01440764/n01440764_10026.JPEG", "n01440764/n01440764_10026.JPEG"),
        ("http://example.com:bad/x", "http://example.com:bad/x"),
        ("", None),
        (None, None),
    ],
)
def test_normalize_url(url, expected):
    assert normalize_url(url) == expected


@pytest.fixture(scope="module")
def shard_case(tmp_path_factory):
    """The rows of the shard comparison and Dedup's run on them: one run for both parametrisations
    of the test below (the same rows each; read-only)."""
    rng = random.Random(9)
    rows = [
        row(
            f"cc12m:ph{i}",
            "cc12m",
            url=f"http://f{i}.example/x",
            phash="8000000000000000",
            dhash="0000000000000000",
            sha256="dead",
        )
        for i in range(60)
    ]  # a placeholder
    rows += [
        row("cc3m:u1", url="http://Flickr.example/a.jpg", status="timeout"),
        row("cc12m:u1", "cc12m", url="https://flickr.example:443/a.jpg", status="timeout"),
        row("cc3m:s1", phash=random_hash(rng), dhash=random_hash(rng), sha256="f00d"),
        row("cc12m:s1", "cc12m", phash=random_hash(rng), dhash=random_hash(rng), sha256="F00D"),
        # one picture at two URLs, no other match: a cluster of its own vertex
        row("openimages:p1", "openimages", phash="00ff00ff00ff00ff", dhash="1234567812345678"),
        row("cc3m:p1", phash="00ff00ff00ff00ff", dhash="1234567812345678"),
    ]
    for t in range(5):  # near pairs across datasets
        ph, dh = random_hash(rng), random_hash(rng)
        rows += [
            row(f"cc3m:n{t}", phash=ph, dhash=dh),
            row(f"zero:n{t}", "zero", phash=at_distance(ph, 4, rng), dhash=at_distance(dh, 3, rng)),
        ]
    rows += [row(f"cc3m:alone{i}", phash=random_hash(rng), dhash=random_hash(rng)) for i in range(40)]
    return rows, run_dedup(rows, tmp_path_factory.mktemp("shard-case-rows"))


@pytest.mark.parametrize("spill", [False, True], ids=["runner-shuffle", "spilled-to-files"])
def test_dedup_from_table_shards_agrees_with_dedup_of_rows(shard_case, tmp_path, spill):
    """The ingest's DedupShards (slim rows in, members re-read from Parquet shards) finds the
    same clusters, cluster columns and stats as Dedup on the full rows; also with its keys and
    routed hashes grouped through spill files (a local run), which are gone afterwards."""
    rows, (rows_all, clusters, stats, _) = shard_case
    spill_dir = str(tmp_path / "spill") if spill else None
    rows_clustered, clusters_s, stats_s, counters, shards = run_dedup_shards(
        rows, tmp_path / "shards", shard_rows=7, spill_dir=spill_dir
    )
    if spill:
        assert counters.get("bytes", 0) > 0  # the records really went through files (spill/bytes)
        assert counters.get("encoded_bytes", 0) > 0  # and so did the clustered rows
        assert not os.path.exists(spill_dir)
    assert shards >= len(rows) // 7  # members really came from many shards
    check_invariants(rows, rows_all, clusters)
    columns = lambda r: (r["cluster_id"], r["is_canonical"], r["is_placeholder"])  # noqa: E731
    expected = {r["key"]: columns(r) for r in rows_all if r["cluster_id"] is not None}
    assert len(expected) == 60 + 2 + 2 + 2 + 10
    assert {r["key"]: columns(r) for r in rows_clustered} == expected
    assert len(rows_clustered) == len(expected)  # each clustered row once
    by_id = lambda cs: {c["cluster_id"]: c for c in cs}  # noqa: E731
    assert by_id(clusters_s) == by_id(clusters)
    assert stats_s == stats


def test_wide_rule(tmp_path):
    """With views on, a pair 10 bits apart in pHash (past the threshold) that the probes meet
    joins when the dHashes are within 8; not with dHash 9 away, not 12 bits apart, not when no
    band meets it, and not with --views none (the matching before issue 14)."""
    from transforms.clustering.near_search import BandPlan

    plan = BandPlan(K)
    rng = random.Random(14)

    def partner(ph, band_bits):
        """ph with band_bits[j] bits flipped inside band j (interleaved: bit i is in band i % 3)."""
        bits = []
        for j, n in enumerate(band_bits):
            bits += rng.sample(range(j, 64, plan.bands), n)
        return flip(ph, bits)

    cases = {
        "met": ((2, 4, 4), 8, True),
        "dhash9": ((2, 4, 4), 9, False),
        "unmet": ((3, 4, 3), 0, False),
        "twelve": ((2, 5, 5), 0, False),
    }
    rows = []
    for name, (band_bits, dd, _) in cases.items():
        ph, dh = random_hash(rng), random_hash(rng)
        rows += [
            row(f"cc3m:{name}a", phash=ph, dhash=dh),
            row(f"cc12m:{name}b", "cc12m", phash=partner(ph, band_bits), dhash=at_distance(dh, dd, rng)),
        ]
    rows_out, clusters, _, _ = run_dedup(rows, tmp_path / "on")
    check_invariants(rows, rows_out, clusters)
    cid = cluster_of(rows_out)
    for name, (_, _, joined) in cases.items():
        assert (cid[f"cc3m:{name}a"] is not None and cid[f"cc3m:{name}a"] == cid[f"cc12m:{name}b"]) == joined, name
    assert [m["match"] for c in clusters for m in c["members"]] in (["canonical", "near"], ["near", "canonical"])
    rows_out, _, _, _ = run_dedup(rows, tmp_path / "off", views=())
    assert all(c is None for c in cluster_of(rows_out).values())


def test_placeholders_match_nothing_through_views(tmp_path):
    """A placeholder picture whose mirror view is another picture's pHash stays out of that
    picture's cluster (placeholders are dropped from the view pairs), while an ordinary picture
    with the same view relation is merged."""
    rng = random.Random(12)
    blank = ("8000000000000000", "0000000000000000")
    real_p, real_d = random_hash(rng), random_hash(rng)
    copy_p, copy_d = random_hash(rng), random_hash(rng)
    mirrored_p, mirrored_d = random_hash(rng), random_hash(rng)
    rows = [
        row("cc3m:real", phash=real_p, dhash=real_d),
        row("cc3m:copy", phash=copy_p, dhash=copy_d),
        row("cc12m:mirrored", "cc12m", phash=mirrored_p, dhash=mirrored_d),
    ]
    rows[2]["phash_mirror"], rows[2]["dhash_mirror"] = copy_p, copy_d  # a mirrored copy of cc3m:copy
    for i in range(3):  # one picture at 3 URLs (placeholder_min_urls=3) whose mirror is cc3m:real
        rows.append(row(f"zero:ph{i}", "zero", url=f"http://dead.example/{i}", phash=blank[0], dhash=blank[1]))
        rows[-1]["phash_mirror"], rows[-1]["dhash_mirror"] = real_p, real_d
    for r in rows:  # only pictures with views take part in the view search (ingests compute them all)
        r["phash_centre"], r["dhash_centre"] = random_hash(rng), random_hash(rng)
    rows_out, clusters, stats, _ = run_dedup(rows, tmp_path, placeholder_min_urls=3)
    check_invariants(rows, rows_out, clusters)
    cid = cluster_of(rows_out)
    assert cid["cc3m:copy"] is not None and cid["cc3m:copy"] == cid["cc12m:mirrored"]
    assert cid["cc3m:real"] is None
    assert cid["zero:ph0"] == cid["zero:ph1"] == cid["zero:ph2"] != cid["cc3m:copy"]
    assert stats["view_pairs"] == {"mirror": 1}


def test_star_edges_do_not_join_different_pictures_of_one_url():
    """A URL group: different pictures are not linked by the URL, its failed rows (row vertices)
    join the smallest picture only; with one picture or none, and a sha256 group: a star as before."""
    from transforms.clustering.clusters import _digest, _star_edges

    url, sha = _digest(b"u", "http://a.example/x.jpg"), _digest(b"s", "f00d")
    pa, pb, pc = "p" + "1" * 32, "p" + "2" * 32, "p" + "3" * 16  # pc: a flat picture, no dHash
    ka, kb = "k" + "a" * 32, "k" + "b" * 32

    def edges(group, vertices, placeholders=()):
        out = list(_star_edges((group, vertices), {p: "x" for p in placeholders}))
        return sorted(e for e in out if isinstance(e, tuple)), [e.value for e in out if not isinstance(e, tuple)]

    # the hub of a star is its smallest vertex; a row vertex ("k") sorts before a picture ("p")
    assert edges(url, [pb, pa, pc, ka, kb, ka]) == (sorted([(kb, ka), (pa, ka)]), [url])  # pb, pc apart
    assert edges(url, [pb, pa]) == ([], [url])  # two pictures, nothing else: no edge at all
    assert edges(url, [pa, ka, kb]) == (sorted([(kb, ka), (pa, ka)]), [])  # one picture: a star
    assert edges(url, [ka, kb]) == ([(kb, ka)], [])  # failed rows only
    assert edges(url, [pa, pb, ka], placeholders=[pa]) == ([(pb, ka)], [])  # a placeholder matches nothing
    assert edges(sha, [pb, pa, pc]) == (sorted([(pb, pa), (pc, pa)]), [])  # one sha256: one picture's bytes


@pytest.mark.parametrize("through", ["rows", "shards"])
def test_url_serving_several_pictures(tmp_path, through):
    """Two different pictures fetched from one URL (the site changed it between two ingests) stay
    apart; the URL's failed rows join its smallest picture; a re-encode at one URL (pHash 2 bits
    off) still clusters, as near; summary counts the URLs of several pictures (Dedup and
    DedupShards alike)."""
    rng = random.Random(31)
    changed, reencoded = "http://changed.example/a.jpg", "http://re.example/b.jpg"
    pictures = sorted((random_hash(rng), random_hash(rng)) for _ in range(3))
    rows = [
        row("cc3m:c1", url=changed, phash=pictures[0][0], dhash=pictures[0][1]),
        row("cc12m:c1", "cc12m", url=changed, phash=pictures[1][0], dhash=pictures[1][1]),
        row("zero:c1", "zero", url=changed, phash=pictures[2][0], dhash=pictures[2][1]),
        row("zero:f1", "zero", url=changed, status="timeout"),
        row("zero:f2", "zero", url="HTTP://CHANGED.example/a.jpg", status="http_error"),
    ]
    ph, dh = random_hash(rng), random_hash(rng)
    rows += [
        row("cc3m:r1", url=reencoded, phash=ph, dhash=dh),
        row("cc12m:r1", "cc12m", url=reencoded, phash=at_distance(ph, 2, rng), dhash=at_distance(dh, 1, rng)),
    ]
    rows += [row(f"cc3m:alone{i}", phash=random_hash(rng), dhash=random_hash(rng)) for i in range(20)]
    if through == "rows":
        rows_out, clusters, stats, _ = run_dedup(rows, tmp_path)
        check_invariants(rows, rows_out, clusters)
    else:
        rows_out, clusters, stats, _, _ = run_dedup_shards(rows, tmp_path)
    cid = {r["key"]: r["cluster_id"] for r in rows_out}
    assert cid["cc3m:c1"] == cid["zero:f1"] == cid["zero:f2"] is not None  # the smallest picture
    assert cid.get("cc12m:c1") is None and cid.get("zero:c1") is None  # alone: not duplicates
    assert cid["cc3m:r1"] == cid["cc12m:r1"] is not None
    match = {m["key"]: m["match"] for c in clusters for m in c["members"]}
    assert {match["zero:f1"], match["zero:f2"]} == {"url"}
    assert {match["cc3m:r1"], match["cc12m:r1"]} == {"canonical", "near"}
    assert len(clusters) == 2 and stats["urls_with_several_pictures"] == 2

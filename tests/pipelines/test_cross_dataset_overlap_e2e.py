"""The CC3M/CC12M overlap as a researcher gets it, end to end with the real jobs on loopback.

A CC3M and a CC12M slice overlap the ways the real manifests do: the same URL with another caption,
the same picture at another URL (another host, https for http, a query string, a trailing slash,
an upper-case host), the same picture resized or re-encoded, one picture at many URLs (a
placeholder), and pairs of CC3M/CC12M rows whose pHashes are 0-8 bits apart (written as a third
and fourth input: real pictures that far apart cannot be made to order). The slices are ingested
(a) in one run and (b) in two runs then deduplicated by `pipelines.dedup`, again, in the other
order and with another `--dataset-priority`; the dedup output is exported to WebDataset.

The pairs at 8 bits pin the near search's recall guarantee (a band plan probing one bit less per
band misses most of them); the `--dataset-priority cc3m,cc12m` run pins the tie-break (ignoring
it, the smallest key wins, and "cc12m:..." sorts before "cc3m:...").
"""

import collections
import contextlib
import glob
import io
import json
import os
import random

import pytest

from pipelines import dedup, export, ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, encode, picture
from tests.dedup_helpers import at_distance, random_hash, row
from tests.synthetic_out import write_out
from tests.table_readers import read_records, read_rows, summary

JPEG = {"Content-Type": "image/jpeg"}
PLANTED_DISTANCES = list(range(9)) * 2 + [8] * 16  # 34 pairs, half of them at the guarantee's edge
RUNNER = ["--runner", "FnApiRunner"]

# The planted overlaps of the two manifests, by key (keys are manifest line numbers).
GROUPS = {
    "same URL, another caption": ["cc3m:1", "cc12m:1"],
    "another host": ["cc3m:2", "cc12m:2"],
    "https for http (dead)": ["cc3m:3", "cc12m:3"],
    "query string": ["cc3m:4", "cc12m:4"],
    "trailing slash": ["cc3m:5", "cc12m:5"],
    "upper-case host": ["cc3m:6", "cc12m:6"],
    "resized": ["cc3m:7", "cc12m:7"],
    "re-encoded": ["cc3m:8", "cc12m:8", "cc12m:9"],
    "one CC12M picture twice": ["cc12m:10", "cc12m:11"],
}
PLACEHOLDER = ["cc3m:9", "cc3m:10", "cc12m:12", "cc12m:13", "cc12m:14"]
ALONE = ["cc3m:11", "cc3m:12", "cc12m:15", "cc12m:16", "cc12m:17"]
# The canonical row of each group: status ok first, then the largest area, then the dataset
# priority (default: cc12m before cc3m), then the smallest key.
CANONICAL = {
    "default": {
        **{name: keys[1] for name, keys in GROUPS.items()},
        "https for http (dead)": "cc3m:3",  # the https row failed: ok first
        "resized": "cc3m:7",  # the larger picture
        "one CC12M picture twice": "cc12m:10",
    },
    "cc3m,cc12m": {
        **{name: keys[0] for name, keys in GROUPS.items()},
        "one CC12M picture twice": "cc12m:10",
    },
}


def picture_routes():
    """The loopback server's routes: each picture at the URLs the manifests give it."""
    pics = {n: picture(seed, (320, 240)) for seed, n in enumerate("abcdefghwuvxyz", start=40)}
    routes = {f"/{n}.jpg": Reply(200, encode(pics[n], "JPEG", quality=90), JPEG) for n in "abcdefhwuvxyz"}
    routes["/e/"] = routes["/e"] = routes["/e.jpg"]
    routes["/w2.jpg"] = routes["/w.jpg"]
    routes["/g.jpg"] = Reply(200, encode(pics["g"].resize((640, 480)), "JPEG", quality=90), JPEG)
    routes["/g_small.jpg"] = Reply(200, encode(pics["g"], "JPEG", quality=90), JPEG)
    routes["/h_q40.jpg"] = Reply(200, encode(pics["h"], "JPEG", quality=40), JPEG)
    routes["/h.png"] = Reply(200, encode(pics["h"], "PNG"), {"Content-Type": "image/png"})
    placeholder = Reply(200, encode(picture(99, (200, 200)), "JPEG", quality=90), JPEG)
    routes.update({f"/ph{i}.jpg": placeholder for i in range(1, 6)})
    return routes


def write_manifests(tmp, port):
    """The CC3M (caption TAB url) and CC12M (url TAB caption) slices of GROUPS, PLACEHOLDER and ALONE."""
    here, other = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
    cc3m = [f"{here}/{n}.jpg" for n in "abcd"] + [f"{here}/e/", f"{other}/f.jpg", f"{here}/g.jpg"]
    cc3m += [f"{here}/h.jpg", f"{here}/ph1.jpg", f"{here}/ph2.jpg", f"{here}/u.jpg", f"{here}/v.jpg"]
    cc12m = [f"{here}/a.jpg", f"{other}/b.jpg", f"https://127.0.0.1:{port}/c.jpg", f"{here}/d.jpg?utm_source=x"]
    cc12m += [f"{here}/e", f"http://LOCALHOST:{port}/f.jpg", f"{here}/g_small.jpg", f"{here}/h_q40.jpg"]
    cc12m += [f"{here}/h.png", f"{here}/w.jpg", f"{here}/w2.jpg"] + [f"{here}/ph{i}.jpg" for i in (3, 4, 5)]
    cc12m += [f"{here}/{n}.jpg" for n in "xyz"]
    (tmp / "cc3m.tsv").write_text("".join(f"cc3m caption {i}\t{u}\n" for i, u in enumerate(cc3m, 1)))
    (tmp / "cc12m.tsv").write_text("".join(f"{u}\ta <PERSON> caption {i}\n" for i, u in enumerate(cc12m, 1)))
    return str(tmp / "cc3m.tsv"), str(tmp / "cc12m.tsv")


def write_planted_pairs(tmp):
    """Two ingest-output tables: CC3M and CC12M rows whose pHashes are PLANTED_DISTANCES apart."""
    rng = random.Random(20261202)
    cc3m, cc12m = [], []
    for i, distance in enumerate(PLANTED_DISTANCES):
        phash, dhash = random_hash(rng), random_hash(rng)
        cc3m.append(row(f"cc3m:near-{i:02d}", "cc3m", phash=phash, dhash=dhash))
        cc12m.append(row(f"cc12m:near-{i:02d}", "cc12m", phash=at_distance(phash, distance, rng), dhash=dhash))
    write_out(str(tmp / "near3"), cc3m)
    write_out(str(tmp / "near12"), cc12m)
    planted = {
        f"planted {i} at {d}": [f"cc3m:near-{i:02d}", f"cc12m:near-{i:02d}"] for i, d in enumerate(PLANTED_DISTANCES)
    }
    return [str(tmp / "near3"), str(tmp / "near12")], planted


def run_dedup(inputs, out, *more):
    """`python -m pipelines.dedup` in process; returns what it printed."""
    argv = [a for path in inputs for a in ("--input", path)] + ["--output", out, "--placeholder-min-urls", "3"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert dedup.main([*argv, *more, *RUNNER]) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlap")
    near, planted = write_planted_pairs(tmp)
    net = ["--allow-network", "127.0.0.0/8", "--placeholder-min-urls", "3", *RUNNER]
    with SampleWebServer(picture_routes()) as web:
        cc3m, cc12m = write_manifests(tmp, web.port)
        for out, manifests in (("one", [cc3m, cc12m]), ("cc3m", [cc3m]), ("cc12m", [cc12m])):
            kinds = [f"--manifest={os.path.basename(m)[:-4]}={m}" for m in manifests]
            assert ingest.main([*kinds, "--output", str(tmp / out), *net]) == 0
    two = [str(tmp / "cc3m"), str(tmp / "cc12m"), *near]
    printed = {"d1": run_dedup(two, str(tmp / "d1"))}
    first = read_rows(str(tmp / "d1")), read_records(str(tmp / "d1"))
    printed["again"] = run_dedup(two, str(tmp / "d1"))  # a re-run over its own output
    printed["reversed"] = run_dedup(two[::-1], str(tmp / "reversed"))
    printed["cc3m first"] = run_dedup(two, str(tmp / "cc3m-first"), "--dataset-priority", "cc3m,cc12m")
    to_webdataset = ["--input", str(tmp / "d1"), "--output", str(tmp / "exp"), "--format", "webdataset"]
    assert export.main([*to_webdataset, *RUNNER]) == 0
    return {"tmp": tmp, "planted": planted, "first": first, "printed": printed}


def check_clusters(rows, records, groups, canonical):
    """Every planted group is one cluster of exactly its keys, with the expected canonical row;
    every row once; each key in one cluster record, once."""
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))
    by_key = {r["key"]: r for r in rows}
    members = collections.defaultdict(set)
    for r in rows:
        members[r["cluster_id"]].add(r["key"])
    for name, group in groups.items():
        cluster_id = by_key[group[0]]["cluster_id"]
        assert cluster_id is not None and members[cluster_id] == set(group), name
        assert [k for k in group if by_key[k]["is_canonical"]] == [canonical[name]], name
    (placeholder,) = {by_key[k]["cluster_id"] for k in PLACEHOLDER}
    assert members[placeholder] == set(PLACEHOLDER) and all(by_key[k]["is_placeholder"] for k in PLACEHOLDER)
    assert all(by_key[k]["cluster_id"] is None and by_key[k]["is_canonical"] for k in ALONE)
    assert len(records) == len({r["cluster_id"] for r in records}) == len(groups) + 1
    named = [m["key"] for record in records for m in record["members"]]
    assert sorted(named) == sorted(k for k, r in by_key.items() if r["cluster_id"] is not None)
    for record in records:
        assert record["canonical_key"] in members[record["cluster_id"]]
        assert {m["key"] for m in record["members"]} == members[record["cluster_id"]]
    assert by_key["cc12m:3"]["status"] != "ok"  # the https URL: met through its URL, not its picture
    (record,) = [r for r in records if r["cluster_id"] == by_key["cc3m:3"]["cluster_id"]]
    assert {m["key"]: m["match"] for m in record["members"]}["cc12m:3"] == "url"


def test_one_ingest_and_two_ingests_then_dedup_find_every_overlap_once(runs):
    tmp, planted = runs["tmp"], runs["planted"]
    one = read_rows(str(tmp / "one"))
    assert len(one) == 12 + 17
    check_clusters(one, read_records(str(tmp / "one")), GROUPS, CANONICAL["default"])
    rows, records = runs["first"]
    assert len(rows) == 12 + 17 + 2 * len(PLANTED_DISTANCES) == summary(str(tmp / "d1"))["books"]["rows_out"]
    default = {**CANONICAL["default"], **{name: keys[1] for name, keys in planted.items()}}
    check_clusters(rows, records, {**GROUPS, **planted}, default)
    # (a) and (b): the same clusters, ids and canonical rows for the manifests' rows
    decided = {r["key"]: (r["cluster_id"], r["is_canonical"], r["is_placeholder"]) for r in rows}
    assert {r["key"]: (r["cluster_id"], r["is_canonical"], r["is_placeholder"]) for r in one} == {
        k: v for k, v in decided.items() if "near-" not in k
    }


def test_reruns_and_input_order_keep_every_decision(runs):
    tmp = runs["tmp"]
    rows, records = runs["first"]

    def decisions(rows):
        return sorted((r["key"], r["cluster_id"], r["is_canonical"], r["is_placeholder"]) for r in rows)

    def canonical_keys(records):
        return sorted((r["cluster_id"], r["canonical_key"], r["size"]) for r in records)

    for out in ("d1", "reversed"):
        assert decisions(read_rows(str(tmp / out))) == decisions(rows), out
        assert canonical_keys(read_records(str(tmp / out))) == canonical_keys(records), out


def test_dataset_priority_decides_the_tie(runs):
    tmp, planted = runs["tmp"], runs["planted"]
    out = str(tmp / "cc3m-first")
    first = {**CANONICAL["cc3m,cc12m"], **{name: keys[0] for name, keys in planted.items()}}
    check_clusters(read_rows(out), read_records(out), {**GROUPS, **planted}, first)
    assert summary(out)["config"]["dataset_priority"][:2] == ["cc3m", "cc12m"]


def check_duplicate_figures(stats, rows):
    """summary.json's duplicate figures against the rows, counted here."""
    clusters = collections.defaultdict(list)
    for r in rows:
        if r["cluster_id"] is not None and not r["is_placeholder"]:
            clusters[r["cluster_id"]].append(r["dataset"])
    across = [c for c in clusters.values() if {"cc3m", "cc12m"} <= set(c)]
    within = [c for c in clusters.values() if c.count("cc12m") > 1]
    assert stats["rows"] == len(rows) and stats["clusters"] == len(clusters)
    assert stats["duplicated_rows"] == sum(map(len, clusters.values()))
    assert stats["redundant_rows"] == stats["duplicated_rows"] - stats["clusters"]
    assert stats["placeholder_groups"] == 1 and stats["placeholder_rows"] == len(PLACEHOLDER)
    assert stats["placeholder_rows_by_dataset"] == {"cc3m": 2, "cc12m": 3}
    assert stats["across_datasets"] == {"cc3m|cc12m": {"clusters": len(across), "rows": sum(map(len, across))}}
    assert stats["within_dataset"] == {
        "cc12m": {"clusters": len(within), "rows": sum(c.count("cc12m") for c in within)}
    }
    return len(clusters)


def test_summary_and_printed_line_agree_with_the_tables(runs):
    tmp = runs["tmp"]
    one = summary(str(tmp / "one"))
    assert one["books"]["rows_in"] == one["books"]["rows_out"] == one["rows"] == 12 + 17
    assert check_duplicate_figures(one["duplicates"], read_rows(str(tmp / "one"))) == len(GROUPS)
    for out, printed in (("d1", runs["printed"]["again"]), ("reversed", runs["printed"]["reversed"])):
        rows, stats = read_rows(str(tmp / out)), summary(str(tmp / out))
        assert stats["books"]["rows_in"] == stats["books"]["rows_out"] == len(rows)
        clusters = check_duplicate_figures(stats, rows)
        assert clusters == len(GROUPS) + len(runs["planted"])
        assert f"dedup: {len(rows)} rows, {clusters} clusters, 0 rows replaced" in printed


def test_export_keeps_one_copy_of_each_cluster(runs):
    import webdataset as wds

    tmp = runs["tmp"]
    rows, stats = read_rows(str(tmp / "d1")), summary(str(tmp / "d1"))
    exp = str(tmp / "exp")
    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(exp, "*.tar"))), shardshuffle=False))
    exported = [json.loads(s["json"]) for s in samples]
    keys = [s["key"] for s in exported]
    assert len(keys) == len(set(keys))
    by_key = {r["key"]: r for r in rows}
    wanted = [k for k, r in by_key.items() if r["status"] == "ok" and not r["is_placeholder"] and r["is_canonical"]]
    # the planted rows are hashes only, with no picture: selected, then skipped as unreadable
    assert sorted(keys) == sorted(k for k in wanted if "near-" not in k)
    clusters = [by_key[k]["cluster_id"] for k in keys if by_key[k]["cluster_id"]]
    assert len(clusters) == len(set(clusters)) == len(GROUPS)  # one copy of each real cluster
    books = summary(exp)
    assert books["rows_read"] == stats["rows"] and books["exported"] == len(samples)
    assert books["skipped"]["placeholder"] == stats["placeholder_rows"]
    # a failed row is skipped as not_ok whether or not it is the redundant copy of a cluster
    failed_kept = sum(r["status"] != "ok" and r["is_canonical"] and not r["is_placeholder"] for r in rows)
    assert books["skipped"]["non_canonical"] + books["skipped"]["not_ok"] == stats["redundant_rows"] + failed_kept
    assert books["skipped"]["unreadable_blob"] == len(runs["planted"])
    assert books["exported"] + sum(books["skipped"].values()) == stats["rows"]

"""Ingest end to end: manifests in three real formats against a hostile loopback web server."""

import base64
import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys

import pyarrow.dataset as ds
import pytest

from pipelines import ingest
from pipelines.demo.sample_site import Reply, encode, jpeg, picture, pixel_bomb_png
from tests.conftest import local_options
from tests.pipelines.test_progress_e2e import FINAL
from transforms import schema

JPEG = {"Content-Type": "image/jpeg"}


def read_rows(out):
    return {r["key"]: r for r in ds.dataset(os.path.join(out, "images"), format="parquet").to_table().to_pylist()}


def install_hostile_routes(web):
    """Every answer a hostile or broken web gives; returns the images served."""
    images = {n: jpeg(n) for n in range(6)}
    web.routes.update(
        {
            "/ok0.jpg": Reply(200, images[0], JPEG),
            "/ok1.jpg": Reply(200, images[1], JPEG),
            "/copy-of-ok1.jpg": Reply(200, images[1], JPEG),
            "/ok2.png": Reply(200, encode(picture(2), "PNG"), {"Content-Type": "image/png"}),
            "/oi.jpg": Reply(200, images[3], JPEG),
            "/oi-wrong.jpg": Reply(200, images[4], JPEG),
            "/hashed.jpg": Reply(200, images[5], JPEG),
            "/redirect": Reply(302, headers={"Location": "/ok0.jpg"}),
            "/to-internal": Reply(302, headers={"Location": "http://127.0.0.2/x.jpg"}),
            "/loop": Reply(302, headers={"Location": "/loop"}),
            "/500": Reply(500, b"no"),
            "/flaky": [Reply(503, headers={"Retry-After": "0"}), Reply(200, images[2], JPEG)],
            "/slow": Reply(200, images[0], JPEG, delay=2.5),
            "/drip": Reply(200, jpeg(9, (900, 700)), JPEG, drip=0.3),
            "/html": Reply(200, b"<html>moved</html>", {"Content-Type": "text/html"}),
            "/noai": Reply(200, images[0], dict(JPEG, **{"X-Robots-Tag": "noimageai"})),
            "/big": Reply(200, b"\xff\xd8\xff" + b"0" * 300_000, JPEG),
            "/gzbomb": Reply(200, gzip.compress(b"\0" * 3_000_000), dict(JPEG, **{"Content-Encoding": "gzip"})),
            "/trunc": Reply(200, jpeg(7, (500, 400))[:2500], JPEG),
            "/bomb": Reply(200, pixel_bomb_png(12000, 12000), {"Content-Type": "image/png"}),
            "/cut": Reply(200, images[0], JPEG, cut_after=50),
        }
    )
    return images


def write_manifests(tmp_path, web, images):
    b = web.base
    cc3m = [
        ("a photo", f"{b}/ok0.jpg"),
        ("# not a comment", f"{b}/ok1.jpg"),
        ("redirected", f"{b}/redirect"),
        ("dead", f"{b}/dead.jpg"),
        ("server error", f"{b}/500"),
        ("flaky", f"{b}/flaky"),
        ("slow headers", f"{b}/slow"),
        ("slow body", f"{b}/drip"),
        ("a web page", f"{b}/html"),
        ("opted out", f"{b}/noai"),
        ("too big", f"{b}/big"),
        ("gzip bomb", f"{b}/gzbomb"),
        ("truncated", f"{b}/trunc"),
        ("pixel bomb", f"{b}/bomb"),
        ("cut", f"{b}/cut"),
        ("loop", f"{b}/loop"),
        ("internal", "http://127.0.0.2:8080/x.jpg"),
        ("metadata", "http://169.254.169.254/computeMetadata/v1/"),
        ("redirect inside", f"{b}/to-internal"),
        ("ftp", "ftp://example.com/a.jpg"),
        ("refused", "http://127.0.0.1:1/a.jpg"),
        ("png", f"{b}/ok2.png"),
    ]
    (tmp_path / "cc3m.tsv").write_text("".join(f"{c}\t{u}\n" for c, u in cc3m) + "no tab at all\n")
    cc12m = [
        f"{b}/ok0.jpg\tsame url as cc3m",
        f"{b}/copy-of-ok1.jpg\tsame bytes, other url",
        f"{b}/hashed.jpg\tpublished hash matches",
        f"{b}/ok2.png\tpublished hash is wrong",
    ]
    (tmp_path / "cc12m.tsv").write_text("\n".join(cc12m) + "\n")
    sha_hashed = hashlib.sha256(images[5]).digest()
    (tmp_path / "hashes.tsv").write_text(
        f"{b}/hashed.jpg\t{base64.b64encode(sha_hashed).decode()}\t\n{b}/ok2.png\t{'ab' * 32}\t\n"
    )
    md5 = lambda body: base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: E731
    (tmp_path / "oi.csv").write_text(
        "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,"
        "OriginalMD5,Thumbnail300KURL,Rotation\n"
        f'0000000000000001,train,{b}/oi.jpg,,,,"Doe, J",Zoë,1,{md5(images[3])},,90\n'
        f"0000000000000002,train,{b}/oi-wrong.jpg,,,,x,y,1,{md5(images[3])},,NaN\n"
        "0000000000000003,train\n"
    )
    return len(cc3m) + 1 + len(cc12m) + 3


EXPECTED = {
    "cc3m:1": schema.OK,
    "cc3m:2": schema.OK,
    "cc3m:3": schema.OK,
    "cc3m:4": schema.HTTP_ERROR,
    "cc3m:5": schema.HTTP_ERROR,
    "cc3m:6": schema.OK,
    "cc3m:7": schema.TIMEOUT,
    "cc3m:8": schema.TIMEOUT,
    "cc3m:9": schema.NOT_IMAGE,
    "cc3m:10": schema.OPTED_OUT,
    "cc3m:11": schema.TOO_LARGE,
    "cc3m:12": schema.TOO_LARGE,
    "cc3m:13": schema.DECODE_ERROR,
    "cc3m:14": schema.DECODE_ERROR,
    "cc3m:15": schema.CONNECTION_ERROR,
    "cc3m:16": schema.HTTP_ERROR,
    "cc3m:17": schema.BLOCKED,
    "cc3m:18": schema.BLOCKED,
    "cc3m:19": schema.BLOCKED,
    "cc3m:20": schema.INVALID_URL,
    "cc3m:21": schema.CONNECTION_ERROR,
    "cc3m:22": schema.OK,
    "cc3m:23": schema.INVALID_URL,
    "cc12m:1": schema.OK,
    "cc12m:2": schema.OK,
    "cc12m:3": schema.OK,
    "cc12m:4": schema.HASH_MISMATCH,
    "openimages:0000000000000001": schema.OK,
    "openimages:0000000000000002": schema.HASH_MISMATCH,
    "openimages:0000000000000003": schema.INVALID_URL,
}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ingest")
    from pipelines.demo.sample_site import SampleWebServer

    with SampleWebServer() as web:
        images = install_hostile_routes(web)
        manifest_rows = write_manifests(tmp_path, web, images)
        out = str(tmp_path / "out")
        ingest.run(
            local_options(
                manifest=[
                    f"cc3m={tmp_path / 'cc3m.tsv'}",
                    f"cc12m={tmp_path / 'cc12m.tsv'}",
                    f"openimages={tmp_path / 'oi.csv'}",
                ],
                output=out,
                **{
                    "cc12m-hashes": tmp_path / "hashes.tsv",
                    "allow-network": "127.0.0.1/32",
                    "timeout": 1.5,
                    "max-bytes": 200_000,
                    "max-pixels": 50_000_000,
                },
            )
        )
        return out, manifest_rows, images, dict(web.hits)


def test_every_manifest_row_comes_out_exactly_once(ingested):
    out, manifest_rows, _, _ = ingested
    table = ds.dataset(os.path.join(out, "images"), format="parquet").to_table()
    keys = table.column("key").to_pylist()
    assert len(keys) == manifest_rows == len(EXPECTED)
    assert len(set(keys)) == len(keys)


def test_each_row_has_the_status_it_deserves(ingested):
    rows = read_rows(ingested[0])
    assert {k: r["status"] for k, r in rows.items()} == EXPECTED
    for row in rows.values():
        assert (row["error"] is None) == (row["status"] == schema.OK), row
        assert row["status"] in schema.STATUSES


def test_ok_rows_are_fully_described_and_blobs_content_addressed(ingested):
    out, _, images, _ = ingested
    rows = read_rows(out)
    for row in rows.values():
        if row["status"] != schema.OK:
            assert row["blob"] is None
            continue
        with open(row["blob"], "rb") as handle:
            body = handle.read()
        assert hashlib.sha256(body).hexdigest() == row["sha256"] and row["sha256"] in row["blob"]
        assert row["width"] and row["height"] and len(row["phash"]) == 16 and row["fetched_at"]
    assert rows["cc3m:3"]["final_url"].endswith("/ok0.jpg") and rows["cc3m:3"]["sha256"] == rows["cc3m:1"]["sha256"]
    assert rows["cc3m:6"]["attempts"] == 2
    assert rows["openimages:0000000000000001"]["rotation"] == 90.0
    assert rows["openimages:0000000000000001"]["author"] == "Doe, J"
    assert rows["cc12m:3"]["expected_sha256"] == rows["cc12m:3"]["sha256"]


def test_each_distinct_image_stored_once(ingested):
    out, _, _, _ = ingested
    rows = read_rows(out)
    blobs = glob.glob(os.path.join(out, "blobs", "*", "*", "*"))
    assert sorted(os.path.basename(p).split(".")[0] for p in blobs) == sorted(
        {r["sha256"] for r in rows.values() if r["status"] == schema.OK}
    )
    assert not [p for p in blobs if ".tmp-" in p]


def test_refused_addresses_were_never_contacted(ingested):
    hits = ingested[3]
    assert "/x.jpg" not in hits  # the redirect into 127.0.0.2 stopped before connecting


def test_exact_duplicates_share_a_cluster_with_one_canonical(ingested):
    rows = read_rows(ingested[0])
    same_url = {rows["cc3m:1"]["cluster_id"], rows["cc12m:1"]["cluster_id"], rows["cc3m:3"]["cluster_id"]}
    assert len(same_url) == 1 and None not in same_url
    assert rows["cc3m:2"]["cluster_id"] == rows["cc12m:2"]["cluster_id"] is not None
    clusters = {}
    for row in rows.values():
        if row["cluster_id"]:
            clusters.setdefault(row["cluster_id"], []).append(row["is_canonical"])
        else:
            assert row["is_canonical"] is True
    assert all(flags.count(True) == 1 for flags in clusters.values())


def test_summary_counts_match_the_table(ingested):
    out = ingested[0]
    with open(os.path.join(out, "summary.json")) as handle:
        summary = json.load(handle)
    rows = read_rows(out)
    assert summary["rows"] == len(rows)
    for dataset, per_status in summary["counts"].items():
        for status, count in per_status.items():
            assert count == sum(1 for r in rows.values() if r["dataset"] == dataset and r["status"] == status)
    assert summary["timings"]["wall_seconds"] > 0


def check_demo_command_output(done, out):
    """What `python -m pipelines.ingest --demo --output OUT` (finished as `done`, on the default
    local runner) printed and left in OUT.

    Why not a test of its own: the demo is one ~11 s run, and
    tests/pipelines/report/test_run_resources.py::test_an_ingest_records_its_cost_and_the_os_agrees
    runs the same command (to weigh its cost); it calls this on that run.
    """
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dataset" in done.stdout and "total" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    rendered = (out / "summary.json").read_text()
    # a final progress line, plain lines and the report (a demo run in test_progress_e2e.py before)
    final = FINAL.search(done.stderr)
    assert final and int(final.group(1)) == summary["rows"], done.stderr[-3000:]
    assert "\r" not in done.stderr  # not a terminal: plain lines only
    assert (out / "report.html").exists() and "report:" in done.stdout
    assert summary["rows"] == sum(sum(v.values()) for v in summary["counts"].values())
    statuses = summary["status_totals"]
    assert set(statuses) == set(schema.STATUSES), rendered  # the sample shows every status
    assert set(summary["counts"]) == set(schema.DATASETS)  # and every dataset
    dups = summary["duplicates"]
    assert dups["near_clusters"] >= 2  # resized copies and a PNG of a JPEG
    assert dups["across_datasets"]["cc3m|cc12m"]["rows"] >= 4
    assert (dups["placeholder_groups"], dups["placeholder_rows"]) == (1, 3)  # the Flickr-like picture
    rows = read_rows(str(out))
    oi = rows["openimages:0006400c1c224e19"]
    assert {item["name"] for item in oi["labels"]} >= {"Tree", "Building"}
    assert all(item["confidence"] > 0 for item in oi["labels"]) and oi["negative_labels"]
    assert [item["name"] for item in rows["imagenet_captions:n01440764_10026.JPEG"]["labels"]] == ["tench, Tinca tinca"]
    assert rows["zero:5a45524f00000001"]["caption"] == "熊猫宝宝吃竹子"
    assert any(r["long_captions"] for r in rows.values())
    assert any(item["source"] == "cc3m" for r in rows.values() for item in r["labels"])


def test_missing_manifest_is_a_message_not_a_traceback(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.ingest",
            "--manifest",
            f"cc3m={tmp_path}/nope.tsv",
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no file matches" in done.stderr and "Traceback" not in done.stderr

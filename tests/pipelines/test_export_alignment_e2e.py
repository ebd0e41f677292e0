"""Every exported picture carries its own caption, labels and key: manifest -> ingest -> export ->
the real `webdataset` and `datasets` readers, checked against what the manifest said and what the
server served for each URL (not against the table the export read).

The manifests hold the cases that could pair a picture with another row's text: captions with
tabs, quotes, an escaped newline, Chinese, emoji, RTL and combining marks, a very long one, one
URL twice with two captions, one picture at two URLs (an exact cluster), failures between ok rows,
a redirect, CC12M's URL-first lines, Open Images labels joined by ImageID, Zero records.
"""

import csv
import glob
import hashlib
import json
import os

import pyarrow.dataset as ds
import pytest

from pipelines import export, ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, encode, picture
from tests.conftest import local_options
from tests.pipelines.test_export import read_hf

pytestmark = pytest.mark.timeout(180)

CC3M_CAPTIONS = [  # (caption, path); the line number is the key
    ("plain caption", "/p/1.png"),
    ("a\tcaption\twith tabs", "/p/2.png"),
    ("he said \"hi\", and 'bye'", "/p/3.png"),
    ("line one\\nline two, an escaped newline", "/p/4.png"),
    ("西湖 🐼🎉 עברית مرحبا e\u0301 combining", "/p/5.png"),
    ("long " + "word " * 3000 + "end", "/p/6.png"),
    ("first caption of seven", "/p/7.png"),
    ("second caption of seven", "/p/7.png"),
    ("a dead url between ok rows", "/dead.png"),
    ("nine", "/p/9.png"),
    ("redirected to ten", "/to-ten"),
    ("eleven", "/p/11.png"),
    ("eleven again at another url", "/copy-of-11.png"),
    ("# a hashtag, not a comment", "/p/12.png"),
]
CC12M_CAPTIONS = [("/p/20.png", "cc12m\twith a tab"), ("/p/21.png", "<PERSON> 在 西湖"), ("/p/1.png", "cc12m says one")]
OPEN_IMAGES = [
    ("0000000000000031", "/p/31.png", ["/m/01g317"]),
    ("0000000000000032", "/p/32.png", ["/m/0bt9lr", "/m/07j7r"]),
]
ZERO = [("z35", "/p/35.png", '熊猫宝宝 "吃" 竹子')]


def routes():
    """Every path its own picture (its pixels from its number), a copy, a redirect; /dead.png 404s."""
    served = {}
    for n in (1, 2, 3, 4, 5, 6, 7, 9, 11, 12, 20, 21, 31, 32, 35):
        served[f"/p/{n}.png"] = Reply(200, encode(picture(n, (64 + n, 48 + n)), "PNG"), {"Content-Type": "image/png"})
    served["/copy-of-11.png"] = served["/p/11.png"]
    served["/p/10.png"] = Reply(200, encode(picture(10, (80, 60)), "PNG"), {"Content-Type": "image/png"})
    served["/to-ten"] = Reply(302, b"", {"Location": "/p/10.png"})
    return served


def write_manifests(folder, web):
    """The four manifests and the Open Images labels; returns (manifest options, {key: expected})
    where expected is (sha256 served for the URL or None, caption, label ids or None)."""
    sha = {path: hashlib.sha256(reply.body).hexdigest() for path, reply in web.routes.items() if reply.status == 200}
    sha["/to-ten"] = sha["/p/10.png"]
    expected = {}
    with open(folder / "cc3m.tsv", "w", encoding="utf-8") as handle:
        for line, (caption, path) in enumerate(CC3M_CAPTIONS, 1):
            handle.write(f"{caption}\t{web.url(path)}\n")
            expected[f"cc3m:{line}"] = (sha.get(path), caption, None)
    with open(folder / "cc12m.tsv", "w", encoding="utf-8") as handle:
        for line, (path, caption) in enumerate(CC12M_CAPTIONS, 1):
            handle.write(f"{web.url(path)}\t{caption}\n")
            expected[f"cc12m:{line}"] = (sha[path], caption, None)
    with (
        open(folder / "oi.csv", "w", newline="", encoding="utf-8") as images,
        open(folder / "labels.csv", "w") as labels,
    ):
        image_rows, label_rows = csv.writer(images), csv.writer(labels)
        image_rows.writerow(["ImageID", "Subset", "OriginalURL", "Title"])
        label_rows.writerow(["ImageID", "Source", "LabelName", "Confidence"])
        for image_id, path, ids in OPEN_IMAGES:
            image_rows.writerow([image_id, "train", web.url(path), 'a title, with "quotes"'])
            label_rows.writerows([image_id, "human", label, 1] for label in ids)
            expected[f"openimages:{image_id}"] = (sha[path], None, sorted(ids))
    with open(folder / "zero.jsonl", "w", encoding="utf-8") as handle:
        for image_key, path, title in ZERO:
            record = {"Url": "", "Title": title, "Content": "", "Keywords": "", "ImageKey": image_key}
            handle.write(json.dumps({**record, "ImageUrl": web.url(path), "ImageQuery": ""}, ensure_ascii=False) + "\n")
            expected[f"zero:{image_key}"] = (sha[path], title, None)
    manifests = [
        f"{kind}={folder / name}"
        for kind, name in [
            ("cc3m", "cc3m.tsv"),
            ("cc12m", "cc12m.tsv"),
            ("openimages", "oi.csv"),
            ("zero", "zero.jsonl"),
        ]
    ]
    return manifests, f"--openimages-labels={folder / 'labels.csv'}", expected


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    folder = tmp_path_factory.mktemp("alignment")
    with SampleWebServer(routes()) as web:
        manifests, labels, expected = write_manifests(folder, web)
        out = str(folder / "out")
        ingest.run(
            local_options(manifest=manifests, output=out, **{"allow-network": "127.0.0.1/32", "timeout": 5}) + [labels]
        )
    rows = ds.dataset(os.path.join(out, "images"), format="parquet").to_table().to_pylist()
    return out, {row["key"]: row for row in rows}, expected


def assert_aligned(key, sha256, caption, labels, image_bytes, expected):
    """One sample (or row) against what the manifest said and the server served for its key."""
    served, said, label_ids = expected[key]
    assert sha256 == served and hashlib.sha256(image_bytes).hexdigest() == served, key
    assert caption == said, key
    if label_ids is not None:
        assert sorted(label["id"] for label in labels) == label_ids, key


def test_the_table_pairs_each_row_with_its_own_picture_and_text(ingested):
    _, rows, expected = ingested
    assert set(rows) == set(expected)  # count in = count out, every key once
    assert rows["cc3m:9"]["status"] == "http_error" and rows["cc3m:11"]["final_url"].endswith("/p/10.png")
    assert rows["cc3m:12"]["cluster_id"] == rows["cc3m:13"]["cluster_id"] is not None
    for key, row in rows.items():
        assert (row["status"] == "ok") == (expected[key][0] is not None), (key, row["status"], row["error"])
        if row["status"] == "ok":
            with open(row["blob"], "rb") as handle:
                assert_aligned(key, row["sha256"], row["caption"], row["labels"], handle.read(), expected)


def test_webdataset_samples_read_shard_by_shard_carry_their_own_text(ingested, tmp_path):
    """--include all, shards of 3, two splits; each shard read on its own, as a loader's workers do."""
    import webdataset as wds

    out, rows, expected = ingested
    exp = str(tmp_path / "exp")
    args = local_options(input=out, output=exp, format="webdataset", include="all", **{"shard-size": 3})
    assert export.run(args + ["--split=train=0.5,validation=0.5"]).state == "DONE"
    shards = sorted(glob.glob(os.path.join(exp, "*", "*.tar")))
    samples = [sample for shard in shards for sample in wds.WebDataset([shard], shardshuffle=False)]
    for sample in samples:
        meta = json.loads(sample["json"])
        assert sample["txt"].decode("utf-8") == (meta["caption"] or "") and meta["url"] == rows[meta["key"]]["url"]
        assert_aligned(meta["key"], meta["sha256"], meta["caption"], meta["labels"], sample["png"], expected)
    keys = [json.loads(sample["json"])["key"] for sample in samples]
    ok = {key for key, row in rows.items() if row["status"] == "ok"}
    assert sorted(keys) == sorted(ok)  # every ok row once, none twice
    with open(os.path.join(exp, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["exported"] == len(samples) and summary["rows_read"] == len(rows) == len(expected)


def test_hf_parquet_rows_carry_their_own_text(ingested, tmp_path, monkeypatch):
    """The default selection (one row of each cluster), read with `datasets`."""
    import datasets

    out, rows, expected = ingested
    exp = str(tmp_path / "exp")
    assert export.run(local_options(input=out, output=exp, format="hf-parquet", **{"shard-size": 4})).state == "DONE"
    table = read_hf(exp, tmp_path, monkeypatch).cast_column("image", datasets.Image(decode=False))
    for sample in table:
        assert sample["image"]["path"].startswith(sample["sample_key"])
        assert_aligned(
            sample["key"], sample["sha256"], sample["caption"], sample["labels"], sample["image"]["bytes"], expected
        )
    canonical = {k for k, r in rows.items() if r["status"] == "ok" and (r["cluster_id"] is None or r["is_canonical"])}
    assert sorted(table["key"]) == sorted(canonical) and len(canonical) < sum(
        r["status"] == "ok" for r in rows.values()
    )

"""A URL that serves another picture is not a duplicate, end to end with the real jobs on loopback.

A CC3M slice is ingested, then the site changes: three URLs serve new pictures, one fails (404),
one serves its picture re-encoded (smaller, JPEG quality 40), one the same bytes. The CC12M slice
of the same URLs is ingested then, both outputs are deduplicated by `pipelines.dedup` and the
result is exported to WebDataset and read back with the webdataset reader. Before the URL rule
(docs/duplicates.md, "What matches"), the three new pictures were put in one "exact" cluster with
their old ones (`match: url`) and the export dropped them as non_canonical, exit 0. A further
ingest lists one URL twice that serves another picture on each fetch (the rule inside one ingest).
"""

import contextlib
import glob
import io
import json
import os

import pytest

from pipelines import dedup, export, ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, encode, picture
from tests.table_readers import read_records, read_rows, summary

JPEG = {"Content-Type": "image/jpeg"}
RUNNER = ["--runner", "FnApiRunner"]
NET = ["--allow-network", "127.0.0.0/8", *RUNNER]
NEW = ("n1", "n2", "n3")  # a new picture at the URL the second time
PATHS = (*NEW, "gone", "re", "same")  # manifest line i + 1 is PATHS[i]


def jpeg(seed, size=(320, 240), quality=90):
    return Reply(200, encode(picture(seed, size), "JPEG", quality=quality), JPEG)


def first_routes():
    return {f"/{name}.jpg": jpeg(60 + i) for i, name in enumerate(PATHS)}


def second_routes():
    routes = first_routes()
    routes.update({f"/{name}.jpg": jpeg(80 + i) for i, name in enumerate(NEW)})
    routes["/gone.jpg"] = Reply(404, b"gone", {"Content-Type": "text/plain"})
    # the same picture, re-encoded: other bytes, a pHash a few bits off (not the same vertex)
    routes["/re.jpg"] = Reply(200, encode(picture(64).resize((300, 225)), "JPEG", quality=40), JPEG)
    return routes


def key(dataset, name):
    return f"{dataset}:{PATHS.index(name) + 1}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("url-new-picture")
    with SampleWebServer(first_routes()) as web:
        urls = [web.url(f"/{name}.jpg") for name in PATHS]
        (tmp / "cc3m.tsv").write_text("".join(f"caption {i}\t{u}\n" for i, u in enumerate(urls, 1)))
        (tmp / "cc12m.tsv").write_text("".join(f"{u}\tanother caption {i}\n" for i, u in enumerate(urls, 1)))
        assert ingest.main([f"--manifest=cc3m={tmp / 'cc3m.tsv'}", "--output", str(tmp / "cc3m"), *NET]) == 0
        web.routes.clear()
        web.routes.update(second_routes())
        assert ingest.main([f"--manifest=cc12m={tmp / 'cc12m.tsv'}", "--output", str(tmp / "cc12m"), *NET]) == 0
        # one URL listed twice in one manifest, another picture on each fetch
        web.routes["/flip.jpg"] = [jpeg(90), jpeg(91)]
        (tmp / "flip.tsv").write_text("".join(f"flip {i}\t{web.url('/flip.jpg')}\n" for i in (1, 2)))
        assert ingest.main([f"--manifest=cc3m={tmp / 'flip.tsv'}", "--output", str(tmp / "flip"), *NET]) == 0
    inputs = ["--input", str(tmp / "cc3m"), "--input", str(tmp / "cc12m")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert dedup.main([*inputs, "--output", str(tmp / "d"), *RUNNER]) == 0
    to_webdataset = ["--input", str(tmp / "d"), "--output", str(tmp / "exp"), "--format", "webdataset"]
    assert export.main([*to_webdataset, *RUNNER]) == 0
    return tmp


def test_new_pictures_at_a_url_stay_apart_and_are_all_exported(runs):
    import webdataset as wds

    rows = read_rows(str(runs / "d"))
    assert len(rows) == 2 * len(PATHS)
    by_key = {r["key"]: r for r in rows}
    for name in NEW:
        old, new = by_key[key("cc3m", name)], by_key[key("cc12m", name)]
        assert old["status"] == new["status"] == "ok" and old["sha256"] != new["sha256"], name
        assert (old["cluster_id"], new["cluster_id"]) == (None, None), name  # two pictures, no duplicate
        assert old["is_canonical"] and new["is_canonical"], name
    stats = summary(str(runs / "d"))  # the dedup job: its duplicate figures at the top level
    assert stats["urls_with_several_pictures"] == len(NEW) + 1  # and the re-encode: two vertices
    assert stats["clusters"] == 3 and stats["matches"]["url"] == 1

    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(str(runs / "exp"), "*.tar"))), shardshuffle=False))
    exported = {json.loads(s["json"])["key"]: json.loads(s["json"])["sha256"] for s in samples}
    for name in NEW:  # both pictures of each URL, each with its own bytes
        for dataset in ("cc3m", "cc12m"):
            assert exported[key(dataset, name)] == by_key[key(dataset, name)]["sha256"], (name, dataset)
    books = summary(str(runs / "exp"))
    assert books["exported"] == len(samples) == 2 * len(NEW) + 3  # + gone's picture, re and same once
    assert books["skipped"]["non_canonical"] == 2 and books["skipped"]["not_ok"] == 1
    assert books["exported"] + sum(books["skipped"].values()) == books["rows_read"] == len(rows)


def test_failed_row_joins_its_url_and_a_reencode_clusters_as_near(runs):
    rows, records = read_rows(str(runs / "d")), read_records(str(runs / "d"))
    by_key = {r["key"]: r for r in rows}
    match = {m["key"]: m["match"] for record in records for m in record["members"]}
    kind = {m["key"]: record["kind"] for record in records for m in record["members"]}
    gone_old, gone_new = by_key[key("cc3m", "gone")], by_key[key("cc12m", "gone")]
    assert gone_new["status"] == "http_error" and gone_new["phash"] is None
    assert gone_old["cluster_id"] == gone_new["cluster_id"] is not None and gone_old["is_canonical"]
    assert match[key("cc12m", "gone")] == "url"
    re_old, re_new = by_key[key("cc3m", "re")], by_key[key("cc12m", "re")]
    assert (re_old["phash"], re_old["dhash"]) != (re_new["phash"], re_new["dhash"])  # two vertices
    assert re_old["cluster_id"] == re_new["cluster_id"] is not None
    assert match[key("cc12m", "re")] == "near" and kind[key("cc12m", "re")] == "near"
    same_old, same_new = by_key[key("cc3m", "same")], by_key[key("cc12m", "same")]
    assert same_old["cluster_id"] == same_new["cluster_id"] is not None
    assert match[key("cc3m", "same")] == "sha256"


def test_one_ingest_of_a_url_serving_two_pictures(runs):
    rows = read_rows(str(runs / "flip"))
    assert len(rows) == 2 and rows[0]["sha256"] != rows[1]["sha256"]
    assert [r["cluster_id"] for r in rows] == [None, None] and all(r["is_canonical"] for r in rows)
    assert summary(str(runs / "flip"))["duplicates"]["urls_with_several_pictures"] == 1

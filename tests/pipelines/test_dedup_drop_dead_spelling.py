"""dead_blobs.txt never lists a blob a kept row uses, whatever the URI spelling: an OUT ingested with
a relative --output and resumed with its absolute path holds one blob file under two URIs
(docs/refresh.md, "Deleting what the refresh calls dead")."""

import glob
import json
import os

import pyarrow.parquet as pq

from pipelines import dedup, ingest
from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.conftest import local_options

JPEG = {"Content-Type": "image/jpeg"}
NET = {"allow-network": "127.0.0.1/32"}


def test_a_blob_a_kept_row_names_otherwise_is_not_listed(tmp_path, monkeypatch):
    """cc3m:1 (/a.jpg, fetched by the first run: blob `OUT/blobs/...`) dies; cc3m:2 (a mirror of the
    same bytes, fetched by the resumed run: blob `/abs/OUT/blobs/...`) lives. Before: dead_blobs.txt
    listed `OUT/blobs/...`, the file cc3m:2's picture is, exit 0."""
    monkeypatch.chdir(tmp_path)
    with SampleWebServer() as web:
        web.routes["/a.jpg"] = Reply(200, jpeg(1), JPEG)
        web.routes["/mirror/a.jpg"] = Reply(503, b"busy", {"Content-Type": "text/plain"})
        manifest = tmp_path / "m.tsv"
        manifest.write_text(f"caption a\t{web.base}/a.jpg\ncaption mirror\t{web.base}/mirror/a.jpg\n")
        ingest.run(local_options(manifest=f"cc3m={manifest}", output="OUT", **NET))
        web.routes["/mirror/a.jpg"] = Reply(200, jpeg(1), JPEG)
        ingest.run(local_options(manifest=f"cc3m={manifest}", output=str(tmp_path / "OUT"), resume=True, **NET))
        web.routes["/a.jpg"] = Reply(404, b"not found", {"Content-Type": "text/plain"})
        options = {"dead-after": 1, "timeout": 10.0, "retries": 0}
        refresh_job.run(local_options(snapshot="OUT", output="night", night="2030-06-01", **options, **NET))
    table = {r["key"]: r for r in pq.read_table(glob.glob("OUT/images/*.parquet")).to_pylist()}
    dead, live = table["cc3m:1"]["blob"], table["cc3m:2"]["blob"]
    assert dead != live and os.path.samefile(dead, live)  # one file, two spellings
    assert dedup.main(["--input", "OUT", "--output", "OUT3", "--drop-dead", "night", "--runner", "FnApiRunner"]) == 0
    kept = [r["key"] for r in pq.read_table(glob.glob("OUT3/images/*.parquet")).to_pylist()]
    assert kept == ["cc3m:2"]
    with open("OUT3/dead_blobs.txt") as handle:
        assert handle.read() == ""
    with open("OUT3/summary.json") as handle:
        summary = json.load(handle)
    assert summary["drop_dead"]["dropped_dead"] == 1 and summary["blobs_only_dead"] == 0

"""dead_blobs.txt never lists a blob a kept row uses, whatever the URI spelling: an OUT ingested through
a symbolic link and resumed by its real path (or written, before blob URIs were made absolute, with a
relative --output) holds one blob file under two URIs; and what it lists means the same file from any
working directory (docs/refresh.md, "Deleting what the refresh calls dead")."""

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
    """cc3m:1 (/a.jpg, fetched by the first run: blob `LINK/OUT/blobs/...`) dies; cc3m:2 (a mirror of
    the same bytes, fetched by the resumed run: blob `/abs/OUT/blobs/...`) lives. Before: dead_blobs.txt
    listed `LINK/OUT/blobs/...`, the file cc3m:2's picture is, exit 0."""
    monkeypatch.chdir(tmp_path)
    os.symlink(tmp_path, tmp_path / "LINK")
    with SampleWebServer() as web:
        web.routes["/a.jpg"] = Reply(200, jpeg(1), JPEG)
        web.routes["/mirror/a.jpg"] = Reply(503, b"busy", {"Content-Type": "text/plain"})
        manifest = tmp_path / "m.tsv"
        manifest.write_text(f"caption a\t{web.base}/a.jpg\ncaption mirror\t{web.base}/mirror/a.jpg\n")
        ingest.run(local_options(manifest=f"cc3m={manifest}", output="LINK/OUT", **NET))
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


def test_blobs_listed_from_a_relative_output_mean_the_same_file_from_anywhere(tmp_path, monkeypatch):
    """An ingest run as `--output OUT` from one folder, its refresh and dedup --drop-dead too; the
    data team deletes from another folder. Before: the table's blob column and dead_blobs.txt held
    `OUT/blobs/...`, which from elsewhere names no file, or another OUT's picture of that name."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    (elsewhere / "OUT" / "blobs").mkdir(parents=True)  # another OUT, where a relative URI would land
    monkeypatch.chdir(work)
    with SampleWebServer() as web:
        web.routes["/a.jpg"] = Reply(200, jpeg(1), JPEG)
        web.routes["/b.jpg"] = Reply(200, jpeg(2), JPEG)
        manifest = work / "m.tsv"
        manifest.write_text(f"caption a\t{web.base}/a.jpg\ncaption b\t{web.base}/b.jpg\n")
        ingest.run(local_options(manifest=f"cc3m={manifest}", output="OUT", **NET))
        web.routes["/a.jpg"] = Reply(404, b"not found", {"Content-Type": "text/plain"})
        options = {"dead-after": 1, "timeout": 10.0, "retries": 0}
        refresh_job.run(local_options(snapshot="OUT", output="night", night="2030-06-01", **options, **NET))
    assert dedup.main(["--input", "OUT", "--output", "OUT3", "--drop-dead", "night", "--runner", "FnApiRunner"]) == 0
    with open("OUT3/dead_blobs.txt") as handle:
        listed = handle.read().split()
    table = {r["key"]: r for r in pq.read_table(glob.glob("OUT/images/*.parquet")).to_pylist()}
    monkeypatch.chdir(elsewhere)
    assert listed == [table["cc3m:1"]["blob"]]
    for row in table.values():
        assert os.path.isabs(row["blob"]) and os.path.isfile(row["blob"]), row["blob"]
    assert os.path.samefile(listed[0], work / "OUT" / os.path.relpath(listed[0], work / "OUT"))

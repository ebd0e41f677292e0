"""--drop-dead judges only the records the night checked: a row fetched after the night's check (a
later ingest of the same manifest, a URL back up) is not the record the night called dead
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
GONE = Reply(404, b"not found", {"Content-Type": "text/plain"})
NET = {"allow-network": "127.0.0.1/32"}


def _keys(out):
    return sorted(r["key"] for r in pq.read_table(glob.glob(os.path.join(out, "images", "*.parquet"))).to_pylist())


def test_a_row_fetched_alive_after_the_nights_check_is_kept_and_its_blob_not_listed(tmp_path, capsys):
    """The night (checked at T) calls /a.jpg dead; at T+1 it is back and a new ingest fetches it ok.
    Before: `dedup --input NEW --drop-dead NIGHT` dropped that live row and listed its blob in
    dead_blobs.txt (a data team deletes those), exit 0."""
    with SampleWebServer() as web:
        web.routes["/a.jpg"] = Reply(200, jpeg(1), JPEG)
        web.routes["/b.jpg"] = Reply(200, jpeg(2), JPEG)
        manifest = tmp_path / "m.tsv"
        manifest.write_text(f"caption a\t{web.base}/a.jpg\ncaption b\t{web.base}/b.jpg\n")
        ingest.run(local_options(manifest=f"cc3m={manifest}", output=str(tmp_path / "old"), **NET))
        web.routes["/a.jpg"] = GONE
        night = str(tmp_path / "night")
        refresh_job.run(
            local_options(
                snapshot=str(tmp_path / "old"),
                output=night,
                night="2030-06-01",
                **{"dead-after": 1, "timeout": 10.0, "retries": 0},
                **NET,
            )
        )
        web.routes["/a.jpg"] = Reply(200, jpeg(1), JPEG)  # back up
        ingest.run(local_options(manifest=f"cc3m={manifest}", output=str(tmp_path / "new"), **NET))
    status = pq.read_table(glob.glob(os.path.join(night, "status", "*.parquet"))).to_pylist()
    assert [r["key"] for r in status if r["status"] == "dead"] == ["cc3m:1"]
    capsys.readouterr()
    out3 = str(tmp_path / "out3")
    args = ["--input", str(tmp_path / "new"), "--output", out3, "--drop-dead", night, "--runner", "FnApiRunner"]
    assert dedup.main(args) == 0
    assert _keys(out3) == ["cc3m:1", "cc3m:2"]
    with open(os.path.join(out3, "dead_blobs.txt")) as handle:
        assert handle.read() == ""
    with open(os.path.join(out3, "summary.json")) as handle:
        summary = json.load(handle)
    dead = summary["drop_dead"]
    assert (dead["dropped_dead"], dead["kept_fetched_after_verdict"], dead["kept_verdict_not_dead"]) == (0, 1, 1)
    books = summary["books"]
    assert (books["rows_in"], books["rows_out"], books["dropped_dead"], books["balanced"]) == (2, 2, 0, True)
    # the snapshot the night judged still has its dead row dropped
    out4 = str(tmp_path / "out4")
    args = ["--input", str(tmp_path / "old"), "--output", out4, "--drop-dead", night, "--runner", "FnApiRunner"]
    assert dedup.main(args) == 0
    assert _keys(out4) == ["cc3m:2"]

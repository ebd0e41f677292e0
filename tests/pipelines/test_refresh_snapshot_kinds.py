"""What a --snapshot may be: an ingest or dedup table, never a refresh's own table.

A refresh's status/ files (and a history night's) hold the key, url and status columns a snapshot
needs, so `--snapshot 'REFRESH_OUT/status/*.parquet'` was read as an ingest table, exit 0: its
verdicts taken for ingest statuses (`ingest_status` `alive`, `dead`), every picture "none to compare
with", and the rows dead at ingest re-checked as fetched ones.
"""

import glob
import os

from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.synthetic_out import fetched_ok_row, write_snapshot_table
from tests.table_readers import night_options, one_line

JPEG = {"Content-Type": "image/jpeg"}


def test_a_refresh_status_table_given_as_snapshot_is_refused(tmp_path, capsys):
    with SampleWebServer() as web:
        web.routes["/a/0.jpg"] = Reply(200, jpeg(1), JPEG)
        snapshot = write_snapshot_table(
            str(tmp_path / "OUT"),
            [
                fetched_ok_row("cc3m:0", web.url("/a/0.jpg"), jpeg(1)),
                fetched_ok_row("cc3m:1", web.url("/a/1.jpg"), jpeg(2)),
            ],
        )
        options, out = night_options(tmp_path, snapshot, "2030-02-01")
        assert refresh_job.main(options) == 0
        capsys.readouterr()
        for night_files in (
            os.path.join(out, "status", "*.parquet"),
            str(tmp_path / "history" / "2030-02-01" / "*.parquet"),
        ):
            assert glob.glob(night_files)
            options, again = night_options(tmp_path, night_files, "2030-02-02", history=str(tmp_path / "history-2"))
            assert refresh_job.main(options) == 2
            line = one_line(capsys, "refresh")
            assert "is a refresh's table" in line and "--snapshot OUT" in line, line
            assert not glob.glob(os.path.join(again, "status", "*")), "nothing written"
            assert not os.path.exists(tmp_path / "history-2" / "2030-02-02")

"""A --history follows one snapshot: a night given another snapshot's history is refused (exit 2,
one line naming both), unless --snapshot-replaced says so. Before, it ran with exit 0: every streak
restarted, the history mixed two snapshots' nights, and the right snapshot's next night restarted
every streak again (a URL 404 on two of its nights was `unreachable`, not `dead`).
"""

import json
import os

import pyarrow.dataset as ds

from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.synthetic_out import fetched_ok_row, write_snapshot_table
from tests.table_readers import night_options, one_line
from transforms.liveness import verdicts

JPEG = {"Content-Type": "image/jpeg"}


def night(tmp_path, snapshot, date, **extra):
    """(exit status, status rows by key) of the refresh of `date` with the history tmp_path/history."""
    options, out = night_options(tmp_path, snapshot, date, **extra)
    status = refresh_job.main(options)
    if status:
        return status, None
    rows = ds.dataset(os.path.join(out, "status"), format="parquet").to_table().to_pylist()
    return status, {r["key"]: r for r in rows}


def test_a_history_of_another_snapshot_is_refused_unless_replaced_on_purpose(tmp_path, capsys):
    with SampleWebServer() as web:
        for n in range(3):
            web.routes[f"/b/{n}.jpg"] = Reply(200, jpeg(n), JPEG)
        # A's URLs are gone now (404); B holds the same keys for other URLs, all served
        a = write_snapshot_table(
            str(tmp_path / "A"), [fetched_ok_row(f"cc3m:{n}", web.url(f"/a/{n}.jpg"), jpeg(10 + n)) for n in range(3)]
        )
        b = write_snapshot_table(
            str(tmp_path / "B"), [fetched_ok_row(f"cc3m:{n}", web.url(f"/b/{n}.jpg"), jpeg(n)) for n in range(3)]
        )
        assert night(tmp_path, a, "2030-02-01")[0] == 0
        capsys.readouterr()
        assert night(tmp_path, b, "2030-02-02") == (2, None)
        line = one_line(capsys, "refresh")
        assert f"--snapshot {os.path.realpath(a)}" in line and f"--snapshot {os.path.realpath(b)}" in line
        assert "--snapshot-replaced" in line
        assert not os.listdir(tmp_path / "refresh-2030-02-02")  # nothing written (the folder is made first)
        assert sorted(os.listdir(tmp_path / "history")) == ["2030-02-01"]
        # A again, spelt another way (a trailing slash): its own history, its streaks go on
        status, rows = night(tmp_path, a + "/", "2030-02-02")
        assert status == 0
        assert {(r["status"], r["gone_failures"]) for r in rows.values()} == {(verdicts.DEAD, 2)}
        # B on purpose: accepted, and the night records B from then on
        status, rows = night(tmp_path, b, "2030-02-03", **{"snapshot-replaced": True})
        assert status == 0 and {r["status"] for r in rows.values()} == {verdicts.ALIVE}
        marker = json.loads((tmp_path / "history" / "2030-02-03" / "_COMPLETE").read_text())
        assert marker["snapshots"] == [os.path.realpath(b)]
        assert night(tmp_path, b, "2030-02-04")[0] == 0


def test_a_history_night_written_before_markers_named_snapshots_is_read_as_before(tmp_path):
    with SampleWebServer() as web:
        web.routes["/b/0.jpg"] = Reply(200, jpeg(1), JPEG)
        a = write_snapshot_table(str(tmp_path / "A"), [fetched_ok_row("cc3m:0", web.url("/a/0.jpg"), jpeg(2))])
        b = write_snapshot_table(str(tmp_path / "B"), [fetched_ok_row("cc3m:0", web.url("/b/0.jpg"), jpeg(1))])
        assert night(tmp_path, a, "2030-02-01")[0] == 0
        marker = tmp_path / "history" / "2030-02-01" / "_COMPLETE"
        old = {k: v for k, v in json.loads(marker.read_text()).items() if k != "snapshots"}
        marker.write_text(json.dumps(old))
        assert night(tmp_path, b, "2030-02-02")[0] == 0

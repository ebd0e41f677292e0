"""Refresh under a scheduler: the night a run is for, and two runs of one history night at once."""

import datetime
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import refresh as refresh_job
from tests.conftest import local_options
from transforms.liveness import verdicts

UTC = datetime.timezone.utc


def tiny_snapshot(root):
    """An ingest-like table of one row under root/images/ (enough for the refresh's start-up checks)."""
    (root / "images").mkdir(parents=True)
    table = pa.table(
        {
            "key": ["cc3m:1"],
            "url": ["http://127.0.0.1:9/a.jpg"],
            "status": ["ok"],
            "fetched_at": pa.array([datetime.datetime(2030, 1, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, root / "images" / "part-0.parquet")
    return root


def test_a_run_started_at_midnight_names_one_night_for_its_folder_and_its_verdicts(tmp_path):
    # why: the default --night was read from the clock twice, once for "{night}" in --output and once
    # for the verdicts: a run started as UTC midnight passed wrote night D+1 into the folder of D
    snapshot = tiny_snapshot(tmp_path / "snap")
    before, after = datetime.date(2030, 3, 1), datetime.date(2030, 3, 2)
    options, opts = refresh_job.JOB.parse(
        local_options(snapshot=snapshot, output=str(tmp_path / "refresh" / "{night}"), history=tmp_path / "history")
    )
    with mock.patch.object(verdicts, "utc_today", side_effect=[before, after, after, after]):
        _snapshots, params = refresh_job.resolve(opts)
    assert opts.output == str(tmp_path / "refresh" / params.night.isoformat())

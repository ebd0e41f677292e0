"""Refresh under a scheduler: the night a run is for, and two runs of one history night at once."""

import datetime
import os
import time
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems

from pipelines import ingest
from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.conftest import local_options, local_or_gs
from transforms.errors import EnvironmentFailure
from transforms.io.sinks import file_name, join_path, write_json
from transforms.liveness import history as liveness_history
from transforms.liveness import verdicts

UTC = datetime.timezone.utc
JPEG = {"Content-Type": "image/jpeg"}
NET = {"allow-network": "127.0.0.1/32", "timeout": 10.0, "retries": 0}


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


def night_written_aside(history, night, run_id):
    """What WriteHistory leaves aside for publish_night: one Parquet file and the marker listing it."""
    name = f"part-{run_id}-00000-of-00001.parquet"
    aside = join_path(liveness_history.night_aside(history, night, run_id))
    row = {column: [None] for column in liveness_history.HISTORY_COLUMNS} | {"key": [f"cc3m:{run_id}"]}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(row), sink)
    with FileSystems.create(join_path(aside, name)) as handle:
        handle.write(sink.getvalue().to_pybytes())
    write_json(
        join_path(aside, liveness_history.ASIDE_MARKER), {"night": night.isoformat(), "rows": 1, "files": [name]}
    )
    return [join_path(aside, name)]


@pytest.mark.parametrize("where", ["local", "gs"])
def test_two_runs_publishing_one_night_at_once_never_both_exit_0_on_a_damaged_night(where, tmp_path, request):
    # why: two runs of one night on one --history (a scheduler's retry while the first job still
    # runs: a Flex Template launcher holds no lease while its job publishes; a run by hand with its
    # own --output) publish at once. Run A, switching its marker while B's files were moved in but
    # B's marker not yet, removed B's files as "unlisted"; B's marker then listed files gone: both
    # exit 0, and every later night refused the damaged night (exit 2) until it was run again.
    history = local_or_gs(where, tmp_path, request, "two-runs-one-night", "history")
    night = datetime.date(2030, 3, 1)
    files = {run: night_written_aside(history, night, run) for run in ("runa", "runb")}
    publish_file = liveness_history.publish_file
    outcome = {}

    def interleaved(source, target):
        if source.endswith(f"_tmp-runb/{liveness_history.ASIDE_MARKER}") and "runa" not in outcome:
            # B's files are in place, its marker not yet: A publishes all of its night now
            try:
                outcome["runa"] = liveness_history.publish_night(history, night, "runa", files["runa"])
            except EnvironmentFailure as exc:
                outcome["runa"] = exc
        return publish_file(source, target)

    with mock.patch.object(liveness_history, "publish_file", side_effect=interleaved):
        try:
            outcome["runb"] = liveness_history.publish_night(history, night, "runb", files["runb"])
        except EnvironmentFailure as exc:
            outcome["runb"] = exc
    failed = [run for run, result in outcome.items() if isinstance(result, EnvironmentFailure)]
    listed, _columns = liveness_history.night_files(history, night)  # damaged: BadInput
    assert len(listed) == 1
    with FileSystems.open(listed[0]) as handle:
        assert pq.read_table(pa.BufferReader(handle.read())).num_rows == 1
    # the run whose night is not the one in place may say so (exit 1); at most one exits 0 on a night not its own
    assert len(failed) <= 1


def test_an_ingest_fetched_on_the_nights_own_date_is_not_a_night_before(tmp_path):
    # why: the ingest fetch stands in for the night before a key's first night, so a URL 404 at an
    # ingest and 404 again at a refresh of the same date (deploy/airflow: "02:00 UTC, after the
    # day's ingest runs") had its two 'gone' answers minutes apart: dead on its first night with
    # --dead-after 2, which promises two nights
    web = SampleWebServer(
        {"/gone.jpg": Reply(404, b"no", {"Content-Type": "text/plain"}), "/live.jpg": Reply(200, jpeg(1), JPEG)}
    ).start()
    try:
        manifest = tmp_path / "m.tsv"
        manifest.write_text(f"a\t{web.url('/gone.jpg')}\nb\t{web.url('/live.jpg')}\n")
        ingest.run(local_options(manifest=f"cc3m={manifest}", output=str(tmp_path / "out"), **NET))
        fetched = pq.read_table(tmp_path / "out" / "images").column("fetched_at")[0].as_py()
        ingest_date = fetched.astimezone(UTC).date()
        verdict = {}
        for night in (ingest_date, ingest_date + datetime.timedelta(days=1)):
            out = tmp_path / "refresh" / night.isoformat()
            refresh_job.run(
                local_options(
                    snapshot=str(tmp_path / "out"),
                    output=str(out),
                    history=str(tmp_path / "history"),
                    night=night.isoformat(),
                    **NET,
                )
            )
            rows = pq.read_table(out / "status").to_pylist()
            verdict[night] = {row["url"].rsplit("/", 1)[-1]: row["status"] for row in rows}
    finally:
        web.stop()
    assert verdict[ingest_date] == {"gone.jpg": "unreachable", "live.jpg": "alive"}  # one night: one 404
    assert verdict[ingest_date + datetime.timedelta(days=1)]["gone.jpg"] == "dead"  # the second night's 404


def test_a_killed_runs_files_moved_in_long_ago_are_retired_by_the_next_run_of_the_night(tmp_path):
    # why: a run killed during its move left files in the night beside its aside folder, which no
    # sweep removes where the launcher does not wait; sparing them as "publishing" kept them forever
    history, night = str(tmp_path / "history"), datetime.date(2030, 3, 1)
    killed = night_written_aside(history, night, "killed")
    directory = liveness_history.night_dir(history, night)
    moved = join_path(directory, "part-killed-00000-of-00001.parquet")
    FileSystems.rename([killed[0]], [moved])
    long_ago = time.time() - liveness_history.PUBLISHING_WITHIN_SECONDS - 60
    os.utime(
        join_path(liveness_history.night_aside(history, night, "killed"), liveness_history.ASIDE_MARKER),
        (long_ago, long_ago),
    )
    placed = liveness_history.publish_night(history, night, "rerun", night_written_aside(history, night, "rerun"))
    assert sorted(os.listdir(directory)) == sorted(["_COMPLETE", "_tmp-killed", *(file_name(p) for p in placed)])

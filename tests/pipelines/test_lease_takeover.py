"""A run whose lease on OUT was taken over (`--force-unlock` by an operator who thought it dead, a
gs:// lease that expired, `rm OUT/_LEASE`) publishes nothing: exit 1, one line, and OUT holds the
new holder's output alone (transforms/io/lease_guard.py; docs/integrity.md "One writer per OUT").

Before, it wrote on and published its table among the new holder's: both runs exited 0, and OUT
held both runs' rows under one run's summary.json (readers then refused it, or read the loser's).
"""

import json
import os
import threading
import time

import pytest
from apache_beam.io.filesystems import FileSystems

from pipelines import dedup, export, ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests import job_process
from tests.conftest import local_options, local_or_gs
from tests.table_readers import one_line, run_refresh
from transforms.io import lease as lease_module
from transforms.io.sinks import join_path, read_json
from transforms.io.table import list_table_files
from transforms.liveness import night_output

LOOPBACK = "127.0.0.1/32"
TAKEN_OVER = "was taken over by another run"
NOT_PUBLISHED = "this run's table is not published"

# An ingest under the tests' anonymous credentials (the GCS emulator's env comes from os.environ).
_INGEST = (
    "import sys\n"
    "from deploy.offline import anonymous_credentials\n"
    "from pipelines import ingest\n"
    "with anonymous_credentials():\n"
    "    sys.exit(ingest.main(sys.argv[1:]))\n"
)


def _gated(web, prefix, count, gate):
    """`count` pictures at /<prefix><n>.jpg, each answered once `gate` is set; their manifest text."""
    lines = []
    for n in range(count):
        seed = hash((prefix, n)) % 10_000

        def answer(method, headers, hits, seed=seed):
            gate.wait(timeout=180)
            return Reply(200, jpeg(seed), {"Content-Type": "image/jpeg"})

        web.routes[f"/{prefix}{n}.jpg"] = answer
        lines.append(f"{prefix} {n}\t{web.url(f'/{prefix}{n}.jpg')}\n")
    return "".join(lines)


def _start_ingest(manifest, out, *extra):
    command = ["--manifest", f"cc3m={manifest}", "--output", out, "--allow-network", LOOPBACK, "--no-progress"]
    return job_process.start("-c", _INGEST, *command, "--no-report", "--retries", "0", *extra)


def _wait_for_hit(web, path, process):
    deadline = time.monotonic() + 120
    while web.hits.get(path, 0) < 1:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} was never fetched"
        time.sleep(0.05)


def _finish(process):
    try:
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, [line for line in stderr.splitlines() if line.strip()]


def _rows_of(out):
    import pyarrow.parquet as pq  # noqa: PLC0415

    rows = []
    for path in list_table_files(out):
        with FileSystems.open(path) as handle:
            rows += pq.read_table(handle).to_pylist()
    return rows


@pytest.mark.parametrize("where", ["local", "gs"])
def test_an_ingest_taken_over_with_force_unlock_publishes_nothing_and_the_new_holder_writes_a_whole_table(
    web, tmp_path, request, where
):
    out = local_or_gs(where, tmp_path, request, "taken-over", "out")
    first_gate, second_gate = threading.Event(), threading.Event()
    (tmp_path / "a.tsv").write_text(_gated(web, "a", 3, first_gate))
    (tmp_path / "b.tsv").write_text(_gated(web, "b", 4, second_gate))
    first = _start_ingest(tmp_path / "a.tsv", out)
    second = None
    try:
        _wait_for_hit(web, "/a0.jpg", first)  # the first run holds OUT and fetches
        second = _start_ingest(tmp_path / "b.tsv", out, "--force-unlock")
        _wait_for_hit(web, "/b0.jpg", second)  # the second has taken OUT over and fetches
        first_gate.set()
        status, lines = _finish(first)
        assert status == 1, lines
        assert len(lines) == 1, lines
        assert f"ingest: {out} {TAKEN_OVER} (ingest, pid {second.pid}, host " in lines[0], lines
        assert NOT_PUBLISHED in lines[0]
        assert not list_table_files(out)  # nothing of the first run's table was published
        assert not FileSystems.exists(join_path(out, "summary.json"))
        second_gate.set()
        status, lines = _finish(second)
        assert status == 0, lines
    finally:
        first_gate.set()
        second_gate.set()
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    rows = _rows_of(out)
    assert len(rows) == 4 and all(row["caption"].startswith("b ") for row in rows)
    summary = read_json(join_path(out, "summary.json"))
    assert summary["books"]["rows_out"] == 4 and summary["books"]["balanced"]
    assert sorted(summary["table"]["files"]) == sorted(p.rsplit("/", 1)[-1] for p in list_table_files(out))
    assert not FileSystems.exists(lease_module.lease_path(out))


def test_an_ingest_whose_lease_is_removed_by_hand_publishes_nothing(web, tmp_path):
    gate = threading.Event()
    (tmp_path / "a.tsv").write_text(_gated(web, "a", 3, gate))
    out = str(tmp_path / "out")
    running = _start_ingest(tmp_path / "a.tsv", out)
    try:
        _wait_for_hit(web, "/a0.jpg", running)
        os.remove(os.path.join(out, lease_module.LEASE_NAME))  # rm OUT/_LEASE: any run may start now
        gate.set()
        status, lines = _finish(running)
    finally:
        gate.set()
    assert status == 1 and len(lines) == 1, lines
    assert f"ingest: {out} lost its lease while this run ran" in lines[0] and NOT_PUBLISHED in lines[0]
    assert not list_table_files(out) and not os.path.exists(os.path.join(out, "summary.json"))
    assert not [name for name in os.listdir(out) if name.startswith("_tmp-")]


# --- dedup, export, refresh: the lease changes hands while the run is under way ------------------


def _take_over(out):
    """OUT/_LEASE as a run with --force-unlock on another machine writes it."""
    holder = lease_module.Holder(token="other", pid=4242, host="host-b", job="dedup", started_at=time.time())
    with open(lease_module.lease_path(out), "wb") as handle:
        handle.write(holder.to_json())


def _taken_over_at(monkeypatch, module, name, out):
    """Makes `module.name` (a step that runs once the run's books are known) hand OUT's lease over first."""
    original = getattr(module, name)

    def taken_over(*args, **kwargs):
        _take_over(out)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, taken_over)


def _snapshot(directory):
    """{relative path: bytes} of every file under `directory` but its lease."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            if name != lease_module.LEASE_NAME:
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, directory)] = handle.read()
    return found


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """An ingest's OUT of 6 pictures served on loopback, once for the module: the tests below only
    read it (their jobs' --input or --snapshot). The web stays up: the refresh fetches its URLs."""
    # why module-scoped: three tests each ran this ingest (~4 s) for the same input
    tmp_path = tmp_path_factory.mktemp("ingested")
    with SampleWebServer() as web:
        lines = []
        for n in range(6):
            web.routes[f"/p{n}.jpg"] = Reply(200, jpeg(500 + n), {"Content-Type": "image/jpeg"})
            lines.append(f"p {n}\t{web.url(f'/p{n}.jpg')}\n")
        (tmp_path / "m.tsv").write_text("".join(lines))
        out = str(tmp_path / "out")
        args = local_options(
            manifest=f"cc3m={tmp_path / 'm.tsv'}", output=out, **{"allow-network": LOOPBACK, "no-progress": True}
        )
        assert ingest.main([*args, "--no-report"]) == 0
        yield out


def _assert_taken_over(capsys, job, output, before):
    line = one_line(capsys, job)
    assert f"{job}: {output} {TAKEN_OVER} (dedup, pid 4242, host host-b, started " in line, line
    assert NOT_PUBLISHED in line
    assert _snapshot(output) == before  # the earlier run's output, byte for byte, nothing of this one's


def test_a_dedup_taken_over_leaves_the_holders_table(ingested, tmp_path, capsys, monkeypatch):
    out3 = str(tmp_path / "out3")
    assert dedup.main(local_options(input=ingested, output=out3)) == 0
    before = _snapshot(out3)
    capsys.readouterr()
    # why dedup_books: it runs once this run's parts are in OUT3/images, before summary.json
    _taken_over_at(monkeypatch, dedup, "dedup_books", out3)
    assert dedup.main(local_options(input=ingested, output=out3, **{"force-unlock": True})) == 1
    _assert_taken_over(capsys, "dedup", out3, before)


def test_an_export_taken_over_leaves_the_holders_export(ingested, tmp_path, capsys, monkeypatch):
    exp = str(tmp_path / "exp")
    assert export.main(local_options(input=ingested, output=exp, format="webdataset")) == 0
    before = _snapshot(exp)
    capsys.readouterr()
    from transforms.export import export_books  # noqa: PLC0415

    _taken_over_at(monkeypatch, export_books, "check_books", exp)
    assert export.main(local_options(input=ingested, output=exp, format="hf-parquet", **{"force-unlock": True})) == 1
    _assert_taken_over(capsys, "export", exp, before)


def test_a_refresh_taken_over_leaves_the_holders_night(ingested, tmp_path, capsys, monkeypatch):
    fresh = str(tmp_path / "refresh")
    assert run_refresh([ingested], fresh) == 0
    before = _snapshot(fresh)
    capsys.readouterr()
    _taken_over_at(monkeypatch, night_output, "publish_output", fresh)
    assert run_refresh([ingested], fresh) == 1
    _assert_taken_over(capsys, "refresh", fresh, before)
    assert json.loads(before["summary.json"])["rows"] == 6

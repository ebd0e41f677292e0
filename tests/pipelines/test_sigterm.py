"""SIGTERM, the stop a scheduler sends (Airflow's task timeout and "mark failed", a Kubernetes
eviction, systemd, GNU timeout), ends a job as Ctrl-C does (docs/integrity.md, "One writer per
OUT"): one line on stderr, exit 143, OUT's lease released (also on gs://, where a lease left behind
refused every rerun from another machine for 15 minutes), no worker process left running, and the
same command run again at once completes with balanced books.

Before: no line, the process killed by the signal (status -15, the shell's 143), OUT/_LEASE left.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipelines.demo.sample_site import Reply, jpeg
from pipelines.launch import console
from tests import job_process
from tests.paths import REPO
from tests.pipelines.test_mishaps import LOOPBACK, _assert_whole, _cc3m_lines, _ingest, _serve
from transforms.io import lease as lease_module

NET = ["--allow-network", LOOPBACK]


def _sigterm_when(process, ready, seconds=120):
    """SIGTERM to `process` alone (as kill, Kubernetes and systemd send it) once `ready()`; returns
    (its stderr lines, its descendants at that moment)."""
    try:
        deadline = time.monotonic() + seconds
        while not ready():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the job never got to the moment"
            time.sleep(0.01)
        children = console.descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return stderr.strip().splitlines(), children


def _assert_stopped(process, lines, children, job):
    assert process.returncode == 143, lines
    (line,) = lines
    assert line.startswith(f"{job}: stopped (SIGTERM); "), line
    time.sleep(0.5)
    assert job_process.left_running(children) == [], "worker processes left running"


def test_sigterm_mid_ingest_is_one_line_exit_143_and_the_same_command_runs_at_once(web, tmp_path):
    urls = _serve(web, 4)
    web.routes["/slow.jpg"] = Reply(200, jpeg(81), {"Content-Type": "image/jpeg"}, delay=60)
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_cc3m_lines(urls + [web.url("/slow.jpg")]))
    out = str(tmp_path / "out")
    command = ["--manifest", f"cc3m={manifest}", "--output", out, *NET, "--no-progress", "--no-report"]
    process = job_process.start("-m", "pipelines.ingest", *command, "--timeout", "90")
    lines, children = _sigterm_when(process, lambda: web.hits.get("/slow.jpg", 0) >= 1)
    _assert_stopped(process, lines, children, "ingest")
    assert "rerun the same command" in lines[0]
    assert not os.path.exists(os.path.join(out, lease_module.LEASE_NAME)), "the lease was left behind"
    web.routes["/slow.jpg"] = Reply(200, jpeg(81), {"Content-Type": "image/jpeg"})
    assert _ingest(out, f"cc3m={manifest}") == 0
    _assert_whole(out, 5)


@pytest.fixture
def snapshot(web, tmp_path):
    """(the web, OUT of a 6-row ingest of it, /p5.jpg to be made slow by the refresh test)."""
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_cc3m_lines(_serve(web, 6)))
    out = str(tmp_path / "out")
    assert _ingest(out, f"cc3m={manifest}") == 0
    return out


@pytest.mark.parametrize("job", ["export", "dedup", "refresh"])
def test_sigterm_of_a_reading_job_releases_its_lease_and_the_rerun_completes(job, web, snapshot, tmp_path):
    target = str(tmp_path / job)
    args = {
        "export": ["--input", snapshot, "--output", target, "--format", "webdataset"],
        "dedup": ["--input", snapshot, "--output", target],
        "refresh": ["--snapshot", snapshot, "--output", target, *NET],
    }[job]
    lease = os.path.join(target, lease_module.LEASE_NAME)
    ready = lambda: os.path.exists(lease)  # noqa: E731  (the job holds its output and runs)
    if job == "refresh":  # mid-run: while it checks a URL that hangs
        web.routes["/p5.jpg"] = Reply(200, jpeg(5), {"Content-Type": "image/jpeg"}, delay=60)
        web.hits.clear()
        ready = lambda: web.hits.get("/p5.jpg", 0) >= 1  # noqa: E731
    process = job_process.start("-m", f"pipelines.{job}", *args)
    lines, children = _sigterm_when(process, ready)
    _assert_stopped(process, lines, children, job)
    assert not os.path.exists(lease), "the lease was left behind"
    web.routes["/p5.jpg"] = Reply(200, jpeg(5), {"Content-Type": "image/jpeg"})
    rerun = job_process.job(job, *args)
    assert rerun.returncode == 0, rerun.stderr
    with open(os.path.join(target, "summary.json"), encoding="utf-8") as handle:
        books = json.load(handle).get("books", {"balanced": True})
    assert books["balanced"], books
    assert not [name for name in os.listdir(target) if name.startswith("_tmp-") or name == "_LEASE"]


_EXPORT_WITH_EMULATOR = (
    "import sys\n"
    "from deploy.offline import anonymous_credentials\n"
    "from pipelines import export\n"
    "with anonymous_credentials():\n"
    "    sys.exit(export.main(sys.argv[1:]))\n"
)


def test_sigterm_releases_the_lease_of_a_gs_output(snapshot, gcs_emulator):
    # Before: exit -15, no line, gs://.../_LEASE left with 899 s to its expiry: a retry from another
    # machine (another Airflow worker, a pod rescheduled on another node) was refused, exit 2, for
    # those 15 minutes.
    gcs_emulator.bucket("sigterm-lease")
    bucket = gcs_emulator.client().bucket("sigterm-lease")
    args = ["--input", snapshot, "--output", "gs://sigterm-lease/exp", "--format", "webdataset"]
    process = job_process.start("-c", _EXPORT_WITH_EMULATOR, *args)
    lines, children = _sigterm_when(process, lambda: bucket.get_blob("exp/_LEASE") is not None)
    _assert_stopped(process, lines, children, "export")
    assert bucket.get_blob("exp/_LEASE") is None, "the lease was left behind"
    rerun = job_process.start("-c", _EXPORT_WITH_EMULATOR, *args)
    _, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, stderr
    assert bucket.get_blob("exp/summary.json") is not None and bucket.get_blob("exp/_LEASE") is None


def test_a_second_sigterm_does_not_cut_the_cleanup_short(tmp_path):
    # A scheduler may send SIGTERM again (or SIGTERM then Ctrl-C): the first one's clean-up (the
    # lease's release) still runs to its end, and one line only is printed.
    done = tmp_path / "released"
    script = (
        "import os, signal, threading, time\n"
        "from pipelines.launch import console\n"
        "def release():\n"
        "    time.sleep(0.6)\n"
        f"    open({str(done)!r}, 'w').close()\n"
        "with console.stop_on_interrupt('job: interrupted', 'job: stopped (SIGTERM)'):\n"
        "    with console.cleanup_on_interrupt(release):\n"
        "        for delay in (0.2, 0.4):\n"
        "            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
        "        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(60)\n"
    )
    finished = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True
    )
    assert (finished.returncode, finished.stderr) == (143, "job: stopped (SIGTERM)\n")
    assert done.exists(), "the clean-up was cut short"

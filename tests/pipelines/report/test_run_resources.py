"""OUT/summary.json "resources": what a local run cost, checked against the operating system's own
account of the job's process tree."""

import json
import os
import resource
import subprocess
import sys
import time

from pipelines.report import run_resources
from tests.paths import REPO
from tests.pipelines.test_ingest_e2e import check_demo_command_output

_BURN = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def _burn_here(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_own_and_worker_cpu_are_counted_apart():
    start = run_resources.ResourceClock.now()
    _burn_here(0.3)
    subprocess.run([sys.executable, "-c", _BURN.format(s=0.4)], check=True)  # waited for: a worker
    section = run_resources.resources_section(start, {"rows": 200, "status_totals": {"ok": 50, "dead": 150}})
    assert 0.3 <= section["job_process_cpu_seconds"] < 2.0
    assert 0.4 <= section["worker_processes_cpu_seconds"] < 2.0
    cpu = section["cpu_seconds"]
    assert abs(cpu - section["job_process_cpu_seconds"] - section["worker_processes_cpu_seconds"]) < 0.002
    assert section["cpu_ms_per_row"] == round(1000 * cpu / 200, 3)
    assert section["cpu_ms_per_ok_row"] == round(1000 * cpu / 50, 3)
    assert section["wall_seconds"] >= 0.7 * 0.9  # CPU burnt one process after the other, wall >= ~0.7 s
    assert section["job_process_peak_rss_mib"] > 10


def test_no_per_row_figures_without_rows():
    section = run_resources.resources_section(run_resources.ResourceClock.now(), {"rows": 0})
    assert "cpu_ms_per_row" not in section and "cpu_ms_per_ok_row" not in section
    assert run_resources.cost_line({}) is None


def test_an_ingest_records_its_cost_and_the_os_agrees(tmp_path):
    """The demo ingest as a user runs it; the OS's rusage of the whole tree (the job process and
    the hash workers it waited for) bounds what the job says it used."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("BEAM_IMAGES_DEBUG", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.ingest", "--demo", "--output", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    wall = time.monotonic() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr
    check_demo_command_output(proc, out)  # the demo's own checks: the suite's one demo run
    # The job process and every process it waited for, as the kernel booked them.
    tree = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    summary = json.loads((out / "summary.json").read_text())
    section = summary["resources"]
    # The hash workers are counted: they were waited for before the reading.
    assert section["worker_processes_cpu_seconds"] > 0.2, section
    assert section["job_process_cpu_seconds"] > 0.5, section
    assert section["wall_seconds"] <= wall
    assert section["cpu_ms_per_row"] == round(1000 * section["cpu_seconds"] / summary["rows"], 3)
    ok = summary["status_totals"]["ok"]
    assert section["cpu_ms_per_ok_row"] == round(1000 * section["cpu_seconds"] / ok, 3)
    assert f"cost:    {section['cpu_seconds']:.1f} CPU s" in proc.stdout
    assert section["cpu_seconds"] <= tree + 0.05
    assert section["cpu_seconds"] >= 0.25 * tree  # more than a sliver of the run, less than all of it
    # The export of that table counts its cost by the rows it read.
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.export",
            "--input",
            str(out),
            "--output",
            str(tmp_path / "exp"),
            "--format",
            "webdataset",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert exported.returncode == 0, exported.stderr
    export_summary = json.loads((tmp_path / "exp" / "summary.json").read_text())
    cost = export_summary["resources"]
    assert cost["cpu_ms_per_row"] == round(1000 * cost["cpu_seconds"] / export_summary["rows_read"], 3)
    assert f"cost:    {cost['cpu_seconds']:.1f} CPU s" in exported.stdout

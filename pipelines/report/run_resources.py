"""What a local run cost: CPU seconds of the job's processes, peak memory, per row and per image.

Merged into OUT/summary.json as "resources" after a finished local run (`JobRunner.execute`), so
a researcher's slice of a manifest tells what the whole manifest will cost: on Dataflow the bill
is vCPU-hours, and `cpu_ms_per_row` x 0.278 is the vCPU-hours a million rows take on this machine
(in a run of a few thousand rows or more: the graph and the workers' start-up, a few CPU seconds
a run whatever its size, are in the figure). The job's own process and the worker processes it
waited for (the hash workers, a multi-process runner's workers) are counted apart and together;
what ran before `execute` (the interpreter's imports, the option and input checks: a few seconds
whatever the size) is not, nor is the HTML report after it. A Dataflow job's driver does none of
the work, so its summary gets no "resources" (the console's job metrics have the vCPU time).

Public: `ResourceClock` (a reading, taken when a job starts), `resources_section` (the figures
since a reading), `record_run_resources` (the section merged into OUT/summary.json), `cost_line`
(the section as one line for a job's closing summary).
"""

from __future__ import annotations

import dataclasses
import resource
import time
from typing import Any

from transforms import schema
from transforms.io.sinks import join_path, read_json, write_json

__all__ = ["SECTION", "ResourceClock", "resources_section", "record_run_resources", "cost_line"]

SECTION = "resources"


@dataclasses.dataclass(frozen=True)
class ResourceClock:
    """CPU seconds used so far by this process and by the child processes it has waited for."""

    wall: float
    job_cpu: float
    worker_cpu: float

    @classmethod
    def now(cls) -> ResourceClock:
        """A reading of the clocks now."""
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(time.monotonic(), own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime)


def resources_section(start: ResourceClock, summary: dict[str, Any]) -> dict[str, Any]:
    """The cost of the run since `start`, with per-row figures from the job's summary.

    Args:
        start: the reading taken when the job started.
        summary: the job's summary.json content ("rows", or the export's "rows_read", and
            "status_totals" are used when present).
    Returns:
        {"cpu_seconds", "job_process_cpu_seconds", "worker_processes_cpu_seconds",
        "wall_seconds", "job_process_peak_rss_mib", and, when the summary counts rows,
        "cpu_ms_per_row", and when it counts ok rows (fetched images, for the ingest),
        "cpu_ms_per_ok_row"}.
    """
    end = ResourceClock.now()
    job = end.job_cpu - start.job_cpu
    workers = end.worker_cpu - start.worker_cpu
    cpu = round(job + workers, 3)  # the per-row figures follow from the figure written
    section: dict[str, Any] = {
        "cpu_seconds": cpu,
        "job_process_cpu_seconds": round(job, 3),
        "worker_processes_cpu_seconds": round(workers, 3),
        "wall_seconds": round(end.wall - start.wall, 3),
        # ru_maxrss (KiB on Linux): the job process's high-water mark over its life. The children's
        # is left out: a child forked from a large parent reports the parent's size until its exec.
        "job_process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    rows = summary.get("rows", summary.get("rows_read"))  # the export counts the rows it read
    if isinstance(rows, int) and rows > 0:
        section["cpu_ms_per_row"] = round(1000 * cpu / rows, 3)
    ok = (summary.get("status_totals") or {}).get(schema.OK)
    if isinstance(ok, int) and ok > 0:
        section["cpu_ms_per_ok_row"] = round(1000 * cpu / ok, 3)
    return section


def record_run_resources(start: ResourceClock, out: str) -> dict[str, Any]:
    """Adds the run's `resources_section` to OUT/summary.json (local or gs://). Returns the summary."""
    path = join_path(out, "summary.json")
    summary = read_json(path)
    summary[SECTION] = resources_section(start, summary)
    write_json(path, summary)
    return summary


def cost_line(summary: dict[str, Any]) -> str | None:
    """The "resources" section of a summary as one line, or None when the run recorded none."""
    section = summary.get(SECTION)
    if not section:
        return None
    line = f"{section['cpu_seconds']:.1f} CPU s ({section['worker_processes_cpu_seconds']:.1f} in worker processes)"
    if "cpu_ms_per_row" in section:
        line += f", {section['cpu_ms_per_row']:.2f} ms a row"
    return line

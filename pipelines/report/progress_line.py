"""The live progress line of local runs: rows done / total, rows/s, ok %, bytes, ETA.

On the local runners `pipeline.run()` blocks until the end and the DoFns may run in worker
subprocesses, so the driver cannot poll Beam metrics. Instead `transforms.record_progress.RecordProgress`
writes each DoFn instance's cumulative tallies to a directory, and `LiveProgress` (a driver thread
started before `pipeline.run()`) sums those files every second and prints one line to stderr:
rewritten in place with \\r on a terminal, a plain line every `plain_interval` seconds otherwise
(logs, CI), and a final line when the run ends.

The total is the manifests' record count, counted in the background from local files (lines; CSV
with a header one less, approximate when quoted fields span lines). For gs:// manifests and
record formats that are not line-based it is unknown, and the line shows no ETA.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from typing import IO, Any

from transforms.io.readers import open_stream

__all__ = [
    "LINE_KINDS",
    "RATE_WINDOW",
    "count_file_lines",
    "count_manifest_rows",
    "aggregate",
    "human_bytes",
    "human_duration",
    "format_line",
    "RateMeter",
    "LiveProgress",
]

# Manifest kinds whose records are lines, and how many header lines each file has.
LINE_KINDS = {"cc3m": 0, "cc12m": 0, "openimages": 1}
RATE_WINDOW = 15.0  # seconds of history behind rows/s and the ETA


def count_file_lines(path: str) -> int:
    """Newline count of a local file (.gz read transparently); a last line without one counts."""
    lines, last = 0, b"\n"
    with open_stream(path) as handle:
        while True:
            chunk = handle.read(1 << 20)
            if not chunk:
                break
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def count_manifest_rows(manifests: Iterable[tuple[str, str]]) -> int | None:
    """[(kind, path or glob)] -> approximate record total, or None when any part cannot be counted
    cheaply (gs://, formats that are not line-based)."""
    total = 0
    for kind, pattern in manifests:
        if kind not in LINE_KINDS or "://" in pattern:
            return None
        paths = sorted(glob.glob(pattern))
        if not paths:
            return None
        for path in paths:
            total += max(count_file_lines(path) - LINE_KINDS[kind], 0)
    return total


def aggregate(directory: str) -> dict[str, Any]:
    """Sum the tally files of every DoFn instance: {rows, bytes, statuses, workers}."""
    totals: dict[str, Any] = {"rows": 0, "bytes": 0, "statuses": {}, "workers": 0}
    for path in glob.glob(os.path.join(directory, "*.json")):
        try:
            with open(path, encoding="utf-8") as handle:
                tally = json.load(handle)
        except (OSError, ValueError):
            continue  # vanished or (never, thanks to the rename) half-written
        totals["workers"] += 1
        totals["rows"] += int(tally.get("rows", 0))
        totals["bytes"] += int(tally.get("bytes", 0))
        for status, count in (tally.get("statuses") or {}).items():
            totals["statuses"][status] = totals["statuses"].get(status, 0) + int(count)
    return totals


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def human_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_line(
    totals: dict[str, Any], total_rows: int | None, elapsed: float, rate: float, final: bool = False
) -> str:
    """One progress line from aggregated tallies."""
    done = totals["rows"]
    ok = totals["statuses"].get("ok", 0)
    ok_text = f"ok {100.0 * ok / done:.1f}%" if done else "ok -"
    size = human_bytes(totals["bytes"])
    if final:
        average = done / elapsed if elapsed > 0 else 0.0
        return f"progress: done, {done:,} rows in {human_duration(elapsed)} ({average:,.1f} rows/s), {ok_text}, {size}"
    if total_rows:
        head = f"{done:,}/{total_rows:,} rows ({min(100.0, 100.0 * done / total_rows):.1f}%)"
    else:
        head = f"{done:,} rows"
    if total_rows and done >= total_rows:
        # The rows are all settled; what is left is the shuffle-heavy tail (dedup, Parquet, summary).
        eta = "all rows fetched, writing outputs"
    elif total_rows and rate > 0:
        eta = f"ETA {human_duration((total_rows - done) / rate)}"
    else:
        eta = "ETA -"
    # Most useful first: a narrow terminal cuts the end of the line.
    return "  ".join(
        [f"progress: {head}", f"{rate:,.1f} rows/s", ok_text, eta, size, f"elapsed {human_duration(elapsed)}"]
    )


class RateMeter:
    """rows/s over the last `window` seconds (the whole run until the window fills)."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self._window = window
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, now: float, done: int) -> float:
        """Records `done` rows at time `now`; returns the rate over the window."""
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        first_time, first_done = self._samples[0]
        span = now - first_time
        return (done - first_done) / span if span > 0 else 0.0


class LiveProgress:
    """Context manager around a local run: a temporary tally directory and, from `start()`, a thread
    printing the line. Give `directory` to the pipeline's RecordProgress stage (None when disabled);
    call `start()` just before `pipeline.run()`, so a run that fails while building prints nothing.
    """

    def __init__(
        self,
        manifests: Iterable[tuple[str, str]] = (),
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval: float = 1.0,
        plain_interval: float = 10.0,
        total_rows: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.directory: str | None = None
        self._manifests = list(manifests)
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = min(interval, plain_interval)
        self._plain_interval = plain_interval
        self._total = total_rows
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_width = 0
        self._rate = RateMeter()
        self._started: float | None = None

    def __enter__(self):
        if self.enabled:
            self.directory = tempfile.mkdtemp(prefix="ingest-progress-")
        return self

    def start(self):
        if not self.enabled or self._started is not None:
            return self
        self._started = time.monotonic()
        if self._total is None and self._manifests:
            self._threads.append(threading.Thread(target=self._count_total, name="progress-total", daemon=True))
        self._threads.append(threading.Thread(target=self._loop, name="progress", daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.enabled:
            return False
        if self._started is None:
            shutil.rmtree(self.directory, ignore_errors=True)
            return False
        self._stop.set()
        for thread in self._threads:
            if thread.name == "progress":
                thread.join(timeout=5)
        totals = aggregate(self.directory)
        elapsed = time.monotonic() - self._started
        if exc_type is None:
            self._emit(format_line(totals, self._total, elapsed, 0.0, final=True), final=True)
        else:
            self._emit(f"progress: stopped after {totals['rows']:,} rows ({human_duration(elapsed)})", final=True)
        shutil.rmtree(self.directory, ignore_errors=True)
        return False

    def _count_total(self):
        try:
            self._total = count_manifest_rows(self._manifests)
        except Exception:  # a progress nicety must never break a run
            self._total = None

    def _loop(self):
        last_plain = time.monotonic()
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            totals = aggregate(self.directory)
            rate = self._rate.update(now, totals["rows"])
            line = format_line(totals, self._total, now - self._started, rate)
            if self._tty:
                self._emit(line)
            elif now - last_plain >= self._plain_interval - 1e-3:
                last_plain = now
                self._emit(line)

    def _emit(self, line, final=False):
        try:
            if self._tty:
                # A line longer than the terminal wraps, and \r would then rewrite only its last part.
                line = line[: max(shutil.get_terminal_size((160, 24)).columns - 1, 20)]
                pad = " " * max(self._last_width - len(line), 0)
                self._stream.write("\r" + line + pad + ("\n" if final else ""))
                self._last_width = 0 if final else len(line)
            else:
                self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not stop the run

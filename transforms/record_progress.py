"""Per-row run metrics, and the tallies a local driver reads to print a live progress line.

`RecordProgress` is a pass-through stage placed right after fetch and verify. It is fused with them,
so it sees each row the moment its status is settled. It always counts Beam metrics (final status
per dataset, bytes and latency per status); given a directory (local runs only) it also writes the
DoFn instance's cumulative tallies to DIR/<pid>-<id>.json about once a second, because the driver
of a local run cannot query metrics until `pipeline.run()` returns, and in multi-processing mode the
DoFns live in worker subprocesses.

Public transform: `RecordProgress(progress_dir)`: rows (`schema.Row`) -> the same rows, counted
(`RecordProgressDoFn` under it; `ProgressTally` is what it writes).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable

import apache_beam as beam

__all__ = [
    "ROWS_NAMESPACE",
    "DATASET_NAMESPACE",
    "BYTES_NAMESPACE",
    "LATENCY_NAMESPACE",
    "SIZE_NAMESPACE",
    "ProgressTally",
    "RecordProgressDoFn",
    "RecordProgress",
]

ROWS_NAMESPACE = "rows"  # rows/<status>: final status of every row
DATASET_NAMESPACE = "rows_by_dataset"  # rows_by_dataset/<dataset>.<status>
BYTES_NAMESPACE = "bytes"  # bytes/<status>: body bytes of rows that had a body
LATENCY_NAMESPACE = "latency_ms"  # latency_ms/<status>: distribution of fetch wall time
SIZE_NAMESPACE = "size_bytes"  # size_bytes/<status>: distribution of body sizes


class ProgressTally:
    """Cumulative counts of one DoFn instance, flushed atomically to one JSON file.

    Retried bundles count again: this is a progress gauge, not an audit (summary.json is).
    """

    def __init__(self, directory: str, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:12]}.json")
        self.rows = 0
        self.bytes = 0
        self.statuses: dict[str, int] = {}
        self._interval = interval
        self._clock = clock
        self._next_flush = clock() + interval

    def add(self, status: str, size: int = 0) -> None:
        self.rows += 1
        self.bytes += size or 0
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if self._clock() >= self._next_flush:
            self.flush()

    def snapshot(self) -> dict:
        return {"rows": self.rows, "bytes": self.bytes, "statuses": dict(self.statuses), "updated": time.time()}

    def flush(self) -> None:
        """Write aside then rename, so the reader never sees half a file. Never raises: the driver may
        already have removed the directory at the end of the run."""
        self._next_flush = self._clock() + self._interval
        temporary = f"{self.path}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump(self.snapshot(), handle)
            os.replace(temporary, self.path)
        except OSError:
            pass


class RecordProgressDoFn(beam.DoFn):
    """Rows in, the same rows out; counts Beam metrics and feeds a ProgressTally when given a directory."""

    def __init__(self, progress_dir: str | None = None, interval: float = 1.0) -> None:
        self._progress_dir = progress_dir
        self._interval = interval

    def setup(self):
        self._tally = ProgressTally(self._progress_dir, self._interval) if self._progress_dir else None
        self._counters = {}
        self._distributions = {}

    def _counter(self, namespace, name):
        counter = self._counters.get((namespace, name))
        if counter is None:
            counter = self._counters[(namespace, name)] = beam.metrics.Metrics.counter(namespace, name)
        return counter

    def _distribution(self, namespace, name):
        dist = self._distributions.get((namespace, name))
        if dist is None:
            dist = self._distributions[(namespace, name)] = beam.metrics.Metrics.distribution(namespace, name)
        return dist

    def process(self, row):
        status = row.get("status") or "unknown"
        size = row.get("size_bytes") or 0
        self._counter(ROWS_NAMESPACE, status).inc()
        self._counter(DATASET_NAMESPACE, f"{row.get('dataset')}.{status}").inc()
        if row.get("size_bytes") is not None:
            self._counter(BYTES_NAMESPACE, status).inc(size)
            self._distribution(SIZE_NAMESPACE, status).update(size)
        if row.get("fetch_ms") is not None:
            self._distribution(LATENCY_NAMESPACE, status).update(int(row["fetch_ms"]))
        if self._tally is not None:
            self._tally.add(status, size)
        yield row

    def finish_bundle(self):
        if self._tally is not None:
            self._tally.flush()

    def teardown(self):
        tally = getattr(self, "_tally", None)
        if tally is not None:
            tally.flush()


class RecordProgress(beam.PTransform):
    """Rows in, the same rows out; counts metrics and (with `progress_dir`) writes live tallies."""

    def __init__(self, progress_dir: str | None = None, interval: float = 1.0) -> None:
        super().__init__()
        self._progress_dir = progress_dir
        self._interval = interval

    def expand(self, rows):
        return rows | "Count" >> beam.ParDo(RecordProgressDoFn(self._progress_dir, self._interval))

"""The decode-and-hash stage: fetched rows in, rows out with their content columns and status.

Public transform: `HashImages(max_pixels, draft, views, processes)`: fetched rows (`schema.Row` with
`_body`) -> the same rows with sha256, md5, pHash, dHash (and those of each view), size, format
and their final status. `HashDoFn` under it hands each body to `transforms.hash_workers` (worker
processes) or, with processes=0, to a thread pool; the checks themselves are
`transforms.image_checks.verify_and_hash`.
"""

from __future__ import annotations

import concurrent.futures
import os

import apache_beam as beam
from apache_beam.utils import shared

from transforms import schema
from transforms.bounded_futures import BoundedFuturesDoFn
from transforms.hash_workers import HashWorkers
from transforms.image_checks import DEFAULT_MAX_PIXELS, DEFAULT_VIEWS, verify_and_hash

__all__ = ["HashDoFn", "HashImages", "default_processes"]


def default_processes() -> int:
    """How many hash worker processes a HashDoFn starts when it is not told: one per core.

    Returns:
        os.cpu_count(), or 2 when it is unknown.
    """
    # why a function: the test suite runs two pytest workers on two cores and replaces it with 1
    # (tests/conftest.py): each worker process costs ~0.6 CPU s to start, every ingest paid two
    return os.cpu_count() or 2


class HashDoFn(BoundedFuturesDoFn):
    """Verifies and hashes fetched bodies in worker processes (transforms.hash_workers), or with
    `processes=0` on a thread pool of this process.

    All DoFn instances of a Beam worker process share one pool of `processes` workers (one per
    core by default): a pool per instance would start a set of processes per runner thread.
    """

    def __init__(
        self,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = True,
        processes: int | None = None,
        views: tuple = DEFAULT_VIEWS,
    ) -> None:
        super().__init__(max_pending=64)
        self._max_pixels = max_pixels
        self._draft = draft
        self._processes = default_processes() if processes is None else processes
        self._views = tuple(views)
        self._shared = shared.Shared()

    def setup(self):
        self._outcomes = {s: beam.metrics.Metrics.counter("verify", s) for s in schema.STATUSES}
        self._threads = self._workers = None
        if self._processes > 0:
            settings = (self._processes, self._max_pixels, self._draft, self._views)
            self._workers = self._shared.acquire(lambda: HashWorkers(*settings))
        else:
            # Threads: Pillow and hashlib release the GIL in their C calls, but the Python between
            # them waits for it behind the runner (docs/performance.md): the slower way, kept for
            # hosts where a job may not start processes.
            self._threads = concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="hash")

    def process(self, row):
        if row.get("status") != schema.OK or row.get("_body") is None:
            yield row  # nothing fetched: nothing to verify
            return
        if self._workers is not None:
            future = self._workers.submit(row)
        else:
            future = self._threads.submit(verify_and_hash, dict(row), self._max_pixels, self._draft, self._views)
        yield from self._track(future, row)

    def _completed(self, row, columns):
        row.update(columns)
        self._outcomes[row["status"]].inc()
        if row["status"] != schema.OK:
            row["_body"] = None  # only images that pass every check are stored
        return row

    def teardown(self):
        if self._threads is not None:
            self._threads.shutdown(wait=False)
        self._workers = None  # the shared pool stops its workers once no instance holds it


class HashImages(beam.PTransform):
    """Fetched rows in; rows out with sha256, md5, pHash, dHash (and those of each of `views`),
    size, format and a final status.

    Args:
        max_pixels: larger images are decompression bombs (decode_error).
        draft: decode JPEGs at a reduced scale (>= 128 px), as the hashes need.
        views: picture views to hash (transforms.image_checks.VIEWS).
        processes: worker processes that decode and hash (None: one per core; 0: threads here).
    """

    def __init__(
        self,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = True,
        views: tuple = DEFAULT_VIEWS,
        processes: int | None = None,
    ) -> None:
        super().__init__()
        self._max_pixels = max_pixels
        self._draft = draft
        self._views = tuple(views)
        self._processes = processes

    def expand(self, rows):
        return rows | "VerifyAndHash" >> beam.ParDo(
            HashDoFn(self._max_pixels, self._draft, processes=self._processes, views=self._views)
        )

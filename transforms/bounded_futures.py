"""A DoFn base that keeps many futures in flight and emits outputs as they complete.

Shared by the stages that wait on something slow per element: the fetch
(`transforms.fetch.client.FetchDoFn`), the decode and hashes (`transforms.hashing.HashDoFn`) and the
refresh's checks (`transforms.liveness`).
"""

from __future__ import annotations

import queue

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

__all__ = ["BoundedFuturesDoFn"]


class BoundedFuturesDoFn(beam.DoFn):
    """Keeps many futures in flight and emits each element's output when its future completes.

    process() hands a future to `_track`; once `max_pending` wait, it blocks for the next to finish
    (the pool stays full, memory stays bounded); finish_bundle drains the rest. Finished futures
    arrive on a queue from their done-callbacks, so each element costs O(1), not a scan of every
    pending future. Subclasses say what a completed future becomes in `_completed(context, result)`.
    """

    def __init__(self, max_pending: int) -> None:
        self._max_pending = max_pending

    def start_bundle(self):
        self._pending = {}
        self._finished = queue.SimpleQueue()

    def _track(self, future, context):
        self._pending[future] = context
        future.add_done_callback(self._finished.put)
        if len(self._pending) >= self._max_pending:
            yield self._complete(self._finished.get())
        yield from self._drain(block=False)

    def finish_bundle(self):
        for output in self._drain(block=True):
            yield GlobalWindows.windowed_value(output)

    def _drain(self, block):
        while self._pending:
            try:
                future = self._finished.get(block=block)
            except queue.Empty:
                return
            yield self._complete(future)

    def _complete(self, future):
        return self._completed(self._pending.pop(future), future.result())

    def _completed(self, context, result):
        raise NotImplementedError

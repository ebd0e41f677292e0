"""Decode and hash fetched bodies in worker processes of their own.

Why processes: the decode and the hashes release the GIL only inside Pillow's and hashlib's C
calls, and every call in between needs it back. In the ingest's one Beam process the runner, the
fetcher's event loop and the blob writes hold the GIL most of the time, so hash threads queued
behind them and the process used ~1.3 of 2 cores (bench/README.md, "GIL"). A worker process owns
its GIL: the Beam process only ships each body over a pipe and gets back a few short strings.

- `HashWorkers(processes, max_pixels, draft, views)`: the pool; `submit(row)` returns a
  concurrent.futures.Future of the content columns `image_checks.verify_and_hash` sets.
- `python -m transforms.hash_workers`: one worker (`serve`), reading tasks on stdin, answering on
  stdout. It imports `transforms.image_checks` only, not Beam: it starts in ~0.5 CPU s.

A worker that dies (a decoder crash on a hostile file, an OOM kill) is replaced; each task it held
is tried once more on another worker, and a body that kills a worker twice becomes a
`decode_error` row naming the crash, so no row is lost and one bad file cannot stop a job. A
worker that ends before it is ready (each says so once its imports are done) is the environment,
not a file: then every body fails with an EnvironmentFailure (the job's exit 1), none is blamed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import importlib
import itertools
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
import weakref
from typing import Any, BinaryIO

from transforms import schema
from transforms.errors import EnvironmentFailure
from transforms.image_checks import content_digests, verify_and_hash

__all__ = ["HashWorkers", "CHECK_INPUTS", "serve"]

# The row fields verify_and_hash reads: only these cross the pipe, not the whole row.
CHECK_INPUTS = ("status", "_body", "expected_sha256", "expected_md5", "content_type")
_HEADER = struct.Struct(">Q")
# Tasks written ahead to one worker, into a pipe made big enough to hold them (bodies are ~50-250
# KB): the next bodies already wait in the pipe when a worker finishes one, so it never idles while
# the Beam process waits for the GIL to send it more.
_AHEAD = 4
_PIPE_BYTES = 1 << 20  # Linux's default cap for an unprivileged process (/proc/sys/fs/pipe-max-size)
_ATTEMPTS = 2  # a body that ends two workers is reported, not tried a third time
_READY = -1  # the number of a worker's first answer, sent once its imports are done


class _Task:
    __slots__ = ("number", "fields", "future", "attempts")

    def __init__(self, number: int, fields: dict, future: concurrent.futures.Future) -> None:
        self.number, self.fields, self.future, self.attempts = number, fields, future, 0


class HashWorkers:
    """A pool of `processes` worker processes running image_checks.verify_and_hash.

    Args:
        processes: how many workers (at least 1).
        max_pixels, draft, views: verify_and_hash's arguments, the same for every body.
    """

    def __init__(self, processes: int, max_pixels: int, draft: bool, views: tuple) -> None:
        self._settings = (max_pixels, draft, tuple(views))
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._numbers = itertools.count()
        self._closing = threading.Event()
        self._workers = [_Worker(self, i) for i in range(max(1, processes))]
        # Shared per process (HashDoFn): the workers stop when the last DoFn lets go of the pool.
        self._finalizer = weakref.finalize(self, _stop_all, self._closing, self._tasks, self._workers)

    def submit(self, row: schema.Row) -> concurrent.futures.Future:
        """The content columns of `row` (a fetched row with `_body`), computed by a worker.

        Args:
            row: the row; only CHECK_INPUTS are sent.
        Returns:
            A Future of {column: value}: what verify_and_hash sets (status and error included).
        """
        future: concurrent.futures.Future = concurrent.futures.Future()
        fields = {name: row.get(name) for name in CHECK_INPUTS}
        self._tasks.put(_Task(next(self._numbers), fields, future))
        return future

    def close(self) -> None:
        """Stops every worker; tasks not yet answered fail."""
        self._finalizer()


def _stop_all(closing, tasks, workers):
    closing.set()
    for _ in workers:
        tasks.put(None)  # wakes each feeder thread
    for worker in workers:
        worker.stop()


class _Worker:
    """One worker process and the two threads that feed it and read its answers."""

    def __init__(self, pool: HashWorkers, index: int) -> None:
        self._settings, self._tasks, self._closing = pool._settings, pool._tasks, pool._closing
        self._index = index
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(_AHEAD)
        self._held: dict[int, _Task] = {}  # written to the current process, not yet answered
        self._broken: Exception | None = None  # a worker could not start: every task fails with this
        self._process = self._start()
        self._feeder = threading.Thread(target=self._feed, name=f"hash-feed-{index}", daemon=True)
        self._feeder.start()

    def _start(self) -> subprocess.Popen:
        # Born with SIGINT blocked (a thread's signal mask is inherited across fork and exec): a
        # Ctrl-C that reaches the process group while a worker still imports would otherwise
        # print its KeyboardInterrupt; the Beam process answers Ctrl-C and ends the workers' input.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "transforms.hash_workers"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=_worker_environment(),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(AttributeError, OSError):
                assert stream is not None  # not Linux, or over the cap: the default
                fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        threading.Thread(target=self._read, args=(process,), name=f"hash-read-{self._index}", daemon=True).start()
        return process

    def _feed(self):
        while True:
            self._slots.acquire()
            task = self._tasks.get()
            if task is None or self._closing.is_set():
                if task is not None:
                    _fail(task, RuntimeError("hash workers stopped"))
                return
            if self._broken is not None:
                _fail(task, self._broken)
                self._slots.release()
                continue
            with self._lock:
                process = self._process
                self._held[task.number] = task
            try:
                _write_frame(process.stdin, (task.number, task.fields, *self._settings))
            except (BrokenPipeError, OSError, ValueError):
                pass  # the reader sees the process end and hands its tasks on

    def _read(self, process):
        stream = process.stdout
        ready = False
        while True:
            answer = _read_frame(stream)
            if answer is None:
                break
            number, ok, value = answer
            if number == _READY:
                ready = True
                continue
            with self._lock:
                task = self._held.pop(number, None)
            self._slots.release()
            if task is None:
                continue
            if ok:
                task.future.set_result(value)
            else:
                _fail(task, RuntimeError(value))
        self._ended(process, ready)

    def _ended(self, process, ready):
        """The process stopped answering: hand its tasks on (or report them) and start another.

        A process that ended before it was ready is the environment (an import that fails, no
        memory to start), not a body: nothing is retried or blamed on a file, every task fails."""
        status = process.wait()
        with self._lock:
            if process is not self._process:
                return
            orphans = list(self._held.values())
            self._held.clear()
            if not ready and not self._closing.is_set():
                self._broken = EnvironmentFailure(
                    f"a hash worker (python -m transforms.hash_workers) exited with status {status} before"
                    " it was ready; see its error above, or run with --hash-processes 0"
                )
            replace = not self._closing.is_set() and self._broken is None
            if replace:
                self._process = self._start()
        for _ in orphans:
            self._slots.release()
        for task in orphans:
            task.attempts += 1
            if self._broken is not None:
                _fail(task, self._broken)
            elif not replace:
                _fail(task, RuntimeError("hash workers stopped"))
            elif task.attempts < _ATTEMPTS:
                self._tasks.put(task)
            else:
                task.future.set_result(_crashed(task.fields, status))

    def stop(self):
        with self._lock:
            process = self._process
        with contextlib.suppress(OSError, ValueError):
            process.stdin.close()  # a worker exits at the end of its input
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()


def _fail(task, exc):
    if not task.future.done():
        task.future.set_exception(exc)


def _crashed(fields, status):
    """The content columns of a body whose decode ended two workers: its digests, a decode_error."""
    how = f"signal {-status}" if status < 0 else f"exit status {status}"
    row = {name: value for name, value in fields.items() if name != "_body"}
    row.update(content_digests(fields["_body"]))
    return schema.fail(row, schema.DECODE_ERROR, f"the image decoder crashed on this file (worker {how}, twice)")


def _worker_environment():
    """The Beam process's environment, with this checkout importable (tests run from a tree)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _read_frame(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)


def serve(tasks: BinaryIO, answers: BinaryIO) -> None:
    """A worker's loop: (number, fields, max_pixels, draft, views) in, (number, ok, columns) out,
    until its input ends.

    Args:
        tasks: the binary stream tasks arrive on (stdin).
        answers: the binary stream answers go to (stdout).
    """
    # why before READY: image_checks loads scipy at its first hash; a broken install must end the
    # worker before it is ready (the environment's failure), not fail the first body it is given
    importlib.import_module("scipy.fftpack")
    _write_frame(answers, (_READY, True, os.getpid()))
    while True:
        task = _read_frame(tasks)
        if task is None:
            return
        number, fields, max_pixels, draft, views = task
        answer: tuple[int, bool, Any]
        try:
            row = verify_and_hash(fields, max_pixels, draft, views)
            row.pop("_body", None)
            answer = (number, True, row)
        except Exception as exc:  # a bug, not a bad image: the Beam process fails the job with it
            answer = (number, False, f"{type(exc).__name__}: {exc}")
        _write_frame(answers, answer)


def _write_frame(stream: BinaryIO, value: Any) -> None:
    frame = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(frame)) + frame)
    stream.flush()


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the Beam process handles it and closes our input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:  # the Beam process is gone: nobody to answer, nothing to report
        os._exit(0)

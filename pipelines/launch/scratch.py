"""Local scratch directories of a run: made in TMPDIR, removed however the run ends.

- `scratch_directory(prefix)`: TMPDIR/<prefix><pid>-*, removed when the run is done, fails, is
  interrupted (Ctrl-C) or stopped (SIGTERM); and the ones a killed run left are swept by the
  next run of any job using the same prefix.
- `remove_stale(directory, prefix)`: that sweep.

A local run's on-disk shuffle (transforms.clustering.spill) lives in one: several GB at 10M rows,
which a failed run must not leave behind.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from pipelines.launch import console

__all__ = ["remove_stale", "scratch_directory"]


def remove_stale(directory: str, prefix: str) -> None:
    """Removes the scratch directories `prefix`<pid>-* in `directory` whose process no longer runs
    (a run killed past its own clean-up); others (no pid in the name, a live pid) are kept."""
    for path in glob.glob(os.path.join(directory, f"{prefix}*-*")):
        pid = os.path.basename(path)[len(prefix) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # alive under another user: not ours to judge
            pass


@contextlib.contextmanager
def scratch_directory(prefix: str) -> Iterator[str]:
    """A new TMPDIR/`prefix`<pid>-* directory, removed however the run ends: done, failed,
    Ctrl-C (whose handler ends the process at once, so it is removed first there) or SIGTERM.

    Args:
        prefix: the directory name's start, one per job ("dedup-spill-").
    Yields:
        The directory's path.
    """
    remove_stale(tempfile.gettempdir(), prefix)
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    handlers: dict[int, Any] = {}

    def remove_then(signum, frame):
        console.ignore_further_stops()  # why: a second SIGTERM must not cut the removal short
        shutil.rmtree(path, ignore_errors=True)
        console.pass_on(handlers[signum], signum, frame)

    # why: the interrupt handler (console.stop_on_interrupt) ends the process with os._exit,
    # past every finally: the directory goes first. Only the main thread can set handlers.
    if threading.current_thread() is threading.main_thread():
        for signum in console.STOP_SIGNALS:
            handlers[signum] = signal.signal(signum, remove_then)
    try:
        yield path
    finally:
        for number, previous in handlers.items():
            signal.signal(number, previous)
        shutil.rmtree(path, ignore_errors=True)

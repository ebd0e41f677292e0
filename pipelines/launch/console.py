"""How a job talks to the terminal: log records as one line each, no tracebacks from the local
runner's worker processes, and Ctrl-C as one line and exit 130, SIGTERM as one line and exit 143
(docs/ingest.md, "What can go wrong"). Used by `job_runner.Job.main`; `--debug` turns all of it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from pipelines.launch import failures

__all__ = [
    "STOP_SIGNALS",
    "cleanup_on_interrupt",
    "descendants",
    "ignore_further_stops",
    "pass_on",
    "quiet_errors",
    "quiet_local_logs",
    "stop_lines",
    "stop_on_interrupt",
]


def quiet_local_logs():
    """The local job service relays every worker warning (unparsed job options and the like)."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    # Why: Beam's text sink (OUT/duplicates/clusters-*-of-*.jsonl) warns on every rerun ("Deleting 1
    # existing files", "No shards found to finalize"): a second stderr line beside a failed run's one.
    logging.getLogger("apache_beam.io.filebasedsink").setLevel(logging.ERROR)


class _OneLineLogs(logging.Formatter):
    """Log records as one line each: no traceback, no multi-line message (without --debug)."""

    def format(self, record: logging.LogRecord) -> str:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return failures.one_line(super().format(record))


class _DropBeamErrors(logging.Filter):
    """Beam logs a failing bundle at ERROR with the worker's traceback as its text; the job reports
    the failure itself in one line, so those records are not repeated."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith("apache_beam"))


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the local runner's worker processes and theirs), from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children = [int(c) for c in handle.read().split()]
        except OSError:
            continue
        for child in children:
            found += [child] + descendants(child)
    return found


# Ctrl-C, and the stop a scheduler sends (Airflow's timeout, a pod's eviction, systemd, GNU timeout)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_further_stops() -> None:
    """From now on SIGINT and SIGTERM do nothing: the process is already on its way out, and a second
    signal (a scheduler's repeated SIGTERM, Ctrl-C pressed twice) must not cut its clean-up short nor
    print a second line. Only the main thread may call it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def pass_on(previous: object, signum: int, frame: object) -> None:
    """Hands a stop signal to the handler installed before: calls it, or does what the default does
    (KeyboardInterrupt for SIGINT, the default action for SIGTERM); nothing when it was ignored.

    Args:
        previous: what signal.signal returned when the current handler was installed.
        signum: the signal received.
        frame: the interrupted frame.
    """
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def stop_lines(job: str, advice: str) -> tuple[str, str]:
    """The lines stop_on_interrupt prints for a job: (Ctrl-C's, SIGTERM's).

    Args:
        job: the job's name ("ingest").
        advice: what OUT holds now and which command to run ("rerun the same command to start again").
    Returns:
        ("<job>: interrupted; <advice>", "<job>: stopped (SIGTERM); <advice>").
    """
    return f"{job}: interrupted; {advice}", f"{job}: stopped (SIGTERM); {advice}"


@contextlib.contextmanager
def stop_on_interrupt(line: str, stopped_line: str | None = None) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM stop the job at once: one line on stderr (`line` for Ctrl-C,
    `stopped_line` for SIGTERM, `line` again when None), the local runner's worker processes
    killed, exit status 130 (SIGINT) or 143 (SIGTERM). The runner's threads (fetch loop, thread
    pools, gRPC) would otherwise keep the process alive and print their tracebacks; OUT stays as
    two-phase writes leave it (the last finished table in place, this run's temporary files to be
    cleared by the next run). Handlers installed later (cleanup_on_interrupt, the scratch directory)
    do their clean-up first and then call this one. Only the main thread can install a handler;
    elsewhere this does nothing.

    Args:
        line: the line printed on Ctrl-C ("<job>: interrupted; ...").
        stopped_line: the line printed on SIGTERM ("<job>: stopped (SIGTERM); ...").
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    lines = {signal.SIGINT: line, signal.SIGTERM: stopped_line or line}
    statuses = {signal.SIGINT: failures.INTERRUPTED, signal.SIGTERM: failures.STOPPED}

    def stop(signum, _frame):
        ignore_further_stops()
        try:
            sys.stdout.flush()
            fd = sys.stderr.fileno()  # the terminal, also while quiet_errors keeps fd 2 from workers
        except Exception:  # noqa: BLE001 (exiting anyway)
            fd = 2
        os.write(fd, (lines[signum] + "\n").encode())
        # why: a SIGTERM reaches this process alone (kill, Kubernetes, systemd), not its group as
        # Ctrl-C does: the runner's workers and the ingest's hash workers end here, not later
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        os._exit(statuses[signum])

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def cleanup_on_interrupt(
    cleanup: Callable[[], object], seconds: float = 1.5, stopped_seconds: float = 10.0
) -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM runs `cleanup` first, for at most `seconds` (`stopped_seconds`
    for SIGTERM: a scheduler's stop comes with a grace period, 30 s in Kubernetes, and a gs:// lease
    left behind refuses its retry for 15 minutes; a person at Ctrl-C wants the prompt), then the handler
    installed before (stop_on_interrupt's, which ends the process with os._exit, past every finally
    block). Further stop signals meanwhile are ignored: a second SIGTERM does not cut `cleanup` short.

    `cleanup` runs in a daemon thread, so a storage call that hangs (or a lock the interrupted main
    thread holds) cannot hold up the exit past `seconds`; its errors are ignored: it is best effort,
    and what it leaves the next run clears. Only the main thread can install a handler; elsewhere
    this does nothing.

    Args:
        cleanup: what to do before the process ends (release OUT's lease).
        seconds: how long the exit waits for it at most after Ctrl-C.
        stopped_seconds: the same after SIGTERM.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def quietly():
        with contextlib.suppress(Exception):
            cleanup()

    def cleanup_then(signum, frame):
        ignore_further_stops()
        worker = threading.Thread(target=quietly, name="interrupt-cleanup", daemon=True)
        worker.start()
        worker.join(stopped_seconds if signum == signal.SIGTERM else seconds)
        pass_on(previous[signum], signum, frame)

    previous = {signum: signal.signal(signum, cleanup_then) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def quiet_errors() -> Iterator[None]:
    """Without --debug: log records one line each (Beam's failing-bundle records dropped), Python
    warnings through the log, and exceptions in threads or at interpreter exit not printed (the job
    prints its own one line). The local runner's worker processes inherit file descriptor 2 and print
    a failing bundle's traceback there: fd 2 goes to /dev/null while sys.stderr (this process's
    lines) keeps writing to the real stderr; not done when sys.stderr is not fd 2 (captured)."""
    with _workers_stderr_to_devnull():
        with _one_line_logs():
            yield


@contextlib.contextmanager
def _workers_stderr_to_devnull() -> Iterator[None]:
    try:
        redirect = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a captured or replaced stream
        redirect = False
    if not redirect:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    previous = sys.stderr
    sys.stderr = open(saved, "w", buffering=1, encoding=previous.encoding, errors="backslashreplace", closefd=False)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = previous
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def _one_line_logs() -> Iterator[None]:
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineLogs("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_DropBeamErrors())
    saved = (root.handlers[:], sys.unraisablehook, threading.excepthook)
    root.handlers[:] = [handler]
    logging.captureWarnings(True)
    sys.unraisablehook = lambda _unraisable: None
    threading.excepthook = lambda _args: None
    try:
        yield
    finally:
        root.handlers[:], sys.unraisablehook, threading.excepthook = saved
        logging.captureWarnings(False)

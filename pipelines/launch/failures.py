"""Any exception a job ends with -> (exit status, one line): the error path of every job.

Failures arrive in several shapes, depending on where they were raised:

  * in the driver (option checks, pre-flight checks): the exception itself;
  * in a DoFn run by the FnApi runner in this process: the same type, its message suffixed with
    " [while running '<step>']", the original chained as __cause__ (OSError arrives wrapped in a
    RuntimeError whose text starts with "OSError: [Errno N] ...");
  * in a DoFn run in a worker process (--direct_running_mode=multi_processing): a RuntimeError
    whose text is the worker's whole traceback, the original exception on its last lines;
  * through Beam's FileSystems: a BeamIOError holding the underlying exceptions per path.

`describe` looks through all of them for a transforms.errors type (its own exit status), an
OSError whose errno says the environment failed (exit 1, naming the path), or storage that cannot
be reached (exit 1). A ValueError raised before the pipeline started is the user's input (exit 2);
anything else is unexpected (exit 1, one line, with the hint to rerun with --debug).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator

from transforms.errors import JobFailure

__all__ = ["INTERRUPTED", "PIPELINE_NOTE", "STOPPED", "describe", "mark_pipeline_failure"]

INTERRUPTED = 130  # the shell's status for a process stopped by SIGINT
STOPPED = 143  # the shell's status for a process stopped by SIGTERM (128 + 15): a scheduler's stop
PIPELINE_NOTE = "(raised while the pipeline ran)"

# errno -> what the one line says; each is the environment's failure, not the user's input.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.EMFILE: "too many open files",
    errno.ENOMEM: "out of memory",
}
STORAGE_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT}
# Wrapped text: "transforms.errors.BadInput: message" / "PermissionError: [Errno 13] Permission denied: '/x'"
_JOB_FAILURE_LINE = re.compile(
    r"^transforms\.errors\.(BadInput|EnvironmentFailure|BooksUnbalanced|InputChanged): (.+)$", re.M
)
_OS_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*Error): \[Errno (\d+)\] ([^\n]*)$", re.M)
_WHILE_RUNNING = re.compile(r" \[while running '[^']*'\]")
_STORAGE_TYPES = (
    "ConnectionError",
    "ServiceUnavailable",
    "RetryError",
    "TransportError",
    "DefaultCredentialsError",
    "RefreshError",
    "MaxRetryError",
    "NewConnectionError",
)
_EXIT_STATUS = {"BadInput": 2, "EnvironmentFailure": 1, "BooksUnbalanced": 1, "InputChanged": 1}


def mark_pipeline_failure(exc: BaseException) -> None:
    """Notes that `exc` came out of the running pipeline (not the driver's checks), so a plain
    ValueError there is a bug or a bad row, not the user's command line."""
    if hasattr(exc, "add_note") and PIPELINE_NOTE not in getattr(exc, "__notes__", ()):
        exc.add_note(PIPELINE_NOTE)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc, its causes and contexts, and the exceptions a BeamIOError holds, each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo.extend(
            e for e in (getattr(current, "exception_details", None) or {}).values() if isinstance(e, BaseException)
        )
        todo.extend([current.__cause__, current.__context__])


def one_line(text: str) -> str:
    """The first non-empty line of `text`, without Beam's " [while running ...]" suffixes."""
    text = _WHILE_RUNNING.sub("", str(text)).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _os_error_line(code: int, detail: str, filename: str | None = None, where: str | None = None) -> str:
    what = ENVIRONMENT_ERRNOS.get(code) or f"storage unreachable (errno {code})"
    if filename:
        return f"{what}: {filename}"
    return f"{what} writing under {where}" if where else f"{what} ({one_line(detail)})"


def describe(exc: BaseException, where: str | None = None) -> tuple[int, str]:
    """(exit status, one line without the job's name) for the exception a job ended with.

    Args:
        exc: the exception (with its __cause__/__context__ chain as raised).
        where: the job's output directory, named when an OSError carries no file name (a write
            into an open file: "no space left on device writing under OUT").
    Returns:
        (2, ...) for the user's input, (1, ...) for the environment, the books or the unexpected,
        (130, "interrupted") for Ctrl-C.
    """
    chain = list(_chain(exc))
    if any(isinstance(e, KeyboardInterrupt) for e in chain):
        return INTERRUPTED, "interrupted"
    for e in chain:
        if isinstance(e, JobFailure):
            return e.exit_status, one_line(str(e))
    for e in chain:
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return 1, _os_error_line(e.errno, e.strerror or str(e), e.filename, where)
    for e in chain:  # a worker process's traceback, as text
        found = _JOB_FAILURE_LINE.findall(str(e))
        if found:
            kind, message = found[-1]
            return _EXIT_STATUS[kind], one_line(message)
        for _kind, code, detail in reversed(_OS_ERROR_LINE.findall(str(e))):
            if int(code) in ENVIRONMENT_ERRNOS:
                path = re.search(r": '([^']+)'$", detail)
                return 1, _os_error_line(int(code), detail, path.group(1) if path else None, where)
    for e in chain:
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS or type(e).__name__ in _STORAGE_TYPES:
            return 1, f"storage unreachable: {one_line(str(e)) or type(e).__name__}"
        if "No space left on device" in str(e):
            return 1, _os_error_line(errno.ENOSPC, str(e), None, where)
    in_pipeline = any(PIPELINE_NOTE in getattr(e, "__notes__", ()) for e in chain)
    if isinstance(exc, ValueError) and not in_pipeline:
        return 2, one_line(str(exc))
    if isinstance(exc, SystemExit):  # a parser's usage error, already printed
        return (exc.code if isinstance(exc.code, int) else 2), one_line(str(exc.code or ""))
    return 1, (f"unexpected {type(exc).__name__}: {one_line(str(exc))[:300]} (rerun with --debug for the traceback)")

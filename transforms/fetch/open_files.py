"""The fetcher's own shortage of sockets, told apart from a URL's failure.

A worker that runs out of file descriptors (`ulimit -n`: 1024 by default on many systems, against
`--concurrency` sockets a worker process plus blob files and pipes) cannot open a socket: the OS
says EMFILE/ENFILE/ENOBUFS before any packet leaves. Recorded as the URL's `connection_error`,
that made live URLs fail by the dozen with exit 0 (65 of 120 at a 150-descriptor limit), counted
against their host's breaker, and in the refresh as evidence against them.

- `raise_open_files_limit()`: the soft limit up to the hard one, once a process, as Go's runtime
  does at start: the shortage then needs a hard limit below what the run holds.
- `is_local_shortage(error)`: the error is this machine's, not the URL's.
- `ShortagePatience`: how long one fetch has waited for a descriptor; past `SHORTAGE_PATIENCE_S`
  the run stops (EnvironmentFailure: exit 1, one line naming the limit), since every request of
  the run would fail the same way.

Public: `raise_open_files_limit`, `is_local_shortage`, `ShortagePatience`, `SHORTAGE_PATIENCE_S`.
"""

from __future__ import annotations

import errno
import resource

from transforms.errors import EnvironmentFailure

__all__ = ["SHORTAGE_PATIENCE_S", "ShortagePatience", "is_local_shortage", "raise_open_files_limit"]

# Out of descriptors (the process's, the system's) or of socket buffers: nothing left the machine.
_SHORTAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS})
# A fetch waits this long in all for a descriptor before the run stops: other requests finish and
# free theirs within --timeout, so a longer shortage means the limit is below what the run needs.
SHORTAGE_PATIENCE_S = 120.0
_FIRST_WAIT_S, _LONGEST_WAIT_S = 0.05, 2.0


def raise_open_files_limit() -> None:
    """Raises this process's soft limit of open files to its hard limit (no-op if already there).

    A limit the OS refuses (an unlimited hard limit above the kernel's nr_open) is left as it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def is_local_shortage(error: BaseException | None) -> bool:
    """True when `error` (or what it wraps) says this machine had no descriptor or buffer to give.

    Args:
        error: the OSError behind a failed connection (aiohttp's `os_error`), or any exception.
    Returns:
        Whether the failure is the fetcher's own, not the URL's.
    """
    for candidate in (error, getattr(error, "__cause__", None), getattr(error, "__context__", None)):
        if isinstance(candidate, OSError) and candidate.errno in _SHORTAGE_ERRNOS:
            return True
    return False


class ShortagePatience:
    """The waits of one fetch for a free descriptor: each longer than the last, bounded in all."""

    def __init__(self, concurrency: int) -> None:
        self._concurrency = concurrency
        self._waited = 0.0
        self._next = _FIRST_WAIT_S

    def next_wait(self, error: str | None) -> float:
        """Seconds to wait before trying again; raises EnvironmentFailure once the patience is spent.

        Args:
            error: what the failed attempt said (named in the one line).
        Returns:
            The wait, in seconds.
        """
        if self._waited >= SHORTAGE_PATIENCE_S:
            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            raise EnvironmentFailure(
                f"too many open files: the fetcher waited {self._waited:.0f}s for a free descriptor"
                f" ({error}); the limit is {soft} (ulimit -n) with --concurrency {self._concurrency}"
                " requests in flight a worker process: lower --concurrency or raise the limit"
            )
        wait = self._next
        self._waited += wait
        self._next = min(self._next * 2, _LONGEST_WAIT_S)
        return wait

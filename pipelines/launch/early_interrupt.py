"""Ctrl-C while `python -m pipelines.<job>` is still importing (Beam's imports take seconds): one
line and exit 130 instead of a KeyboardInterrupt traceback; SIGTERM then: one line and exit 143
(before: no line, killed by the signal). Installed by pipelines/__init__.py only
when Python runs a job module with -m; the job's own handler (console.stop_on_interrupt)
replaces it once the job starts."""

import os
import signal
import sys

__all__ = ["install"]


def install() -> None:
    """Sets SIGINT and SIGTERM handlers that print "<job>: interrupted while starting" (SIGTERM:
    "<job>: stopped (SIGTERM) while starting") and exit 130 (SIGTERM: 143)."""
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else "pipelines"
    job = module.rsplit(".", 1)[-1]
    # why: nothing is written yet (no lease, no temporaries): the line and the shell's status only
    endings = {
        signal.SIGINT: (f"{job}: interrupted while starting\n".encode(), 130),
        signal.SIGTERM: (f"{job}: stopped (SIGTERM) while starting\n".encode(), 143),
    }

    def stop(signum, _frame):
        line, status = endings[signum]
        os.write(2, line)
        os._exit(status)

    for signum in endings:
        signal.signal(signum, stop)

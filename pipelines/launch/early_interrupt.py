"""Ctrl-C while `python -m pipelines.<job>` is still importing (Beam's imports take seconds): one
line and exit 130 instead of a KeyboardInterrupt traceback. Installed by pipelines/__init__.py only
when Python runs a job module with -m; the job's own handler (console.stop_on_interrupt)
replaces it once the job starts."""

import os
import signal
import sys

__all__ = ["install"]


def install() -> None:
    """Sets a SIGINT handler that prints "<job>: interrupted while starting" and exits 130."""
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else "pipelines"
    line = f"{module.rsplit('.', 1)[-1]}: interrupted while starting\n".encode()

    def stop(_signum, _frame):
        os.write(2, line)
        os._exit(130)

    signal.signal(signal.SIGINT, stop)

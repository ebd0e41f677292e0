"""`job(name, *args)`: a job run as `python -m pipelines.<name>` from the repository, the way a user
starts it, for the tests of exit statuses and one-line messages; `start(*argv)`: the same started in
a session of its own, for tests that signal it or run two at once."""

import os
import subprocess
import sys
import tempfile

from tests.paths import REPO

NOBODY = 65534  # the uid/gid of a run without write permission anywhere (as_nobody)


def job(name, *args, env=None, timeout=240, as_nobody=False):
    """Runs `python -m pipelines.<name> args` from the repository; the finished process."""
    environment = {k: v for k, v in os.environ.items() if k != "BEAM_IMAGES_DEBUG"}
    environment.update(PYTHONPATH=REPO, **(env or {}))
    preexec = None
    if as_nobody:
        environment["HOME"] = tempfile.gettempdir()

        def preexec():
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{name}", *map(str, args)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
    )


def start(*argv, env=None, stdout=subprocess.PIPE):
    """Starts `python argv...` from the repository in a session of its own (its process group can be
    signalled without the test's); returns the Popen, its stderr a pipe of text."""
    return subprocess.Popen(
        [sys.executable, *map(str, argv)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, **(env or {})},  # env may set PYTHONPATH itself
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

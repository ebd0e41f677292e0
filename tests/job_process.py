"""`job(name, *args)`: a job run as `python -m pipelines.<name>` from the repository, the way a user
starts it, for the tests of exit statuses and one-line messages; `start(*argv)`: the same started in
a session of its own, for tests that signal it or run two at once; `file_modes_bind(...)`: whether
such a run can be made to obey file modes (chmod 000) although the tests run as root;
`left_running(pids)`: which of a stopped job's worker processes still run."""

import ctypes
import os
import subprocess
import sys
import tempfile

from tests.paths import REPO

NOBODY = 65534  # the uid/gid of a run without write permission anywhere (as_nobody)
PR_CAPBSET_DROP = 24  # prctl(2)
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2  # capability(7)


def drop_file_mode_override():
    """A preexec_fn: drops root's right to ignore file modes from the bounding set, so the process
    it execs (root still) is refused a chmod 000 file as any user is. Raises OSError where the
    kernel or the container does not allow it."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def file_modes_bind(path):
    """Whether a job run with `obey_file_modes=True` is refused reading `path` (made unreadable by
    the caller): always for a user other than root; for root where the capabilities can be dropped."""
    if os.geteuid() != 0:
        return not os.access(path, os.R_OK)
    try:
        done = subprocess.run(["cat", path], capture_output=True, preexec_fn=drop_file_mode_override)
    except subprocess.SubprocessError:
        return False
    return done.returncode != 0


def job(name, *args, env=None, timeout=240, as_nobody=False, obey_file_modes=False):
    """Runs `python -m pipelines.<name> args` from the repository; the finished process.
    `obey_file_modes`: run as root, it is refused unreadable files as other users are."""
    environment = {k: v for k, v in os.environ.items() if k != "BEAM_IMAGES_DEBUG"}
    environment.update(PYTHONPATH=REPO, **(env or {}))
    preexec = drop_file_mode_override if obey_file_modes and os.geteuid() == 0 else None
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


def left_running(pids):
    """The processes of `pids` still running (a zombie left to the container's init is not)."""

    def running(pid):
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    return [pid for pid in pids if running(pid)]

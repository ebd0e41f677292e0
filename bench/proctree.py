"""Resident memory of a whole process tree (a job's driver plus its SDK worker processes), from /proc."""

import os
import subprocess
import threading


def _children():
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_rss(root):
    """Bytes resident in `root` and all its descendants now."""
    kids, total, todo = _children(), 0, [root]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * page
        except OSError:
            pass
    return total


def run_sampled(cmd, cwd, env=None, interval=0.2):
    """Run cmd to its end, sampling its tree's RSS every `interval` s.

    Returns (exit code, stderr bytes, peak resident bytes of the tree)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            stop.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    return proc.returncode, err, peak[0]

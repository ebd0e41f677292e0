"""Put on PYTHONPATH by the kill sweep (KILL_SWEEP_PAUSE=seconds) for runs killed at a publish step:
each rename into place, and each delete, of a published file (*.parquet, summary.json, _COMPLETE,
not under _tmp-*) is followed by a pause, so that a sweep polling every 2 ms kills the run between
two steps of the publish, not some steps later (the steps themselves take microseconds).
Python imports sitecustomize at start-up: the job's driver and its Beam worker processes.
"""

import os
import time

_PAUSE = float(os.environ.get("KILL_SWEEP_PAUSE") or 0)


def _published(path) -> bool:
    path = os.fspath(path)
    name = os.path.basename(path)
    return "/_tmp-" not in path and (name.endswith(".parquet") or name in ("summary.json", "_COMPLETE"))


if _PAUSE:
    _rename, _remove = os.rename, os.remove

    def _paused_rename(src, dst, *args, **kwargs):
        _rename(src, dst, *args, **kwargs)
        if _published(dst):
            time.sleep(_PAUSE)

    def _paused_remove(path, *args, **kwargs):
        _remove(path, *args, **kwargs)
        if _published(path):
            time.sleep(_PAUSE)

    os.rename, os.remove = _paused_rename, _paused_remove

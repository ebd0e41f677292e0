"""Checks a job makes of its output folder before anything is written: a folder it can write,
whose path Beam will not read as a pattern, that holds no other job's output, in a bucket that
exists. Each raises transforms.errors.BadInput (exit 2) or EnvironmentFailure (exit 1).
"""

from __future__ import annotations

import errno
import os

from pipelines.launch.failures import ENVIRONMENT_ERRNOS
from transforms.errors import BadInput, EnvironmentFailure
from transforms.io.table_record import recorded_table

__all__ = ["check_output_dir", "check_output_of_job", "no_bucket", "refuse_pattern_characters"]


def no_bucket(path: str) -> str:
    """The end of the line for a gs:// path whose bucket does not exist."""
    bucket = path.split("://", 1)[1].split("/", 1)[0]
    return f"no bucket {bucket} (or none this account can see); check the bucket's name"


def _check_bucket(flag: str, path: str) -> None:
    """BadInput when a gs:// output's bucket does not exist; anything else (no permission to look
    buckets up, storage unreachable) is left to the job's own first write."""
    if not path.startswith("gs://"):
        return
    try:
        import google.cloud.storage as storage  # noqa: PLC0415 (only for gs:// outputs)

        found = storage.Client().lookup_bucket(path[len("gs://") :].split("/", 1)[0])
    except Exception:  # noqa: BLE001 (403 without storage.buckets.get: the write will tell)
        return
    if found is None:
        raise BadInput(f"{flag} {path}: {no_bucket(path)}")


def check_output_dir(path: str | None, flag: str = "--output") -> None:
    """The output directory can be written: not an existing file; created if missing (locally).

    Args:
        path: the output directory, local or gs:// (remote ones are not probed here).
        flag: the option's name, for the message.
    """
    if not path:
        raise BadInput(f"{flag} is required")
    refuse_pattern_characters(flag, path)
    if "://" in path:
        _check_bucket(flag, path)
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadInput(f"{flag} {path} is an existing file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        code = exc.errno if exc.errno in ENVIRONMENT_ERRNOS else errno.EACCES
        raise EnvironmentFailure(f"{flag}: {ENVIRONMENT_ERRNOS[code]}: {exc.filename or path}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(path) else errno.EACCES
        raise EnvironmentFailure(f"{flag}: {ENVIRONMENT_ERRNOS[code]}: {path}")


def refuse_pattern_characters(flag: str, path: str) -> None:
    """BadInput when an output directory's path holds * ? [ or ].

    Why: the jobs find their own files in it through Beam's FileSystems.match, which reads those
    characters as a pattern: in `out [v2]`, every job failed deep in its run ('unexpected
    BeamIOError: Delete operation failed', 'IndexError'), exit 1, leaving its temporaries there.
    """
    found = [c for c in "*?[]" if c in path]
    if found:
        raise BadInput(
            f"{flag} {path}: {' '.join(found)} in an output path would be read as a pattern when the job"
            " lists its own files there; give a folder name without * ? [ ]"
        )


def check_output_of_job(path: str, job: str, flag: str = "--output") -> None:
    """BadInput when the output directory holds another job's output: its summary.json names
    another job.

    Why: a job writes its summary.json, and its table or shards, into its output directory; given
    another job's output by mistake (dedup's --input and --output swapped, an export or a refresh
    into an ingest's OUT, an ingest into an export), it replaced that table, or that summary.json
    with its books and table record (every later reader then read the table unchecked), exit 0.
    A summary.json that cannot be read or names no job is left to the run, as before.
    """
    other = recorded_table(path, strict=False)[0]
    if isinstance(other, str) and other != job:
        article = "an" if other[:1] in "aeiou" else "a"
        raise BadInput(
            f"{flag} {path} holds {article} {other} output (its summary.json says so): the {job} would"
            f" replace it; give another folder"
        )


def _read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False

"""The table a job wrote, as it records it in OUT/summary.json, and the check every reader makes.

The ingest and the dedup job record their table under "table": {"files": {name: rows}, "rows": n},
one entry per file of OUT/images, counted while the files were written. A job that reads an OUT
(export --input, dedup --input, refresh --snapshot, ingest --resume) first compares OUT/images
with that record: a file added or copied in (`part-1 (copy).parquet` doubles its rows), one
removed, or one whose row count differs (from the Parquet footers only: no data page is read)
is bad input, one line naming the files, before anything is written. Outputs of versions that
recorded no table are read as found, with a warning.

When a job's books do not balance, the files it wrote are removed again (`roll_back`) and its
summary keeps the record of the table OUT/images still holds: the previous one.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
from collections.abc import Iterable

from apache_beam.io.filesystems import FileSystems

from transforms.errors import BadInput
from transforms.io.sinks import join_path

__all__ = ["RECORD", "check_recorded_table", "footer_rows", "recorded_table", "roll_back", "table_record"]

RECORD = "table"  # the summary.json entry
_NAMED = 3  # files named per kind of difference in the one line


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def table_record(written: Iterable[dict]) -> dict:
    """{"files": {name: rows}, "rows": total} of the files a job wrote ({"path", "rows"} each)."""
    files = {_name(part["path"]): int(part["rows"]) for part in written}
    return {"files": dict(sorted(files.items())), "rows": sum(files.values())}


def recorded_table(root: str, strict: bool = True) -> tuple[str | None, dict | None]:
    """(the job that wrote `root`, its table record) from ROOT/summary.json; (None, None) without
    a summary.json, (job, None) when it records no table (an older version wrote it).

    strict: a summary.json that is no JSON object is BadInput; else (a writer about to replace
    it) it records nothing.
    """
    path = join_path(root, "summary.json")
    if not FileSystems.exists(path):
        return None, None
    try:
        with FileSystems.open(path) as handle:
            summary = json.loads(handle.read().decode("utf-8"))
    except ValueError as exc:
        if not strict:
            return None, None
        raise BadInput(
            f"{path} is not a readable summary ({exc}); restore it, or re-run the job that wrote {root}"
        ) from None
    if not isinstance(summary, dict):
        if not strict:
            return None, None
        raise BadInput(f"{path} is not a job's summary (a JSON object)")
    record = summary.get(RECORD)
    return summary.get("job"), record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def footer_rows(paths: list[str]) -> dict[str, int]:
    """{path: rows} from each file's Parquet footer (a few KB a file, read 16 at a time)."""
    import pyarrow.parquet as pq  # noqa: PLC0415 (only readers need it)

    def rows(path: str) -> int:
        with FileSystems.open(path) as handle:
            return pq.ParquetFile(handle).metadata.num_rows

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        return dict(zip(paths, pool.map(rows, paths), strict=True))


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
    return ", ".join(names[:_NAMED]) + more


def check_recorded_table(flag: str, root: str, files: list[str], ignore_unrecorded: bool = False) -> list[str]:
    """Compares ROOT/images (`files`, as listed) with the table recorded in ROOT/summary.json.

    Args:
        flag: the option naming ROOT, for the message ("--input").
        root: the OUT being read.
        files: the Parquet files of ROOT/images.
        ignore_unrecorded: files not in the record are left out instead of refused (the ingest's
            --resume: its own OUT, where they are a killed run's parts, retired with the table).
    Returns:
        The files to read: `files`, less the unrecorded ones with ignore_unrecorded.
    Raises:
        BadInput: a file added, missing, or holding another row count than recorded.
    """
    job, record = recorded_table(root)
    if record is None:
        if job is not None:
            print(
                f"{job}: warning: {root}/summary.json records no table files (an older version wrote it):"
                " images/*.parquet are read as found, unchecked",
                file=sys.stderr,
                flush=True,
            )
        return files
    recorded = record["files"]
    found = {_name(path): path for path in files}
    added = sorted(set(found) - set(recorded))
    missing = sorted(set(recorded) - set(found))
    common = [found[name] for name in sorted(set(found) & set(recorded))]
    counted = footer_rows(common)
    differ = [
        f"{_name(path)} ({recorded[_name(path)]} recorded, {rows} found)"
        for path, rows in counted.items()
        if rows != recorded[_name(path)]
    ]
    problems = []
    if added and not ignore_unrecorded:
        problems.append(f"not written by it: {_listed(added)}")
    if missing:
        problems.append(f"missing: {_listed(missing)}")
    if differ:
        problems.append(f"other row counts: {_listed(differ)}")
    if problems:
        raise BadInput(
            f"{flag} {root}: images/ is not the table {job or 'its job'} wrote (summary.json):"
            f" {'; '.join(problems)}; restore images/ as it was, or re-run the job that wrote {root}"
        )
    return [path for path in files if _name(path) in recorded]


def roll_back(written: Iterable[str], keep: Iterable[str]) -> None:
    """Deletes the files a failed run wrote (`written`), never one of `keep` (the previous table)."""
    keep_set = {os.path.normpath(p) if "://" not in p else p for p in keep}
    doomed = [p for p in written if (os.path.normpath(p) if "://" not in p else p) not in keep_set]
    existing = [p for p in doomed if FileSystems.exists(p)]
    if existing:
        FileSystems.delete(existing)

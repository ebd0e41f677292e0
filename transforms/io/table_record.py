"""The table a job wrote, as it records it in OUT/summary.json, and the check every reader makes.

The ingest and the dedup job record their table under "table": {"files": {name: rows}, "rows": n,
"fingerprints": {name: {"bytes": size, "footer_sha256": hex}}}, one entry per file of OUT/images,
rows counted while the files were written, size and footer read back once they were. A job that
reads an OUT (export --input, dedup --input, refresh --snapshot, ingest --resume) first compares
OUT/images with that record: a file added or copied in (`part-1 (copy).parquet` doubles its rows),
one removed, one whose row count differs, or one replaced by another file of the same name and
row count (its byte size or the sha256 of its Parquet footer differs: the footer holds the row
groups' sizes, offsets and column statistics) is bad input, one line naming the files, before
anything is written. Only footers are read, no data page. Records without "fingerprints" (older
versions) are checked by names and row counts; outputs of versions that recorded no table are
read as found, with a warning.

When a job's books do not balance, the files it wrote are removed again (`roll_back`) and its
summary keeps the record of the table OUT/images still holds: the previous one.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import glob
import hashlib
import json
import os
import sys
from collections.abc import Iterable

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import BadInput, InputChanged, removed_while_read
from transforms.io.lease import Holder, lease_path, seen_alive
from transforms.io.sinks import join_path

__all__ = [
    "RECORD",
    "check_recorded_table",
    "checked_table",
    "footer_facts",
    "footer_rows",
    "recorded_table",
    "refuse_unfinished",
    "roll_back",
    "table_digest",
    "unfinished_table",
    "table_record",
]

RECORD = "table"  # the summary.json entry
_NAMED = 3  # files named per kind of difference in the one line


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def table_record(written: Iterable[dict]) -> dict:
    """{"files": {name: rows}, "rows": total, "fingerprints": {name: {"bytes", "footer_sha256"}}}
    of the files a job wrote ({"path", "rows"} each; the fingerprints are read from the files)."""
    written = list(written)
    files = {_name(part["path"]): int(part["rows"]) for part in written}
    facts = footer_facts([part["path"] for part in written])
    fingerprints = {_name(path): _fingerprint(fact) for path, fact in facts.items()}
    return {
        "files": dict(sorted(files.items())),
        "rows": sum(files.values()),
        "fingerprints": dict(sorted(fingerprints.items())),
    }


def _fingerprint(fact: dict) -> dict:
    return {"bytes": fact["bytes"], "footer_sha256": fact["footer_sha256"]}


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


def _first_fetched_at(metadata) -> datetime.datetime | None:
    """The smallest `fetched_at` of a file, from its footer's column statistics (None without them)."""
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    if "fetched_at" not in names:
        return None
    column = names.index("fetched_at")
    found = []
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is not None and stats.has_min_max and isinstance(stats.min, datetime.datetime):
            found.append(stats.min)
    return min(found) if found else None


def _footer_fact(path: str) -> dict:
    """{"rows", "bytes", "footer_sha256", "first_fetched_at", "columns"} of one Parquet file, from its
    end only: the footer (length and magic in the last 8 bytes, the serialised metadata before them)."""
    import pyarrow.parquet as pq  # noqa: PLC0415 (only readers need it)

    try:
        handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception:
        if not FileSystems.exists(path):  # why: listed, then retired by a writer of the table
            raise removed_while_read(path) from None
        raise
    with handle:
        try:
            metadata = pq.ParquetFile(handle).metadata
            rows = metadata.num_rows
        except ValueError as exc:  # ArrowInvalid: emptied, cut short, not Parquet; pyarrow names no file
            raise BadInput(
                f"{path} is not a readable Parquet file ({exc}); restore it, or re-run the job that wrote it"
            ) from None
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(size - 8)
        length = int.from_bytes(handle.read(8)[:4], "little")
        handle.seek(size - 8 - length)
        footer = handle.read(length)
    return {
        "rows": rows,
        "bytes": size,
        "footer_sha256": hashlib.sha256(footer).hexdigest(),
        "first_fetched_at": _first_fetched_at(metadata),
        "columns": tuple(metadata.schema.to_arrow_schema().names),
    }


def footer_facts(paths: list[str]) -> dict[str, dict]:
    """{path: {"rows", "bytes", "footer_sha256", "first_fetched_at", "columns"}} from each file's Parquet
    footer (a few KB a file, read 16 at a time)."""
    if not paths:
        return {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        return dict(zip(paths, pool.map(_footer_fact, paths), strict=True))


def footer_rows(paths: list[str]) -> dict[str, int]:
    """{path: rows} from each file's Parquet footer (a few KB a file, read 16 at a time)."""
    return {path: fact["rows"] for path, fact in footer_facts(paths).items()}


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
    return ", ".join(names[:_NAMED]) + more


def check_recorded_table(flag: str, root: str, files: list[str], ignore_unrecorded: bool = False) -> list[str]:
    """The files of `checked_table(flag, root, files, ignore_unrecorded)`, without the identity."""
    return checked_table(flag, root, files, ignore_unrecorded)[0]


def checked_table(
    flag: str, root: str, files: list[str], ignore_unrecorded: bool = False, facts: dict[str, dict] | None = None
) -> tuple[list[str], dict]:
    """Compares ROOT/images (`files`, as listed) with the table recorded in ROOT/summary.json.

    Args:
        flag: the option naming ROOT, for the message ("--input").
        root: the OUT being read.
        files: the Parquet files of ROOT/images.
        ignore_unrecorded: files not in the record are left out instead of refused (the ingest's
            --resume: its own OUT, where they are a killed run's parts, retired with the table).
        facts: footer_facts(files), when the caller read them already (the refresh: each footer a
            request on gs://, hundreds a snapshot); read here otherwise.
    Returns:
        (the files to read: `files`, less the unrecorded ones with ignore_unrecorded; which table
        they are: {"path": root, "written_by", "files", "rows", "table_sha256": table_digest}, for
        the reader's summary.json).
    Raises:
        BadInput: a file added, missing, holding another row count than recorded, or (a record
            with fingerprints) another file: another byte size or Parquet footer; or ROOT has no
            summary.json while a run's lease is on it (refuse_unfinished).
        InputChanged: such a difference while a live run holds ROOT's lease (it is publishing a
            new table), or a file removed between the listing and the check.
    """
    job, record = recorded_table(root)
    if job is None and not ignore_unrecorded:  # the --resume run holds ROOT's lease itself
        refuse_unfinished(flag, root)
    if record is None:
        facts = _refuse_copies(flag, root, files, facts)  # first: a refusal is the one line
        if job is not None:
            print(
                f"{job}: warning: {root}/summary.json records no table files (an older version wrote it):"
                " images/*.parquet are read as found, unchecked",
                file=sys.stderr,
                flush=True,
            )
        found_record = {
            "files": {_name(path): fact["rows"] for path, fact in facts.items()},
            "fingerprints": {_name(path): _fingerprint(fact) for path, fact in facts.items()},
        }
        return files, _identity(root, job, found_record)
    recorded = record["files"]
    found = {_name(path): path for path in files}
    added = sorted(set(found) - set(recorded))
    missing = sorted(set(recorded) - set(found))
    common = [found[name] for name in sorted(set(found) & set(recorded))]
    facts = {path: facts[path] for path in common} if facts is not None else footer_facts(common)
    differ = [
        f"{_name(path)} ({recorded[_name(path)]} recorded, {fact['rows']} found)"
        for path, fact in facts.items()
        if fact["rows"] != recorded[_name(path)]
    ]
    replaced = _replaced(record, facts)
    problems = []
    if added and not ignore_unrecorded:
        problems.append(f"not written by it: {_listed(added)}")
    if missing:
        problems.append(f"missing: {_listed(missing)}")
    if differ:
        problems.append(f"other row counts: {_listed(differ)}")
    if replaced:
        problems.append(f"replaced by another file: {_listed(replaced)}")
    if problems:
        writer = None if ignore_unrecorded else _live_writer(root)  # --resume: ROOT's writer itself
        if writer is not None:
            # why: a rerun publishes its parts, then summary.json, then retires the previous parts:
            # in between images/ holds two tables, and "restore images/" would have the operator
            # delete the parts of a run at work
            raise InputChanged(
                f"{flag} {root}: its table is being rewritten by {writer.describe()} (images/ holds parts"
                f" of two tables: {'; '.join(problems)}); rerun once it is done"
            )
        raise BadInput(
            f"{flag} {root}: images/ is not the table {job or 'its job'} wrote (summary.json):"
            f" {'; '.join(problems)}; restore images/ as it was, or re-run the job that wrote {root}"
        )
    return [path for path in files if _name(path) in recorded], _identity(root, job, record)


def table_digest(record: dict) -> str:
    """SHA-256 of a table record's files, row counts and fingerprints: one table, one digest.

    Args:
        record: a summary.json "table" ({"files", "fingerprints"}), or one made of the files found.
    Returns:
        The digest, hex.
    """
    payload = {"files": record.get("files") or {}, "fingerprints": record.get("fingerprints") or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _identity(root: str, job: str | None, record: dict) -> dict:
    """Which table a reader read: the reader's summary.json says it (the old or the new one)."""
    return {
        "path": root,
        "written_by": job,
        "files": len(record["files"]),
        "rows": sum(record["files"].values()),
        "table_sha256": table_digest(record),
    }


def _live_writer(root: str) -> Holder | None:
    """The run holding ROOT's lease, unless a new writer would break it as stale; None without one."""
    path = lease_path(root)
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            holder = Holder.from_json(handle.read())
    except Exception:  # noqa: BLE001 (released meanwhile; storage that fails: the refusal stands)
        return None
    return holder if seen_alive(holder, remote=root.startswith("gs://")) else None


def _refuse_copies(flag: str, root: str, files: list[str], facts: dict[str, dict] | None = None) -> dict[str, dict]:
    """BadInput when two files of ROOT/images, with rows, have one size and one Parquet footer;
    else the files' footer_facts.

    Why: with no table recorded (summary.json deleted, emptied, or of an older version), a part
    copied into images/ (`part-1 (copy).parquet`) was read as more rows, exit 0. Parts of other
    rows differ in their footers (column statistics: smallest and largest key, URL, sha256; sizes
    and offsets); 0-row files (one empty table's part each) add no row.
    """
    same: dict[tuple, list[str]] = {}
    facts = footer_facts(files) if facts is None else facts
    for path, fact in facts.items():
        if fact["rows"]:
            same.setdefault((fact["bytes"], fact["footer_sha256"]), []).append(_name(path))
    twice = [" = ".join(sorted(names)) for names in same.values() if len(names) > 1]
    if twice:
        raise BadInput(
            f"{flag} {root}: images/ holds one file twice, and summary.json records no table to tell the"
            f" table's from the copy: {_listed(sorted(twice))} (as many bytes, one Parquet footer); remove"
            f" the copy, or re-run the job that wrote {root}"
        )
    return facts


def refuse_unfinished(flag: str, root: str) -> None:
    """BadInput when ROOT, which has no summary.json, holds a killed run's lease (ROOT/_LEASE);
    InputChanged (exit 1) while that run is alive: its first table is being published.

    Why: a first run publishes its parts into images/ one by one and records them in summary.json
    last; killed (or read) in between, images/ holds some of its parts and nothing to check them
    against, and readers took them for the whole table, exit 0. The lease, left by a killed run
    until the next one, tells that table from one written by hand or by an old version.
    """
    path = lease_path(root)
    if not FileSystems.exists(path):
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        holder = Holder.from_json(handle.read())
    if seen_alive(holder, remote=root.startswith("gs://")):
        # why exit 1, not 2: nothing is wrong with the input or the command; it is being written
        raise InputChanged(
            f"{flag} {root}: its first table is being written by {holder.describe()} (no summary.json"
            " yet); rerun once it is done"
        )
    raise BadInput(
        f"{flag} {root}: its table is unfinished: no summary.json, and {holder.describe()} holds {path}"
        f" (killed before the end): rerun it"
    )


def unfinished_table(root: str) -> bool:
    """True when ROOT/images holds Parquet files and ROOT has no summary.json: a run stopped between
    publishing its parts and recording them (Ctrl-C or a failure of a first run); what
    refuse_unfinished refuses while that run's lease is on ROOT.

    Read through os or the storage client, not Beam's FileSystems. why: the stop signals' handler asks
    too, before it releases the lease, and may have interrupted the main thread holding Beam's
    credentials lock: the release then waited out its time and left a gs:// lease (15 minutes of
    refused retries). Only local and gs:// outputs hold leases.
    """
    if not root.startswith("gs://"):
        parts = glob.glob(os.path.join(glob.escape(root), "images", "*.parquet"))
        return bool(parts) and not os.path.exists(os.path.join(root, "summary.json"))
    import google.cloud.storage as storage  # noqa: PLC0415 (only for gs:// outputs)

    bucket_name, _, prefix = root[len("gs://") :].partition("/")
    prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    bucket = storage.Client().bucket(bucket_name)
    parts = bucket.list_blobs(prefix=f"{prefix}images/", delimiter="/")
    return any(p.name.endswith(".parquet") for p in parts) and bucket.get_blob(f"{prefix}summary.json") is None


def _replaced(record: dict, facts: dict[str, dict]) -> list[str]:
    """Files of as many rows as recorded whose size or footer differs from the record's
    fingerprints (none in a record without them: an older version wrote it)."""
    fingerprints = record.get("fingerprints")
    if not isinstance(fingerprints, dict):
        return []
    replaced = []
    for path, fact in facts.items():
        name = _name(path)
        recorded = fingerprints.get(name)
        if not isinstance(recorded, dict) or fact["rows"] != record["files"][name]:
            continue
        if recorded.get("bytes") != fact["bytes"]:
            replaced.append(f"{name} ({recorded.get('bytes')} bytes recorded, {fact['bytes']} found)")
        elif recorded.get("footer_sha256") != fact["footer_sha256"]:
            replaced.append(f"{name} (as many bytes, another Parquet footer)")
    return replaced


def roll_back(written: Iterable[str], keep: Iterable[str]) -> None:
    """Deletes the files a failed run wrote (`written`), never one of `keep` (the previous table)."""
    keep_set = {os.path.normpath(p) if "://" not in p else p for p in keep}
    doomed = [p for p in written if (os.path.normpath(p) if "://" not in p else p) not in keep_set]
    existing = [p for p in doomed if FileSystems.exists(p)]
    if existing:
        FileSystems.delete(existing)

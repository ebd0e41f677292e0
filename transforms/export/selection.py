"""Which rows of an ingest or dedup output an export holds, and why the others are skipped.

`--include canonical` (the default): status ok, not a placeholder, and from each duplicate cluster
the canonical row only; rows in no cluster are kept. `--include all`: every ok, non-placeholder row.
A selected row whose blob cannot be read (missing, or bytes that are not the row's sha256 or not an
image) is skipped later, by the shard writer, as `unreadable_blob`; one whose picture is too large to
export (over the pixel limit, or resized sides over the encode format's) as `too_large`.
"""

from collections.abc import Iterable, Sequence

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from transforms import schema
from transforms.errors import BadInput

__all__ = [
    "EXPORT_COLUMNS",
    "INCLUDE_CHOICES",
    "NON_CANONICAL",
    "NOT_OK",
    "PLACEHOLDER",
    "REQUIRED_COLUMNS",
    "SKIP_REASONS",
    "TOO_LARGE",
    "UNREADABLE_BLOB",
    "check_table_files",
    "count_reasons",
    "export_record",
    "missing_columns",
    "skip_reason",
]

INCLUDE_CHOICES = ("canonical", "all")

# Skip reasons, in the order summary.json lists them.
NOT_OK = "not_ok"
PLACEHOLDER = "placeholder"
NON_CANONICAL = "non_canonical"
UNREADABLE_BLOB = "unreadable_blob"
TOO_LARGE = "too_large"
SKIP_REASONS = (NOT_OK, PLACEHOLDER, NON_CANONICAL, UNREADABLE_BLOB, TOO_LARGE)

# Columns an input table must have to be exported (is_placeholder is optional: tables written
# before placeholders were flagged have none, and their rows count as not placeholders).
REQUIRED_COLUMNS = (
    "dataset",
    "key",
    "url",
    "caption",
    "status",
    "sha256",
    "phash",
    "width",
    "height",
    "blob",
    "labels",
    "cluster_id",
    "is_canonical",
)

# What an exported sample carries from its row (the rest of the row stays behind: these cross the
# shuffle that assigns shards, so they are kept small).
EXPORT_COLUMNS = (
    "key",
    "dataset",
    "url",
    "caption",
    "sha256",
    "phash",
    "width",
    "height",
    "labels",
    "cluster_id",
    "blob",
    "format",
)


def skip_reason(row: dict, include: str = "canonical") -> str | None:
    """Why `row` is not exported, or None when it is selected.

    Args:
        row: a row of OUT/images (transforms.schema).
        include: "canonical" or "all" (INCLUDE_CHOICES).

    Returns:
        None, or one of NOT_OK, PLACEHOLDER, NON_CANONICAL.
    """
    if row.get("status") != schema.OK:
        return NOT_OK
    if row.get("is_placeholder"):
        return PLACEHOLDER
    if include == "canonical" and row.get("cluster_id") is not None and row.get("is_canonical") is False:
        return NON_CANONICAL
    return None


def export_record(row: dict) -> dict:
    """The part of a selected row an export needs (EXPORT_COLUMNS)."""
    record = {name: row.get(name) for name in EXPORT_COLUMNS}
    record["labels"] = list(record["labels"] or [])
    return record


def check_table_files(out_dir: str) -> list[str]:
    """The Parquet files of OUT/images, after checking that OUT is an export's possible input.

    Args:
        out_dir: an ingest or dedup output (local or gs://).

    Returns:
        The files of OUT/images, sorted.

    Raises:
        BadInput: no OUT/images/*.parquet, a file that is not Parquet, or a required column missing.
    """
    from transforms.io.table import list_table_files  # the table module imports Beam's IO: only when needed

    try:
        files = list_table_files(out_dir)
    except Exception as exc:  # noqa: BLE001 (a bad path or bucket: said in one line)
        raise BadInput(f"{out_dir}: cannot list images/*.parquet: {exc}") from exc
    if not files:
        raise BadInput(f"{out_dir} is not an ingest or dedup output: no images/*.parquet in it")
    # The first and last file's footers: enough to catch another table (every file of a run has
    # one schema); a bad file in between fails the read with its name.
    for path in sorted({files[0], files[-1]}):
        missing = missing_columns(path, REQUIRED_COLUMNS)
        if missing:
            raise BadInput(f"{path}: not an ingest output table, missing column(s) {', '.join(missing)}")
    return files


def missing_columns(path: str, required: Sequence[str]) -> list[str]:
    """Required columns absent from the Parquet file at `path`; BadInput if it is not Parquet."""
    try:
        with FileSystems.open(path) as handle:
            names = set(pq.ParquetFile(handle).schema_arrow.names)
    except PermissionError:
        raise  # why: a file refused is the environment failing (exit 1, the job's line), not a damaged one
    except Exception as exc:  # noqa: BLE001 (pyarrow raises several types for a corrupt file)
        raise BadInput(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    return [name for name in required if name not in names]


def count_reasons(reasons: Iterable[tuple[str, int]]) -> dict:
    """[(reason, n)] -> {reason: n} with every SKIP_REASONS key, in order."""
    found = dict(reasons)
    return {reason: int(found.get(reason, 0)) for reason in SKIP_REASONS}

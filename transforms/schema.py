"""The row every stage passes along, and the Parquet schema of OUT/images/.

A row is a plain dict: cheap to pickle between Beam stages and easy to extend. Keys starting
with "_" are internal (expected hashes, fetched bytes) and never reach Parquet.
shared CONTRACT.md is the source of truth for the public columns; extend, never rename.
"""

import datetime
from typing import Any

import pyarrow as pa

__all__ = [
    "OK",
    "HTTP_ERROR",
    "TIMEOUT",
    "CONNECTION_ERROR",
    "INVALID_URL",
    "BLOCKED",
    "OPTED_OUT",
    "NOT_IMAGE",
    "TOO_LARGE",
    "DECODE_ERROR",
    "HASH_MISMATCH",
    "STATUSES",
    "DATASETS",
    "Row",
    "LABEL_TYPE",
    "LONG_CAPTIONS_TYPE",
    "IMAGE_FIELDS",
    "IMAGE_SCHEMA",
    "IMAGE_COLUMNS",
    "new_row",
    "fail",
    "utc_now",
    "to_parquet_record",
    "REFRESH_FIELDS",
    "REFRESH_SCHEMA",
    "REFRESH_COLUMNS",
]

# The element type of every row PCollection: a plain dict with every IMAGE_COLUMNS name (new_row)
# plus internal keys starting with "_" (`_body`, `_read_path`, ...) that never reach Parquet.
Row = dict[str, Any]

# Row statuses of OUT/images (CONTRACT.md). Every status but OK carries an `error` text.
OK = "ok"
HTTP_ERROR = "http_error"
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
INVALID_URL = "invalid_url"
BLOCKED = "blocked"
OPTED_OUT = "opted_out"
NOT_IMAGE = "not_image"
TOO_LARGE = "too_large"
DECODE_ERROR = "decode_error"
HASH_MISMATCH = "hash_mismatch"

STATUSES = (
    OK,
    HTTP_ERROR,
    TIMEOUT,
    CONNECTION_ERROR,
    INVALID_URL,
    BLOCKED,
    OPTED_OUT,
    NOT_IMAGE,
    TOO_LARGE,
    DECODE_ERROR,
    HASH_MISMATCH,
)

DATASETS = ("cc3m", "cc12m", "openimages", "imagenet_captions", "zero")

LABEL_TYPE = pa.struct(
    [
        ("id", pa.string()),
        ("name", pa.string()),
        ("confidence", pa.float32()),
        ("source", pa.string()),
    ]
)

LONG_CAPTIONS_TYPE = pa.struct(
    [
        ("raw", pa.string()),
        ("short_instructblip", pa.string()),
        ("long_instructblip", pa.string()),
        ("short_sharegpt4v", pa.string()),
        ("long_sharegpt4v", pa.string()),
        ("short_llava", pa.string()),
        ("long_llava", pa.string()),
    ]
)

# Order matters only for readability of the files; readers select by name.
IMAGE_FIELDS = [
    # identity (CONTRACT.md)
    ("dataset", pa.string()),
    ("key", pa.string()),
    ("url", pa.string()),
    ("caption", pa.string()),
    # fetch outcome (CONTRACT.md)
    ("status", pa.string()),
    ("http_status", pa.int32()),
    ("error", pa.string()),
    # content (CONTRACT.md)
    ("sha256", pa.string()),
    ("md5", pa.string()),
    ("phash", pa.string()),
    ("dhash", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("blob", pa.string()),
    ("labels", pa.list_(LABEL_TYPE)),
    ("cluster_id", pa.string()),
    ("is_canonical", pa.bool_()),
    ("fetched_at", pa.timestamp("us", tz="UTC")),
    # extensions
    ("format", pa.string()),  # PIL format name: JPEG, PNG, WEBP, ...
    ("content_type", pa.string()),  # as the server sent it
    ("size_bytes", pa.int64()),  # body length after transfer decoding
    ("final_url", pa.string()),  # after redirects
    ("etag", pa.string()),  # for conditional requests of refresh
    ("last_modified", pa.string()),
    ("fetch_ms", pa.int32()),  # wall time of the fetch, retries included
    ("attempts", pa.int32()),  # HTTP attempts made (retries of 429/5xx)
    ("expected_sha256", pa.string()),  # from the CC12M hash list, hex
    ("expected_md5", pa.string()),  # from the hash list or Open Images OriginalMD5, hex
    ("source_file", pa.string()),  # manifest file the row came from
    ("source_line", pa.int64()),  # 1-based physical line where the record starts
    # dataset-specific metadata (null where the dataset has none)
    ("rotation", pa.float32()),  # Open Images Rotation (0/90/180/270), null for NaN
    ("license", pa.string()),
    ("author", pa.string()),
    ("title", pa.string()),
    ("description", pa.string()),
    ("tags", pa.list_(pa.string())),
    ("keywords", pa.string()),
    ("page_url", pa.string()),
    ("query", pa.string()),
    ("long_captions", LONG_CAPTIONS_TYPE),
    ("negative_labels", pa.list_(LABEL_TYPE)),  # human-verified negatives (confidence 0)
    # dedup (transforms/clustering/clusters.py)
    ("is_placeholder", pa.bool_()),  # the picture is a placeholder served for many dead URLs
    # width/height are as displayed (EXIF orientation applied); these are as stored in the file
    ("stored_width", pa.int32()),
    ("stored_height", pa.int32()),
    # views of the picture (transforms/hashing.py VIEWS, docs/duplicates.md): pHash / dHash of the
    # mirrored picture, of the picture without uniform borders (null: no border), of the centre
    # 85 % and of the centre 75 %
    ("phash_mirror", pa.string()),
    ("dhash_mirror", pa.string()),
    ("phash_trim", pa.string()),
    ("dhash_trim", pa.string()),
    ("phash_crop", pa.string()),
    ("dhash_crop", pa.string()),
    ("phash_centre", pa.string()),
    ("dhash_centre", pa.string()),
]

IMAGE_SCHEMA = pa.schema(IMAGE_FIELDS)
IMAGE_COLUMNS = [name for name, _ in IMAGE_FIELDS]
_LIST_COLUMNS = {"labels", "tags", "negative_labels"}


def new_row(dataset: str, key: str, url: str | None = None, caption: str | None = None, **fields: Any) -> Row:
    """A row with every public column present (None / [] where unknown)."""
    row: Row = {name: None for name in IMAGE_COLUMNS}
    for name in _LIST_COLUMNS:
        row[name] = []
    row.update(dataset=dataset, key=key, url=url, caption=caption)
    row.update(fields)
    return row


def fail(row: Row, status: str, error: str | None, http_status: int | None = None) -> Row:
    """Mark `row` failed in place and return it; `error` is short and human-readable."""
    assert status in STATUSES and status != OK, status
    row["status"] = status
    row["error"] = error
    if http_status is not None:
        row["http_status"] = http_status
    return row


def utc_now() -> datetime.datetime:
    """Now, timezone-aware UTC (the `fetched_at` / `checked_at` clock)."""
    return datetime.datetime.now(datetime.timezone.utc)


def to_parquet_record(row):
    """Only the public columns, in schema order; internal "_" keys dropped."""
    return {name: row.get(name) for name in IMAGE_COLUMNS}


# --- REFRESH_OUT/status/ and the refresh history: one row per snapshot key and night --------------
# (CONTRACT.md names url, key, dataset, status, http_status, checked_at, sha256, phash; the rest
# are extensions, documented in docs/refresh.md.)
REFRESH_FIELDS = [
    ("night", pa.date32()),  # the night the verdict is for (--night)
    ("dataset", pa.string()),
    ("key", pa.string()),
    ("url", pa.string()),
    ("host", pa.string()),
    ("status", pa.string()),  # alive, changed, unreachable, dead
    ("http_status", pa.int32()),  # last HTTP status of the night's check (304 for not-modified)
    ("checked_at", pa.timestamp("us", tz="UTC")),
    ("sha256", pa.string()),  # tonight's bytes (the snapshot's when the server said 304)
    ("phash", pa.string()),
    ("error", pa.string()),  # why, for unreachable and dead
    ("reason", pa.string()),  # why, for every verdict
    ("method", pa.string()),  # none, conditional, head, head+get, get, file
    ("requests", pa.int32()),  # HTTP requests made for the URL tonight, retries included
    ("failure", pa.string()),  # gone, no_host, transient, unfetchable; null when the check succeeded
    ("bytes_changed", pa.bool_()),  # alive with other bytes (re-encoded, resized)
    ("phash_distance", pa.int32()),  # to the snapshot's pHash, when both are known
    ("placeholder", pa.bool_()),  # tonight's picture is a known or detected placeholder
    ("final_url", pa.string()),  # after redirects
    ("picture_unchecked", pa.bool_()),  # alive on unchanged bytes of a picture we cannot decode (SVG, HEIC)
    ("consecutive_failures", pa.int32()),  # nights in a row (tonight included) the check failed
    ("gone_failures", pa.int32()),  # of those nights, the ones whose answer was 'gone' (404, soft 404, ...)
    ("evidence_failures", pa.int32()),  # of those nights, the ones whose answer was 'gone' or 'no_host'
    ("previous_nights", pa.int32()),  # earlier nights of the history with a verdict for this key
    ("previous_status", pa.string()),  # verdict of the latest earlier night, null without history
    ("newly_dead", pa.bool_()),
    ("revived", pa.bool_()),
    ("dead_since", pa.date32()),  # first night of the current dead streak
    ("ingest_status", pa.string()),  # the snapshot row's status
    ("ingest_sha256", pa.string()),
    ("ingest_phash", pa.string()),
    ("ingest_fetched_at", pa.timestamp("us", tz="UTC")),
    ("snapshot", pa.string()),  # the --snapshot the row came from
]

REFRESH_SCHEMA = pa.schema(REFRESH_FIELDS)
REFRESH_COLUMNS = [name for name, _ in REFRESH_FIELDS]

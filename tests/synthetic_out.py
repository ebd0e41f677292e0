"""Synthetic ingest outputs, made in memory: for report tests (make_rows, write_out), and a table of
fetched pictures as ingest would have written it (fetched_ok_row, write_snapshot_table) for refresh
tests that need no ingest run."""

import datetime
import hashlib
import json
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

from transforms import schema
from transforms.image_checks import inspect_image
from transforms.io.sinks import blob_uri

DATASETS = ("cc3m", "cc12m", "openimages", "zero")
FAILURES = (schema.HTTP_ERROR, schema.TIMEOUT, schema.CONNECTION_ERROR, schema.NOT_IMAGE, schema.DECODE_ERROR)


def make_rows(n=3000, hosts=40, seed=7):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        dataset = DATASETS[i % len(DATASETS)]
        host_index = min(int(rng.expovariate(0.15)), hosts - 1)
        ok_rate = 0.95 if host_index % 3 else 0.35
        status = schema.OK if rng.random() < ok_rate else rng.choice(FAILURES)
        row = schema.new_row(
            dataset, f"{dataset}:{i}", f"https://img{host_index}.example.org/p/{i}.jpg", "a caption", status=status
        )
        row["fetch_ms"] = int(rng.lognormvariate(5.0, 1.0)) if status != schema.TIMEOUT else 20000
        if status in (schema.OK, schema.NOT_IMAGE, schema.DECODE_ERROR):
            row["size_bytes"] = int(rng.lognormvariate(11.0, 1.2))
        if status != schema.OK:
            row["error"] = {
                schema.HTTP_ERROR: "HTTP 404 Not Found",
                schema.TIMEOUT: "no complete response",
                schema.CONNECTION_ERROR: "cannot connect",
                schema.NOT_IMAGE: "text/html",
                schema.DECODE_ERROR: "truncated",
            }[status]
        row["is_canonical"] = True
        rows.append(row)
    # clusters: every 25th ok row duplicates the next two rows (often across datasets)
    for i in range(0, n - 2, 25):
        members = rows[i : i + 3]
        for j, row in enumerate(members):
            row["cluster_id"] = f"c{i}"
            row["is_canonical"] = j == 0
    return rows


def write_out(out, rows, with_metrics=True):
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    table = pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA)
    half = len(rows) // 2
    pq.write_table(table.slice(0, half), os.path.join(out, "images", "part-00000-of-00002.parquet"))
    pq.write_table(table.slice(half), os.path.join(out, "images", "part-00001-of-00002.parquet"))
    counts = {}
    for r in rows:
        counts.setdefault(r["dataset"], {}).setdefault(r["status"], 0)
        counts[r["dataset"]][r["status"]] += 1
    summary = {
        "job": "ingest",
        "rows": len(rows),
        "counts": counts,
        "duplicates": {
            "clusters": sum(1 for r in rows if r["cluster_id"] and r["is_canonical"]),
            "blobs": 42,
            "pairs_by_dataset": {"cc3m|cc12m": 30, "cc3m|cc3m": 5},
        },
        "timings": {"started_at": "2026-01-01T00:00:00Z", "wall_seconds": 12.5, "rows_per_second": 240.0},
        "options": {"timeout": 20.0},
    }
    if with_metrics:
        summary["metrics"] = {
            "counters": {"fetch": {"ok": 10, "bytes": 123456}},
            "distributions": {"fetch": {"latency_ms": {"count": 3, "sum": 30, "min": 5, "max": 20, "mean": 10.0}}},
        }
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle)
    return summary


def fetched_ok_row(key, url, body, caption="a caption", **fields):
    """The `ok` row ingest writes for a picture fetched from `url` with these bytes (hashes, size,
    format), fetched on 2030-01-01 unless `fields` say otherwise."""
    check = inspect_image(body)
    row = schema.new_row(
        "cc3m",
        key,
        url,
        caption,
        status=schema.OK,
        http_status=200,
        sha256=hashlib.sha256(body).hexdigest(),
        phash=check.phash,
        dhash=check.dhash,
        width=check.width,
        height=check.height,
        format="JPEG",
        content_type="image/jpeg",
        size_bytes=len(body),
        fetched_at=datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc),
    )
    row.update(fields)
    return row


def row_with_blob(out, dataset, key, body):
    """fetched_ok_row for `body` at http://a.example/KEY.jpg, its blob stored under OUT/blobs as
    ingest stores it (content-addressed), for tests that export or drop rows."""
    blob = blob_uri(out, hashlib.sha256(body).hexdigest(), "JPEG")
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    with open(blob, "wb") as handle:
        handle.write(body)
    return fetched_ok_row(key, f"http://a.example/{key}.jpg", body, dataset=dataset, blob=blob, is_placeholder=False)


def write_snapshot_table(directory, rows):
    """DIRECTORY/images/part-0.parquet of `rows` (no summary.json: read as an older output); returns DIRECTORY."""
    os.makedirs(os.path.join(directory, "images"))
    table = pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA)
    pq.write_table(table, os.path.join(directory, "images", "part-0.parquet"))
    return directory

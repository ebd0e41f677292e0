"""Cost of a refresh night against a loopback web whose URLs mostly did not change.

    python -m bench.bench_refresh [--urls 3000] [--runner FnApiRunner|default] [--workdir bench/work]

Builds a snapshot of N rows (no ingest run: rows written straight to Parquet), serves a web where
60% of the URLs have an ETag and answer 304, 20% have no validator and are unchanged, 8% are 404,
6% serve another picture and 6% a recompressed copy; then times one refresh night and reports
rows/s, requests per URL and the body bytes the night downloaded against a plain GET of every URL.
Everything is on 127.0.0.1, so the figures are the job's own overhead, not the Internet's.
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import Reply, SampleWebServer, encode, jpeg, picture
from transforms import schema
from transforms.image_checks import inspect_image

JPEG = {"Content-Type": "image/jpeg"}


def build(web, n, snapshot_dir, pictures=50):
    bodies = [jpeg(seed) for seed in range(pictures)]
    hashes = [(hashlib.sha256(b).hexdigest(), inspect_image(b).phash) for b in bodies]
    recompressed = [encode(picture(seed).resize((160, 120)), "JPEG", quality=60) for seed in range(pictures)]
    served = {"bytes": 0}
    lock = threading.Lock()

    def route(kind, i):
        body = bodies[i % pictures]
        etag = f'"e{i}"'
        other = jpeg(1000 + i) if kind == "changed" else None  # each its own: one shared would be a placeholder

        def answer(method, headers, _count):
            if kind == "etag" and headers.get("If-None-Match") == etag:
                return Reply(304, b"", {"ETag": etag})
            if kind == "dead":
                return Reply(404, b"")
            out = {"changed": other, "recompressed": recompressed[i % pictures]}.get(kind, body)
            if method == "GET":
                with lock:
                    served["bytes"] += len(out)
            return Reply(200, out, dict(JPEG, ETag=etag) if kind == "etag" else JPEG)

        return answer

    rows, full = [], 0
    for i in range(n):
        r = i % 50
        kind = (
            "etag" if r < 30 else "plain" if r < 40 else "dead" if r < 44 else "changed" if r < 47 else "recompressed"
        )
        path = f"/img/{i}.jpg"
        web.routes[path] = route(kind, i)
        sha256, phash = hashes[i % pictures]
        full += len(bodies[i % pictures]) if kind != "dead" else 0
        rows.append(
            schema.to_parquet_record(
                schema.new_row(
                    "cc12m",
                    f"cc12m:{i + 1}",
                    url=web.url(path),
                    status=schema.OK,
                    sha256=sha256,
                    phash=phash,
                    etag=f'"e{i}"' if kind == "etag" else None,
                    size_bytes=len(bodies[i % pictures]),
                    fetched_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
                )
            )
        )
    os.makedirs(os.path.join(snapshot_dir, "images"), exist_ok=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema.IMAGE_SCHEMA), os.path.join(snapshot_dir, "images", "part-0.parquet")
    )
    return served, full


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--urls", type=int, default=3000)
    parser.add_argument("--runner", default="FnApiRunner", help="'default': the job's local default (multi-processing)")
    parser.add_argument("--workdir", default="bench/work/refresh")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    with SampleWebServer() as web:
        served, full = build(web, args.urls, os.path.join(args.workdir, "snapshot"))
        out = os.path.join(args.workdir, "out")
        started = time.time()
        runner = [] if args.runner == "default" else [f"--runner={args.runner}"]
        refresh_job.run(
            runner
            + [
                f"--snapshot={args.workdir}/snapshot",
                f"--output={out}",
                "--night=2026-02-01",
                "--allow-network=127.0.0.1/32",
                "--per-host=64",
                "--host-failure-limit=1000000",
            ]
        )
        wall = time.time() - started
        hits = sum(web.hits.values())
    with open(os.path.join(out, "summary.json")) as handle:
        summary = json.load(handle)
    print(
        json.dumps(
            {
                "urls": args.urls,
                "runner": args.runner,
                "wall_seconds": round(wall, 2),
                "rows_per_second": round(args.urls / wall, 1),
                "requests": hits,
                "requests_per_url": round(hits / args.urls, 3),
                "body_bytes_downloaded": served["bytes"],
                "body_bytes_if_every_url_were_downloaded": full,
                "verdicts": summary["verdict_totals"],
                "methods": summary["methods"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Writing the dataset: Parquet rows, content-addressed blobs, summary.json. Local or gs://."""
import json
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import schema

_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif",
               "MPO": "jpg", "ICO": "ico", "AVIF": "avif", "HEIF": "heic"}


def join_path(base, *parts):
    return FileSystems.join(base.rstrip("/"), *parts)


def blob_uri(out_dir, sha256, fmt=None):
    """OUT/blobs/ab/cd/<sha256>.<ext>: two fan-out levels keep directory listings small."""
    name = f"{sha256}.{_EXTENSIONS.get(fmt or '', 'bin')}"
    return join_path(out_dir, "blobs", sha256[:2], sha256[2:4], name)


class WriteBlobDoFn(beam.DoFn):
    """Writes one blob unless it exists. Idempotent, so a retried bundle rewrites the same bytes."""

    def setup(self):
        self._written = beam.metrics.Metrics.counter("blobs", "written")
        self._existing = beam.metrics.Metrics.counter("blobs", "already_stored")
        self._bytes = beam.metrics.Metrics.counter("blobs", "bytes_written")

    def process(self, item):
        uri, body = item
        if FileSystems.exists(uri):
            self._existing.inc()
            return
        # Write aside then rename: a reader never sees half a blob, even on local disk.
        temporary = f"{uri}.tmp-{time.monotonic_ns()}"
        with FileSystems.create(temporary) as handle:
            handle.write(body)
        try:
            FileSystems.rename([temporary], [uri])
        except Exception:
            if not FileSystems.exists(uri):
                raise
            FileSystems.delete([temporary])  # another worker stored the same bytes first
        self._written.inc()
        self._bytes.inc(len(body))
        yield uri


class WriteBlobs(beam.PTransform):
    """Rows carrying `_body` -> each distinct sha256 written once under OUT/blobs/."""

    def expand(self, rows):
        return (
            rows
            | "WithBytes" >> beam.FlatMap(lambda row: [(row["blob"], row["_body"])] if row.get("_body") else [])
            # One copy per blob crosses the shuffle: the combine is lifted before it.
            | "OnePerBlob" >> beam.CombinePerKey(_any_one)
            | "Store" >> beam.ParDo(WriteBlobDoFn())
        )


def _any_one(values):
    for value in values:
        return value
    return None


def assign_blob_uri(row, out_dir):
    if row.get("status") == schema.OK and row.get("sha256"):
        row["blob"] = blob_uri(out_dir, row["sha256"], row.get("format"))
    return row


class WriteImageTable(beam.PTransform):
    """Rows -> OUT/images/part-*.parquet with the contract's schema. Returns the written file names."""

    def __init__(self, out_dir, num_shards=0):
        super().__init__()
        self._out_dir = out_dir
        self._num_shards = num_shards

    def expand(self, rows):
        return (
            rows
            | "PublicColumns" >> beam.Map(schema.to_parquet_record)
            | "Parquet" >> beam.io.WriteToParquet(
                join_path(self._out_dir, "images", "part"),
                schema.IMAGE_SCHEMA,
                file_name_suffix=".parquet",
                num_shards=self._num_shards,
                record_batch_size=1000,
            )
        )


@beam.ptransform_fn
def StatusCounts(rows):  # noqa: N802 (a PTransform)
    """Rows -> one dict {dataset: {status: n}}."""
    return (
        rows
        | "DatasetStatus" >> beam.Map(lambda row: ((row["dataset"], row["status"]), 1))
        | "CountEach" >> beam.CombinePerKey(sum)
        | "AllCounts" >> beam.combiners.ToList()
        | "AsTable" >> beam.Map(_nest_counts)
    )


def _nest_counts(pairs):
    table = {}
    for (dataset, status), count in sorted(pairs):
        table.setdefault(dataset, {})[status] = count
    return table


def build_summary(counts, duplicates, started_at, job, options_snapshot):
    totals = {}
    for per_status in counts.values():
        for status, count in per_status.items():
            totals[status] = totals.get(status, 0) + count
    rows = sum(totals.values())
    elapsed = max(time.time() - started_at, 1e-9)
    return {
        "job": job,
        "rows": rows,
        "counts": counts,
        "status_totals": dict(sorted(totals.items())),
        "ok_fraction": round(totals.get(schema.OK, 0) / rows, 4) if rows else None,
        "duplicates": duplicates,
        "timings": {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
            "wall_seconds": round(elapsed, 3),
            "rows_per_second": round(rows / elapsed, 2),
        },
        "options": options_snapshot,
    }


def write_json(path, payload):
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode("utf-8"))
    return path


def read_json(path):
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


class WriteSummary(beam.PTransform):
    """OUT/summary.json, written once the tables it describes are finalised."""

    def __init__(self, out_dir, started_at, job, options_snapshot=None):
        super().__init__()
        self._out_dir = out_dir
        self._started_at = started_at
        self._job = job
        self._options = options_snapshot or {}

    def expand(self, inputs):
        counts, duplicates, written = inputs["counts"], inputs["duplicates"], inputs["written"]
        path = join_path(self._out_dir, "summary.json")
        started_at, job, options = self._started_at, self._job, self._options
        return (
            counts.pipeline
            | "Once" >> beam.Create([None])
            | "Write" >> beam.Map(
                lambda _, counts, duplicates, written: write_json(
                    path, build_summary(counts, duplicates, started_at, job, options)),
                counts=beam.pvalue.AsSingleton(counts),
                duplicates=beam.pvalue.AsSingleton(duplicates),
                written=beam.pvalue.AsList(written),
            )
        )

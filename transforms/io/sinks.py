"""Writing the dataset: content-addressed blobs, summary.json, and the path and JSON helpers. Local or gs://.

Public transforms (rows are `schema.Row` dicts):

- `StoreBlobs()`: rows with `_body` -> the same rows without it, `ok` bodies stored under OUT/blobs/.
- `CountBlobs(shards)`: rows -> one `int`, the distinct blobs they point at.
- `StatusCounts()`: rows -> one `{dataset: {status: n}}` dict.
- `delete_tree(directory)`, `join_path`, `absolute_uri`, `read_json`, `write_json`, `publish_file`: path helpers,
  local or gs://.
- `WriteSummary(out_dir, started_at, job, options)`: {"counts", "written", extras...} -> the path of
  OUT/summary.json, once written.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import time
import uuid
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms import schema
from transforms.clustering.spill import split_by

__all__ = [
    "absolute_uri",
    "join_path",
    "file_name",
    "delete_tree",
    "blob_uri",
    "StoreBlobDoFn",
    "StoreBlobs",
    "CountBlobs",
    "assign_blob_uri",
    "StatusCounts",
    "build_summary",
    "write_json",
    "read_json",
    "publish_file",
    "WriteSummary",
]

_EXTENSIONS = {
    "JPEG": "jpg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tif",
    "MPO": "jpg",
    "ICO": "ico",
    "AVIF": "avif",
    "HEIF": "heic",
}


def join_path(base: str, *parts: str) -> str:
    """`base`/`parts` for local paths and gs:// alike (a trailing slash on `base` is harmless)."""
    if "://" not in base:
        # Why not FileSystems.join for local paths too: its scheme lookup scans Beam's plugin
        # classes on every call, ~0.1 ms a blob's temporary name (py-spy --gil, issue 16).
        return os.path.join(base.rstrip("/") or "/", *parts)
    return FileSystems.join(base.rstrip("/"), *parts)


def absolute_uri(path: str) -> str:
    """`path` made absolute when local (against the working directory); gs:// and other URIs as they are.

    Args:
        path: a local path, relative or absolute, or a URI with a scheme.
    Returns:
        The same place, spelt so that it means the same from any working directory.
    """
    return path if "://" in path else os.path.abspath(path)


def file_name(path: str) -> str:
    """The last part of a local or gs:// path."""
    return path.rstrip("/").split("/")[-1]


def delete_tree(directory: str) -> None:
    """Deletes `directory` and what is under it, local or gs:// (on GCS a "directory" is only a
    name prefix: what is under it is deleted, then, locally, the folder itself)."""
    # Why "**" on object stores: there "*" stops at "/", and deeper objects (a run's blob
    # temporaries, history files) were left behind for good; locally each folder goes whole.
    pattern = "**" if "://" in directory else "*"
    files = [m.path for r in FileSystems.match([join_path(directory, pattern)]) for m in r.metadata_list]
    if files:
        FileSystems.delete(files)
    if FileSystems.exists(directory):
        FileSystems.delete([directory])


def blob_uri(out_dir: str, sha256: str, fmt: str | None = None) -> str:
    """OUT/blobs/ab/cd/<sha256>.<ext>: two fan-out levels keep directory listings small."""
    name = f"{sha256}.{_EXTENSIONS.get(fmt or '', 'bin')}"
    return join_path(out_dir, "blobs", sha256[:2], sha256[2:4], name)


class StoreBlobDoFn(beam.DoFn):
    """Stores each ok row's bytes at its content address, then drops them from the row.

    Runs fused with the fetch, so image bytes never cross a shuffle (a shuffle of bodies would hold
    the whole dataset in the local runner's memory). Each blob is written once: skipped when a
    recent row of this worker stored it or when it already exists; if two workers race on the same
    bytes, both write aside and rename onto the same name, leaving one identical blob. Idempotent,
    so a retried bundle rewrites nothing that is there.
    """

    _RECENT = 20_000  # blobs remembered per worker, by a 12-byte digest of the URI: ~3 MB

    def __init__(self, tmp_dir=None):
        # Temporaries go to the run's OUT/_tmp-<run>/blobs/ when given: a crashed run's half
        # written blobs are then removed with that folder by the next run (table.remove_stale_leftovers).
        self._tmp_dir = tmp_dir

    def setup(self):
        self._written = beam.metrics.Metrics.counter("blobs", "written")
        self._existing = beam.metrics.Metrics.counter("blobs", "already_stored")
        self._bytes = beam.metrics.Metrics.counter("blobs", "bytes_written")
        self._recent = collections.OrderedDict()
        self._directories = set()  # OUT/blobs/ab/cd already made by this worker: at most 65,536

    def process(self, row):
        body = row.pop("_body", None)
        uri = row.get("blob")
        if body is not None and uri:
            self._store(uri, body)
        yield row

    def _store(self, uri, body):
        recent = hashlib.blake2b(uri.encode(), digest_size=12).digest()
        if recent in self._recent:
            self._recent.move_to_end(recent)
            self._existing.inc()
            return
        local = "://" not in uri
        if os.path.exists(uri) if local else FileSystems.exists(uri):
            self._existing.inc()
        else:
            # Write aside then rename: a reader never sees half a blob, even on local disk.
            temporary = f"{uri}.tmp-{os.getpid()}-{time.monotonic_ns()}"
            if self._tmp_dir:
                temporary = join_path(self._tmp_dir, "blobs", os.path.basename(temporary))
            if local:
                self._write_local(temporary, uri, body)
            else:
                self._write_remote(temporary, uri, body)
            self._written.inc()
            self._bytes.inc(len(body))
        self._recent[recent] = True
        if len(self._recent) > self._RECENT:
            self._recent.popitem(last=False)

    def _write_local(self, temporary, uri, body):
        # Plain os calls: Beam's FileSystems costs ~0.3 ms of CPU a blob in makedirs and wrappers,
        # a tenth of an image's whole budget. Same bytes under the same name, so a race between
        # two workers replacing each other's file leaves one identical blob.
        for directory in (os.path.dirname(uri), os.path.dirname(temporary)):
            if directory not in self._directories:
                os.makedirs(directory, exist_ok=True)
                self._directories.add(directory)
        try:
            with open(temporary, "wb") as handle:
                handle.write(body)
            os.replace(temporary, uri)
        except OSError:
            with contextlib.suppress(OSError):  # a full disk leaves no half blob behind
                os.remove(temporary)
            raise

    @staticmethod
    def _write_remote(temporary, uri, body):
        with FileSystems.create(temporary) as handle:
            handle.write(body)
        try:
            FileSystems.rename([temporary], [uri])
        except Exception:
            if not FileSystems.exists(uri):
                raise
            FileSystems.delete([temporary])  # another worker stored the same bytes first


class StoreBlobs(beam.PTransform):
    """Rows with `_body` in; the same rows out without it, their bytes stored under OUT/blobs/.

    tmp_dir: the run's temporary folder (table.temporary_dir), where blobs are written aside.
    """

    def __init__(self, tmp_dir=None):
        super().__init__()
        self._tmp_dir = tmp_dir

    def expand(self, rows):
        return rows | "StoreOnce" >> beam.ParDo(StoreBlobDoFn(self._tmp_dir))


@beam.ptransform_fn
def CountBlobs(rows, shards=64):  # noqa: N802 (a PTransform)
    """Distinct blobs the rows point at.

    96-bit digests of the URIs cross the shuffle as numpy arrays, a batch per shard: the local
    runner holds a shuffle's whole input in memory, 12 bytes a row this way instead of a Python
    object per row as with beam.Distinct.
    """
    return (
        rows
        | "BlobUris"
        >> beam.FlatMap(
            lambda row: [hashlib.blake2b(row["blob"].encode(), digest_size=12).digest()] if row.get("blob") else []
        )
        | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=8192)
        | "ToShards" >> beam.FlatMap(_digests_by_shard, shards)
        | "GroupShards" >> beam.GroupByKey()
        | "DistinctInShard" >> beam.MapTuple(lambda _shard, parts: len(np.unique(np.concatenate(list(parts)))))
        | "Count" >> beam.CombineGlobally(sum)
    )


def _digests_by_shard(digests, shards):
    records = np.array(digests, dtype="S12")
    shard_of = np.frombuffer(records.tobytes(), dtype=np.uint8)[::12].astype(np.int64) % shards
    for shard, indices in split_by(shard_of):
        yield shard, records[indices]


def assign_blob_uri(row, out_dir):
    """Sets `blob` to the content address of an `ok` row with a sha256; returns the row."""
    if row.get("status") == schema.OK and row.get("sha256"):
        row["blob"] = blob_uri(out_dir, row["sha256"], row.get("format"))
    return row


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


def build_summary(
    counts: dict[str, dict[str, int]],
    extras: dict[str, Any],
    started_at: float,
    job: str,
    options_snapshot: dict[str, Any],
) -> dict[str, Any]:
    """summary.json's content: counts by dataset x status, totals, `extras`, timings and options."""
    totals: dict[str, int] = {}
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
        **extras,
        "timings": {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
            "wall_seconds": round(elapsed, 3),
            "rows_per_second": round(rows / elapsed, 2),
        },
        "options": options_snapshot,
    }


def write_json(path: str, payload: Any, sort_keys: bool = True) -> str:
    """Writes `payload` as indented JSON to a local or gs:// path, whole or not at all; returns the path.

    A gs:// object appears only once its upload is complete; a local file is written under a
    temporary name beside `path` and renamed onto it (removed again when the write fails).
    Why: written in place, a full disk left OUT/summary.json empty, and with it the record of the
    table OUT/images still held (every later reader refused OUT: "not a readable summary").
    """
    data = json.dumps(payload, indent=2, sort_keys=sort_keys, default=str).encode("utf-8")
    if "://" in path:
        with FileSystems.create(path, mime_type="application/json") as handle:
            handle.write(data)
        return path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    return path


def publish_file(temporary: str, final: str) -> str:
    """Renames a file written aside onto its final name; a retried step finds it there already.

    Raises:
        OSError: neither name exists (the file written aside was removed before it was published).
    Returns:
        `final`.
    """
    if FileSystems.exists(temporary):
        FileSystems.rename([temporary], [final])
    elif not FileSystems.exists(final):
        raise OSError(f"{temporary} vanished before it reached {final}")
    return final


def read_json(path: str) -> Any:
    """The JSON document at a local or gs:// path."""
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


class WriteSummary(beam.PTransform):
    """OUT/summary.json, written once the tables it describes are finalised."""

    def __init__(self, out_dir, started_at, job, options_snapshot=None, check=None, on_failed_check=None, guard=None):
        """check: called with the summary once it is written (e.g. books.check_books, which raises
        when the books do not balance, failing the run with summary.json in place).
        on_failed_check: called with the "written" list before a failed check's error, or a failed
        write of summary.json, goes on (e.g. removing the files this run wrote, table_record.roll_back).
        guard: a LeaseGuard confirmed before summary.json is written (lost: as a failed check)."""
        super().__init__()
        self._out_dir = out_dir
        self._started_at = started_at
        self._job = job
        self._options = options_snapshot or {}
        self._check = check
        self._on_failed_check = on_failed_check
        self._guard = guard

    def expand(self, inputs):
        """inputs: "counts" (StatusCounts), "written" (file names to wait for), and any other
        name -> a one-element PCollection, placed in the summary under that name."""
        path = join_path(self._out_dir, "summary.json")
        started_at, job, options, check = self._started_at, self._job, self._options, self._check
        on_failed_check, guard = self._on_failed_check, self._guard
        names = sorted(name for name in inputs if name not in ("counts", "written"))
        side = {f"extra_{name}": beam.pvalue.AsSingleton(inputs[name]) for name in names}

        def write(_, counts, written, **extras):
            extras = {name: extras[f"extra_{name}"] for name in names}
            summary = build_summary(counts, extras, started_at, job, options)
            try:
                if guard is not None:
                    guard.confirm()
                # Why inside: a summary that cannot be written (a full disk) leaves the previous
                # one, which records the previous table; this run's files must go as after a failed check.
                write_json(path, summary)
                if check is not None:
                    check(summary)
            except Exception:
                if on_failed_check is not None:
                    on_failed_check(written)
                raise
            return path

        return (
            inputs["counts"].pipeline
            | "Once" >> beam.Create([None])
            | "Write"
            >> beam.Map(
                write,
                counts=beam.pvalue.AsSingleton(inputs["counts"]),
                written=beam.pvalue.AsList(inputs["written"]),
                **side,
            )
        )

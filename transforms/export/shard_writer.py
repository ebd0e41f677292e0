"""Deterministic shard assignment and two-phase shard writing, shared by both export formats.

Assignment (`AssignShards`): every selected row gets a global index 0..n-1 in a fixed order (a
stable hash of its key picks a bucket, buckets in order, keys sorted within one), and shard
`index // shard_size`. The same input always gives the same shards, each of exactly shard_size
rows but the last, and the same sample keys (the index, zero-padded: no dots, unique); the hash
mixes datasets and sources across shards, as training wants.

Writing (`ShardWriterDoFn`, `publish_shard`): a shard is written under EXP/_tmp-<run>/; once every
shard is written, each is renamed onto its deterministic final name EXP/<shard:05d>.<ext>. A
retried bundle writes its shard again under another temporary name and only the committed one is
renamed: never a duplicate, never half a shard visible under a final name, and an interrupted
export leaves an earlier export's shards as they were. Blobs are read and resized on a thread pool
(Pillow and hashlib release the GIL), a bounded window ahead of the writer, so a shard's images are
never all in memory.
"""

import collections
import concurrent.futures
import contextlib
import errno
import hashlib
import logging
import math
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from transforms.export.cluster_fallback import FALLBACK_MEMBERS, FALLBACKS
from transforms.export.resize import ExportedImage, ResizeConfig, ResizeError, TooLargeError, export_image
from transforms.export.selection import NON_CANONICAL, TOO_LARGE, UNREADABLE_BLOB
from transforms.io.lease_guard import LeaseGuard, publish_held
from transforms.io.sinks import blob_uri, join_path

__all__ = [
    "AssignShards",
    "ShardWriterDoFn",
    "original_extension",
    "publish_shard",
    "read_blob",
    "sample_key",
    "shard_name",
]

_LOG = logging.getLogger(__name__)

# OSErrors of a blob that is not there: the row is skipped (`unreadable_blob`); any other OSError of a
# read is the environment failing (permission, I/O error, storage unreachable) and fails the export.
_BLOB_ABSENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError)

# Original formats whose bytes go out under another extension than Pillow's own name for them:
# why: readers pick a decoder by extension, and webdataset's knows jpg, not mpo.
_EXTENSION_OF_FORMAT = {"JPEG": "jpg", "MPO": "jpg"}

# (the record exported or skipped, its image or skip reason, counts of the rows it carried along)
_Prepared = tuple[dict, ExportedImage | str, dict[str, int]]


def sample_key(index: int) -> str:
    """The WebDataset key of the sample with global index `index`: digits only (no dots)."""
    return f"{index:09d}"


def shard_name(shard: int, extension: str) -> str:
    """EXP/<name> of shard number `shard`: 00000.tar, 00001.tar, ... as img2dataset names them."""
    return f"{shard:05d}.{extension}"


def _bucket_count(total: int, bucket_rows: int) -> int:
    return max(1, math.ceil(total / bucket_rows))


def _bucket_of(key: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") % buckets


def _keyed_by_bucket(record, total, bucket_rows):
    return _bucket_of(record["key"], _bucket_count(total, bucket_rows)), record


def _index_bucket(element, sizes, shard_size):
    bucket, records = element
    offset = sum(count for other, count in sizes.items() if other < bucket)
    for position, record in enumerate(sorted(records, key=lambda r: r["key"])):
        index = offset + position
        yield index // shard_size, (index, record)


class AssignShards(beam.PTransform):
    """Records (dicts with a unique "key") -> (shard number, [(global index, record), ...]).

    Args:
        shard_size: rows per shard (the last shard holds the rest).
        bucket_rows: rows per bucket of the first grouping (a bucket is sorted in memory).

    Returns:
        A PCollection of (shard, items); items in any order (sort by index).
    """

    def __init__(self, shard_size: int, bucket_rows: int = 20_000):
        super().__init__()
        if shard_size < 1:
            raise ValueError(f"shard size must be >= 1, got {shard_size}")
        self._shard_size = shard_size
        self._bucket_rows = bucket_rows

    def expand(self, records):
        # why: the bucket count follows the row count, so a bucket's sort stays small at any scale
        total = records | "CountRows" >> beam.combiners.Count.Globally()
        keyed = records | "Bucket" >> beam.Map(
            _keyed_by_bucket, total=beam.pvalue.AsSingleton(total), bucket_rows=self._bucket_rows
        )
        # why: a bucket's first index is the number of rows in the buckets before it
        sizes = keyed | "BucketIds" >> beam.Keys() | "BucketSizes" >> beam.combiners.Count.PerElement()
        return (
            keyed
            | "GroupBuckets" >> beam.GroupByKey()
            | "Index" >> beam.FlatMap(_index_bucket, sizes=beam.pvalue.AsDict(sizes), shard_size=self._shard_size)
            # why: a shard's rows can come from two buckets
            | "GroupShards" >> beam.GroupByKey()
        )


def read_blob(uri: str) -> bytes:
    """The bytes at `uri`: a local path (read directly, cheaper than Beam's wrappers) or gs://.

    Args:
        uri: a local path or a URI Beam's FileSystems open.

    Returns:
        The object's bytes.

    Raises:
        FileNotFoundError: no such file or gs:// object.
    """
    if "://" not in uri:
        with open(uri, "rb") as handle:
            return handle.read()
    if not uri.startswith("gs://"):
        with FileSystems.open(uri, compression_type="uncompressed") as handle:
            return handle.read()
    from google.api_core.exceptions import NotFound  # noqa: PLC0415 (only for gs:// blobs)

    try:
        with FileSystems.open(uri, compression_type="uncompressed") as handle:
            return handle.read()
    except NotFound:
        # why: gcsio raises google's NotFound, no OSError: a gs:// blob missing (deleted, or OUT
        # copied elsewhere) failed the whole export (exit 1) where a local one is skipped or
        # found under OUT/blobs/.
        raise FileNotFoundError(errno.ENOENT, "no such object", uri) from None


def original_extension(record: dict) -> str:
    """File extension of a row's original bytes, one its format is known by.

    Args:
        record: an export record, with the table's `format` (Pillow's name) and `blob`.

    Returns:
        jpg for JPEG and MPO; else the format's own name if Pillow registers it as an extension of
        that format (png, gif, webp, bmp, tiff, ppm, tga, ...), else the first one Pillow registers
        (jp2 for JPEG2000); for a format Pillow does not know, its blob's extension.
    """
    fmt = record.get("format") or ""
    if fmt in _EXTENSION_OF_FORMAT:
        return _EXTENSION_OF_FORMAT[fmt]
    # why: readers pick a decoder by the extension (webdataset's decode("pil") leaves a ".bin" as
    # bytes), and the blob's name is "bin" for every format ingest's blob names do not list
    registered = [ext.lstrip(".") for ext, name in Image.registered_extensions().items() if fmt and name == fmt]
    if registered:
        return fmt.lower() if fmt.lower() in registered else registered[0]
    name = posixpath.basename(record.get("blob") or "")
    return name.rsplit(".", 1)[-1].lower() if "." in name else "bin"


class ShardWriterDoFn(beam.DoFn):
    """(shard, items) -> a shard file in EXP and its record for summary.json.

    Subclasses write the format: `extension`, `open_shard(handle)`, `write_sample(writer, key,
    record, image)` and `close_shard(writer)`. `shard` is a number, or (split name, number) for
    EXP/NAME/<number>. The record yielded: {"name" (relative to EXP), "split", "path", "samples",
    "bytes", "unreadable_blob", "too_large", "non_canonical", "fallback_members", "first_index",
    "last_index"}. A record with FALLBACKS (a cluster's canonical row, transforms.export.cluster_fallback)
    whose blob is unreadable is exported through the first of them that can be read.
    """

    extension = "bin"

    def __init__(
        self,
        output_dir: str,
        tmp_dir: str,
        resize: ResizeConfig,
        threads: int | None = None,
        input_dir: str | None = None,
    ):
        """Args: output_dir: EXP; tmp_dir: where shards are written before the rename; resize: the
        image settings; threads: blob readers and resizers (default: one per core); input_dir: OUT,
        whose blobs/ is tried when a row's blob is not where the row says (OUT copied or moved)."""
        self._output_dir = output_dir
        self._tmp_dir = tmp_dir
        self._resize = resize
        self._threads = threads
        self._input_dir = input_dir

    def setup(self):
        threads = self._threads or os.cpu_count() or 2
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="export")
        self._window = 4 * threads
        self._samples = beam.metrics.Metrics.counter("export", "samples")
        self._unreadable = beam.metrics.Metrics.counter("export", UNREADABLE_BLOB)
        self._too_large = beam.metrics.Metrics.counter("export", TOO_LARGE)
        self._fallbacks = beam.metrics.Metrics.counter("export", FALLBACK_MEMBERS)
        self._bytes = beam.metrics.Metrics.counter("export", "bytes")

    def teardown(self):
        self._pool.shutdown(wait=False)

    def process(self, element):
        shard, items = element
        # why: a split's shards (splits.SplitShards) are keyed (split name, number), EXP/NAME/00000.tar
        split, number = shard if isinstance(shard, tuple) else (None, shard)
        items = sorted(items, key=lambda item: item[0])
        name = shard_name(number, self.extension) if split is None else f"{split}/{shard_name(number, self.extension)}"
        final = join_path(self._output_dir, name)
        temporary = join_path(self._tmp_dir, f"{name.replace('/', '-')}-{uuid.uuid4().hex}")
        samples = 0
        # why: a record carries its cluster's fallback members, each counted here once
        counts = dict.fromkeys((UNREADABLE_BLOB, TOO_LARGE, NON_CANONICAL, FALLBACK_MEMBERS), 0)
        with FileSystems.create(temporary, compression_type="uncompressed") as handle:
            writer = self.open_shard(handle)
            try:
                for index, (record, image, carried) in self._prepared(items):
                    for counted, count in carried.items():
                        counts[counted] += count
                    if isinstance(image, str):  # a skip reason
                        counts[image] += 1
                        continue
                    self.write_sample(writer, sample_key(index), record, image)
                    samples += 1
            except Exception:
                # why: a writer left open (a tar stream, a ParquetWriter) is closed by the garbage
                # collector at the process's exit, onto the closed file: a traceback after the
                # job's one line. Closed here, into a temporary that is never published.
                with contextlib.suppress(Exception):
                    self.close_shard(writer)
                raise
            self.close_shard(writer)
        size = FileSystems.match([temporary])[0].metadata_list[0].size_in_bytes
        self._samples.inc(samples)
        self._unreadable.inc(counts[UNREADABLE_BLOB])
        self._too_large.inc(counts[TOO_LARGE])
        self._fallbacks.inc(counts[FALLBACK_MEMBERS])
        self._bytes.inc(size)
        yield {
            "name": name,  # relative to EXP
            "split": split,
            "path": final,
            "temporary": temporary,  # renamed onto `path` by publish_shard, once every shard is written
            "samples": samples,
            "bytes": size,
            **counts,  # unreadable_blob, too_large, non_canonical, fallback_members
            "first_index": items[0][0] if items else None,
            "last_index": items[-1][0] if items else None,
        }

    def _prepared(self, items: list[tuple[int, dict]]) -> Iterator[tuple[int, _Prepared]]:
        window: collections.deque[tuple[int, concurrent.futures.Future[_Prepared]]] = collections.deque()
        for index, record in items:
            window.append((index, self._pool.submit(self._prepare_cluster, record)))
            if len(window) >= self._window:
                index_, future = window.popleft()
                yield index_, future.result()
        while window:
            index_, future = window.popleft()
            yield index_, future.result()

    def _prepare_cluster(self, record: dict) -> _Prepared:
        """(the record exported or skipped, its image or skip reason, counts of the rows carried
        along: the record's FALLBACKS). Its fallbacks are tried in order only when it cannot be
        exported itself (its blob unreadable, or its picture too large for the export's size or
        format): the first that can is exported in its place (the record then counts as
        unreadable_blob or too_large), every other one counts as non_canonical."""
        members = record.get(FALLBACKS) or ()
        image = self._prepare(record)
        if not isinstance(image, str) or not members:
            return record, image, {NON_CANONICAL: len(members)}
        for member in members:
            found = self._prepare(member, instead_of=record)
            if not isinstance(found, str):
                _LOG.warning(
                    "export: cluster %s: canonical %s %s, exported %s in its place",
                    record.get("cluster_id"),
                    record.get("key"),
                    "too large" if image == TOO_LARGE else "unreadable",
                    member.get("key"),
                )
                carried = {image: 1, NON_CANONICAL: len(members) - 1, FALLBACK_MEMBERS: 1}
                return member, found, carried
        return record, image, {NON_CANONICAL: len(members)}

    def _prepare(self, record: dict, instead_of: dict | None = None) -> ExportedImage | str:
        """The exported image of one record, else why it is skipped (logged): UNREADABLE_BLOB (the
        blob is missing, not the row's bytes or not an image) or TOO_LARGE (see TooLargeError).
        `instead_of`: the canonical record `record` would stand in for (said in the log)."""
        uri = record.get("blob")
        what = record.get("key") if instead_of is None else f"{record.get('key')} (for {instead_of.get('key')})"
        try:
            if not uri:
                raise ResizeError("the row has no blob")
            data = self._read(uri, record)
            if record.get("sha256") and hashlib.sha256(data).hexdigest() != record["sha256"]:
                raise ResizeError("the blob's bytes are not the row's sha256")
            return export_image(data, self._resize, original_extension(record))
        except TooLargeError as exc:
            _LOG.warning("export: %s skipped, too large to export: %s", what, exc)
            return TOO_LARGE
        except (*_BLOB_ABSENT, ResizeError) as exc:
            # why: only a blob that is not there (or not the row's picture) is the row's own loss; a
            # blob the environment will not hand over (permission, I/O error, storage unreachable)
            # propagates and fails the export, exit 1: skipped, every row of an unreadable blobs/
            # was `unreadable_blob` and an empty export replaced the earlier one with exit 0.
            _LOG.warning("export: %s skipped, blob %s unreadable: %s", what, uri, exc)
            return UNREADABLE_BLOB

    def _read(self, uri: str, record: dict) -> bytes:
        try:
            return read_blob(uri)
        except OSError:
            # why: any failure at the recorded path may be an OUT copied or moved away from it (the
            # old place gone or another user's); the copy's own blobs/ decides
            moved = (
                self._input_dir
                and record.get("sha256")
                and blob_uri(self._input_dir, record["sha256"], record.get("format"))
            )
            if not moved or moved == uri:
                raise
            return read_blob(moved)

    # -- the format -------------------------------------------------------------------------------
    def open_shard(self, handle):  # pragma: no cover (abstract)
        raise NotImplementedError

    def write_sample(self, writer, key: str, record: dict, image: ExportedImage):  # pragma: no cover
        raise NotImplementedError

    def close_shard(self, writer):  # pragma: no cover
        raise NotImplementedError


def publish_shard(record: dict, books: dict | None = None, guard: LeaseGuard | None = None, tmp_dir: str = "") -> dict:
    """Renames a shard written by ShardWriterDoFn from its temporary name onto its final one.

    Run once every shard is written and the job's books balance (`books`, the checked books as a
    side input, only orders it): why, an export interrupted while writing, or whose books fail, leaves
    EXP as the earlier export left it, never its shards half replaced (a mix of two exports, the
    rows between them doubled or lost). Idempotent: a retried rename finds its shard in place.

    `guard` (a LeaseGuard) confirms the lease first: lost, the run's folder aside (`tmp_dir`) goes.

    Returns:
        The record without its temporary name.
    """
    if "://" not in record["path"]:  # why: a local rename needs a split's folder; object stores have none
        os.makedirs(os.path.dirname(record["path"]), exist_ok=True)
    publish_held(guard, record["temporary"], record["path"], [tmp_dir + "/"] if tmp_dir else [])
    return {name: value for name, value in record.items() if name != "temporary"}


def sample_metadata(key: str, record: dict, image: ExportedImage) -> dict:
    """The per-sample metadata both formats carry (the WebDataset .json, the Parquet columns)."""
    return {
        "key": record["key"],
        "sample_key": key,
        "dataset": record.get("dataset"),
        "url": record.get("url"),
        "caption": record.get("caption"),
        "sha256": record.get("sha256"),
        "phash": record.get("phash"),
        "width": image.width,
        "height": image.height,
        "original_width": image.original_width,
        "original_height": image.original_height,
        "labels": [dict(label) for label in record.get("labels") or []],
        "cluster_id": record.get("cluster_id"),
    }


def shard_records_in_order(records: Iterable[dict]) -> list[dict]:
    return sorted(records, key=lambda r: r["name"])

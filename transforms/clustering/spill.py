"""GroupByKeys that keep their elements in files: the on-disk shuffle of local runs.

The local FnApi runner holds each shuffle's whole input in memory, encoded and decoded (several
copies), so any per-row shuffle makes a local run's memory grow with the manifest. Dedup's keys
and the near search's hashes are fixed-size numpy records; on a local runner (one machine, one
filesystem) they can go through files instead: each bundle appends its records to one file per
key, only the file paths cross the runner's shuffle, and the consumer of a key reads its files
back. Memory then holds a bundle's write buffer and one key's records, whatever the row count.
Dataflow's shuffle is on disk already; there the plain GroupByKey is used (files written by one
worker's local disk are not visible to another).

Exactly once: a bundle's paths are emitted only from its finish_bundle, so the files of a failed
and retried bundle are never read (they are removed with the directory).

Public transform: `GroupRecords(directory, dtype_of)`: `(key, numpy record array)` ->
`(key, [record arrays])` (`SpillRecords` is its DoFn; `split_by` and `load_records` its helpers);
with `chunk_records`, `(key, RecordFiles)` instead: a key's records read back in bounded chunks
each time they are iterated, for a consumer whose group need not sit in memory at once.

Public transform: `GroupEncoded(directory, buckets)`: `(key, any picklable value)` -> `(key,
EncodedGroup)`, for groups of Python objects (dedup's clustered rows): values go pickled into
one file per bucket of keys and bundle, and a key's group is read back from its byte ranges each
time it is iterated. Memory holds a bucket's index (a key and two integers a value), never a
group's values at once, however large a group (a placeholder's) or how many rows are clustered.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms.window import GlobalWindows

__all__ = [
    "SpillRecords",
    "split_by",
    "load_records",
    "RecordFiles",
    "GroupRecords",
    "SpillEncoded",
    "EncodedGroup",
    "GroupEncoded",
]


class _BundleFiles(beam.DoFn):
    """What SpillRecords and SpillEncoded share: byte parts buffered per group (a key, a bucket),
    all buffers appended to the bundle's file of their group past `flush_bytes`, and at the end of
    the bundle one (group, path) per file written."""

    _SUFFIX = ".bin"
    _COUNTER = "bytes"

    def __init__(self, directory: str, flush_bytes: int = 4 << 20) -> None:
        self._directory = directory
        self._flush_bytes = flush_bytes

    def setup(self):
        self._spilled = beam.metrics.Metrics.counter("spill", self._COUNTER)

    def start_bundle(self):
        self._buffers, self._paths, self._buffered = {}, {}, 0

    def _append(self, group, parts):
        self._buffers.setdefault(group, []).extend(parts)
        self._buffered += sum(len(part) for part in parts)
        if self._buffered >= self._flush_bytes:
            self._flush()

    def _flush(self):
        for group, parts in self._buffers.items():
            path = self._paths.get(group)
            if path is None:
                if not self._paths:  # made on the first write: a DoFn set up but never fed leaves nothing
                    os.makedirs(self._directory, exist_ok=True)
                name = "-".join(map(str, group)) if isinstance(group, tuple) else str(group)
                path = self._paths[group] = os.path.join(self._directory, f"{name}-{uuid.uuid4().hex}{self._SUFFIX}")
            with open(path, "ab") as handle:
                handle.writelines(parts)
        self._spilled.inc(self._buffered)
        self._buffers, self._buffered = {}, 0

    def finish_bundle(self):
        self._flush()
        for group, path in self._paths.items():
            yield GlobalWindows.windowed_value((group, path))


class SpillRecords(_BundleFiles):
    """(key, record array) -> at the end of the bundle, (key, path) of the file holding all the
    bundle's records of that key. Buffered writes: all buffers go to disk past `flush_bytes`."""

    def process(self, element):
        key, records = element
        self._append(key, [records.tobytes()])


def split_by(values: np.ndarray) -> Iterator[tuple[Any, np.ndarray]]:
    """(value, indices holding it) for each distinct value, indices in their original order."""
    order = np.argsort(values, kind="stable")
    distinct, starts = np.unique(values[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    for value, lo, hi in zip(distinct.tolist(), starts.tolist(), ends.tolist(), strict=True):
        yield value, order[lo:hi]


def load_records(paths: Iterable[str], dtype: np.dtype) -> np.ndarray:
    """The records of every file, one array."""
    parts = [np.fromfile(path, dtype=dtype) for path in paths]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


class RecordFiles:
    """The records of a key's spill files, read back in chunks of at most `chunk` records each
    time it is iterated: a re-iterable whose memory is one chunk, not the key's whole group."""

    def __init__(self, paths: Iterable[str], dtype: np.dtype, chunk: int) -> None:
        self._paths = list(paths)
        self._dtype = dtype
        self._chunk = int(chunk)

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self._paths:
            with open(path, "rb") as handle:
                while True:
                    records = np.fromfile(handle, dtype=self._dtype, count=self._chunk)
                    if not len(records):
                        break
                    yield records


class GroupRecords(beam.PTransform):
    """(key, record array) -> (key, [record arrays]) like GroupByKey, through files in `directory`
    when one is given (local runs only), else through the runner's GroupByKey.

    dtype_of(key): the record dtype of a key's arrays (files hold raw records, no header).
    chunk_records: with a directory, each key's records come as a RecordFiles (read in chunks
        of at most this many records at each iteration) instead of one loaded array; without
        one, the runner's iterable of the arrays as they were emitted. Either can be iterated
        more than once.
    The directory is not removed here: its owner removes it once the consumers are done.
    """

    def __init__(
        self,
        directory: str | None = None,
        dtype_of: Callable[[Any], np.dtype] | None = None,
        flush_bytes: int = 4 << 20,
        chunk_records: int | None = None,
    ) -> None:
        super().__init__()
        self._directory = directory
        self._dtype_of = dtype_of
        self._flush_bytes = flush_bytes
        self._chunk_records = chunk_records

    def expand(self, records):
        if self._directory is None:
            return records | "Group" >> beam.GroupByKey()
        dtype_of, chunk = self._dtype_of, self._chunk_records
        if chunk is None:
            load = lambda key, paths: (key, [load_records(sorted(paths), dtype_of(key))])  # noqa: E731
        else:
            load = lambda key, paths: (key, RecordFiles(sorted(paths), dtype_of(key), chunk))  # noqa: E731
        return (
            records
            | "Spill" >> beam.ParDo(SpillRecords(self._directory, self._flush_bytes))
            | "GroupPaths" >> beam.GroupByKey()
            | "Load" >> beam.MapTuple(load)
        )


# An encoded element on file: key length, value length (little-endian uint32), pickled key, pickled value.
_HEADER = struct.Struct("<II")


class SpillEncoded(_BundleFiles):
    """(key, value) -> at the end of the bundle, (bucket, path) of the file holding the bundle's
    elements whose key falls in that bucket, each pickled (key and value apart, so that a reader
    indexes keys without decoding values). Buffered writes, as SpillRecords."""

    _SUFFIX = ".pkl"
    _COUNTER = "encoded_bytes"

    def __init__(self, directory: str, buckets: int, flush_bytes: int = 4 << 20) -> None:
        super().__init__(directory, flush_bytes)
        self._buckets = int(buckets)

    def process(self, element):
        key, value = element
        key_bytes = pickle.dumps(key, protocol=pickle.HIGHEST_PROTOCOL)
        value_bytes = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        # why crc32 of the pickled key, not hash(): the bucket must not depend on the process
        bucket = zlib.crc32(key_bytes) % self._buckets
        self._append(bucket, [_HEADER.pack(len(key_bytes), len(value_bytes)), key_bytes, value_bytes])


class EncodedGroup:
    """The values of one key: byte ranges of spill files, unpickled one at a time each time it is
    iterated (a re-iterable, like the runner's grouped values; len() without reading them)."""

    def __init__(self, ranges: list[tuple[str, int, int]]) -> None:
        self._ranges = ranges  # (path, offset, length), in file order

    def __len__(self) -> int:
        return len(self._ranges)

    def __iter__(self) -> Iterator[Any]:
        with contextlib.ExitStack() as files:
            handle, path = None, None
            for where, offset, length in self._ranges:
                if handle is None or where != path:
                    files.close()
                    handle, path = files.enter_context(open(where, "rb")), where
                handle.seek(offset)
                yield pickle.loads(handle.read(length))


def _index_bucket(bucket, paths):
    """(key, EncodedGroup) for every key in one bucket's files, keys in their pickled order. Reads
    headers and keys only: the values are skipped (a buffered relative seek) until iterated."""
    ranges: dict[bytes, list] = {}
    for path in sorted(paths):
        with open(path, "rb") as handle:
            while header := handle.read(_HEADER.size):
                key_length, value_length = _HEADER.unpack(header)
                key_bytes = handle.read(key_length)
                ranges.setdefault(key_bytes, []).append((path, handle.tell(), value_length))
                handle.seek(value_length, os.SEEK_CUR)
    for key_bytes in sorted(ranges):
        yield pickle.loads(key_bytes), EncodedGroup(ranges.pop(key_bytes))


class GroupEncoded(beam.PTransform):
    """(key, value) -> (key, values) like GroupByKey, through files in `directory` when one is
    given (local runs only: values any picklable object, keys too), else the runner's GroupByKey.

    buckets: how many files a bundle writes at most, and how many keys' indexes are built at
        once (1 / buckets of the elements' keys each).
    With a directory, a key's values come as an EncodedGroup (read from disk at each iteration).
    The directory is not removed here: its owner removes it once the consumers are done.
    """

    def __init__(self, directory: str | None = None, buckets: int = 64, flush_bytes: int = 4 << 20) -> None:
        super().__init__()
        self._directory = directory
        self._buckets = buckets
        self._flush_bytes = flush_bytes

    def expand(self, elements):
        if self._directory is None:
            return elements | "Group" >> beam.GroupByKey()
        return (
            elements
            | "Spill" >> beam.ParDo(SpillEncoded(self._directory, self._buckets, self._flush_bytes))
            | "GroupPaths" >> beam.GroupByKey()
            | "Index" >> beam.FlatMapTuple(_index_bucket)
        )

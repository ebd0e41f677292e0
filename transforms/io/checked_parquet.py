"""Parquet written with page checksums and read with them verified: damaged data is never read.

A byte flipped inside a Parquet data or dictionary page (a bad disk, a half-copied file, a
careless edit) is read back by pyarrow as other values, silently: a `blob` path that points at
another picture, a hash that joins the wrong cluster. Every table this project writes carries a
CRC32 per page (`table_writer`), and every reader of a table verifies them (`open_table_file`,
`table_batches`, `ReadTableRecords`). A mismatch, a damaged footer or undecodable page data is
`BadInput` (exit 2) naming the file; tables written before page checksums existed read as before.

Public surface:

- `table_writer(sink, arrow_schema)`: a `pq.ParquetWriter` (zstd, page checksums).
- `open_table_file(path)`: a verifying `pq.ParquetFile`, or BadInput for a damaged footer.
- `table_batches(path, columns, batch_size)`: record batches, or BadInput at a damaged page.
- `ReadTableRecords(paths, columns)`: PBegin -> `dict` per row of every file matched by the
  paths/globs (one worker per file, spread by a reshuffle).
- `ParquetShardsDoFn(tmp_dir, arrow_schema, ...)`: rows -> paths of temporary files of at most
  `shard_rows` rows (the ingest's table shards, WriteTableFiles' bundles).
- `WriteTableFiles(directory, arrow_schema)`: rows -> `str` paths of `directory/part-NNNNN-of-MMMMM.parquet`
  (page checksums; Beam's WriteToParquet cannot write them), exactly once under bundle retries.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from transforms.errors import BadInput, removed_while_read
from transforms.io.sinks import delete_tree, join_path, publish_file

__all__ = [
    "DamagedTable",
    "table_writer",
    "open_table_file",
    "table_batches",
    "ReadTableRecords",
    "ParquetShardsDoFn",
    "WriteTableFiles",
]


class DamagedTable(BadInput):
    """A Parquet file whose footer or page data cannot be read back as written."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        # One-argument form: Beam re-raises a DoFn's exception as type(exc)(message + step).
        super().__init__(
            path
            if reason is None
            else f"{path}: damaged Parquet file ({reason}); restore it, or re-run the job that wrote it"
        )


def table_writer(sink: Any, arrow_schema: pa.Schema) -> pq.ParquetWriter:
    """A ParquetWriter that stores a CRC32 with every page (and zstd-compresses them)."""
    return pq.ParquetWriter(sink, arrow_schema, compression="zstd", write_page_checksum=True)


def open_table_file(path: str) -> pq.ParquetFile:
    """`path` (local or gs://) as a ParquetFile whose pages are checked against their CRC32.

    Raises:
        DamagedTable: the file is not Parquet, or its footer is damaged.
    """
    try:
        handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    except Exception:
        _refuse_vanished(path)
        raise
    try:
        return pq.ParquetFile(handle, page_checksum_verification=True)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError, with no common base
        handle.close()
        _refuse_vanished(path)
        raise DamagedTable(path, f"unreadable footer: {error}") from error


def _refuse_vanished(path: str) -> None:
    """InputChanged when `path`, which failed to open or read, no longer exists.

    Why: the files of a table are listed and checked before the pipeline reads them; a job that
    rewrote the table meanwhile (an ingest rerun retiring its previous parts) made the read fail
    as "unexpected FileNotFoundError", or on gs:// as a damaged file (exit 2, "restore it").
    """
    if not FileSystems.exists(path):
        raise removed_while_read(path) from None


def table_batches(
    path: str, columns: Sequence[str] | None = None, batch_size: int = 4096, parquet: pq.ParquetFile | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` (all if None) of one file, each page verified.

    Args:
        path: the file (named in the error).
        columns: the columns to read; None: all of them.
        batch_size: rows a batch.
        parquet: the file as `open_table_file(path)` opened it already (its footer read once).

    Raises:
        DamagedTable: a page fails its checksum or cannot be decoded (the batches before it were
            yielded; callers fail the job, so none of them is kept).
    """
    parquet = parquet or open_table_file(path)
    batches = parquet.iter_batches(batch_size=batch_size, columns=list(columns) if columns is not None else None)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as error:
            _refuse_vanished(path)  # why: an object store fails a read of an object deleted meanwhile
            raise DamagedTable(path, str(error)) from error
        yield batch


def _records(path: str, columns: Sequence[str] | None) -> Iterator[dict]:
    for batch in table_batches(path, columns):
        yield from batch.to_pylist()


def _matched_paths(pattern: str) -> Iterator[str]:
    """The files a glob matches (none is no error), or a plain path as it is.

    Why not fileio.MatchAll: it matched a plain path that no longer existed (a part retired by an
    ingest rerun after the reader's check) as no file at all: the export read 0 of its rows, exit 0.
    A plain path is opened as given, and a missing one fails the job (open_table_file).
    """
    if not any(character in pattern for character in "*?["):
        yield pattern
        return
    yield from sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


class ReadTableRecords(beam.PTransform):
    """Rows (dicts) of every Parquet file matched by `paths` (paths or globs), pages verified.

    Replaces Beam's ReadFromParquet / ReadAllFromParquet, which cannot verify page checksums.
    Files are read whole by one worker each (tables are written in shards of 20,000 rows).
    """

    def __init__(self, paths: str | Sequence[str], columns: Sequence[str] | None = None) -> None:
        super().__init__()
        self._patterns = [paths] if isinstance(paths, str) else list(paths)
        self._columns = list(columns) if columns is not None else None

    def expand(self, pbegin):
        columns = self._columns
        return (
            pbegin
            | "Patterns" >> beam.Create(self._patterns)
            | "Match" >> beam.FlatMap(_matched_paths)
            # why: each file is one element; the reshuffle lets several workers read files at once
            | "Spread" >> beam.Reshuffle()
            | "Records" >> beam.FlatMap(_records, columns)
        )


class ParquetShardsDoFn(beam.DoFn):
    """Rows -> temporary Parquet files (page checksums) of at most `shard_rows` rows in `tmp_dir`;
    yields each file's path as it is closed.

    A bundle can hold a whole input (the local runner makes one bundle of a stage's input), so
    files are closed at a fixed size: reading one back needs memory for one file only. A failed
    bundle's outputs are never committed, so its files stay orphans in `tmp_dir`.

    Args:
        tmp_dir: where the files go (its owner removes it).
        arrow_schema: the files' schema.
        to_record: row -> the dict written (None: the row as it is).
        batch_rows: rows buffered before they are written.
        shard_rows: rows a file holds at most.
        counter: (namespace, name) of a Beam counter of the rows written, or None.
    """

    def __init__(
        self,
        tmp_dir: str,
        arrow_schema: pa.Schema,
        to_record: Callable[[dict], dict] | None = None,
        batch_rows: int = 2000,
        shard_rows: int = 20000,
        counter: tuple[str, str] | None = None,
    ) -> None:
        self._tmp_dir = tmp_dir
        self._schema = arrow_schema
        self._to_record = to_record
        self._batch_rows = min(batch_rows, shard_rows)
        self._shard_rows = shard_rows
        self._counter_name = counter

    def setup(self):
        self._rows_written = beam.metrics.Metrics.counter(*self._counter_name) if self._counter_name else None

    def start_bundle(self):
        self._buffer, self._writer, self._handle, self._path, self._in_shard = [], None, None, None, 0

    def process(self, row):
        self._buffer.append(self._to_record(row) if self._to_record else row)
        if len(self._buffer) >= self._batch_rows:
            self._flush()
            if self._in_shard >= self._shard_rows:
                yield self._close()

    def _flush(self):
        if not self._buffer:
            return
        if self._writer is None:
            self._path = join_path(self._tmp_dir, f"shard-{uuid.uuid4().hex}.parquet")
            self._handle = FileSystems.create(self._path)
            self._writer = table_writer(self._handle, self._schema)
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self._schema))
        if self._rows_written is not None:
            self._rows_written.inc(len(self._buffer))
        self._in_shard += len(self._buffer)
        self._buffer = []

    def _close(self):
        self._writer.close()
        self._handle.close()
        path, self._writer, self._handle, self._path, self._in_shard = self._path, None, None, None, 0
        return path

    def finish_bundle(self):
        self._flush()
        if self._writer is not None:
            yield GlobalWindows.windowed_value(self._close())


def _publish(temporary: list[str], directory: str, prefix: str, temp_dir: str, arrow_schema: pa.Schema) -> list[str]:
    """The bundles' files renamed to `prefix`-NNNNN-of-MMMMM.parquet in `directory` (one empty file
    with the schema when there were no rows); a retry finds the files it renamed already."""
    temporary = sorted(temporary)
    if not temporary:
        temporary = [FileSystems.join(temp_dir, "empty.parquet")]
        with FileSystems.create(temporary[0]) as handle, table_writer(handle, arrow_schema) as writer:
            writer.write_table(arrow_schema.empty_table())
    count = len(temporary)
    finals = [FileSystems.join(directory, f"{prefix}-{i:05d}-of-{count:05d}.parquet") for i in range(count)]
    for source, target in zip(temporary, finals, strict=True):
        publish_file(source, target)
    delete_tree(temp_dir)  # what is left there: files of failed bundle attempts, never published
    return finals


class WriteTableFiles(beam.PTransform):
    """Rows (dicts of `arrow_schema`'s columns) -> the paths of the files written, each
    `directory`/`prefix`-NNNNN-of-MMMMM.parquet with a CRC32 per page (table_writer).

    Bundles write temporary files of at most 20,000 rows under `directory`/_tmp-<id>/
    (ParquetShardsDoFn); once all are written they are renamed to their final names and the
    temporary folder is removed (with the files of failed bundle attempts: a retried bundle's rows
    are never published twice).
    """

    def __init__(self, directory: str, arrow_schema: pa.Schema, prefix: str = "part") -> None:
        super().__init__()
        self._directory = directory
        self._schema = arrow_schema
        self._prefix = prefix

    def expand(self, rows):
        temp_dir = FileSystems.join(self._directory, f"_tmp-{uuid.uuid4().hex}")
        return (
            rows
            | "BundleFiles" >> beam.ParDo(ParquetShardsDoFn(temp_dir, self._schema))
            # why one list: the final names number all files, and only committed bundles' files are in it
            | "AllFiles" >> beam.combiners.ToList()
            | "Publish" >> beam.FlatMap(_publish, self._directory, self._prefix, temp_dir, self._schema)
        )

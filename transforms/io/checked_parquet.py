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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import BadInput

__all__ = ["DamagedTable", "table_writer", "open_table_file", "table_batches", "ReadTableRecords"]


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
    handle = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    try:
        return pq.ParquetFile(handle, page_checksum_verification=True)
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError, with no common base
        handle.close()
        raise DamagedTable(path, f"unreadable footer: {error}") from error


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
            raise DamagedTable(path, str(error)) from error
        yield batch


def _records(path: str, columns: Sequence[str] | None) -> Iterator[dict]:
    for batch in table_batches(path, columns):
        yield from batch.to_pylist()


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
            | "Match" >> fileio.MatchAll()
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            # why: each file is one element; the reshuffle lets several workers read files at once
            | "Spread" >> beam.Reshuffle()
            | "Records" >> beam.FlatMap(_records, columns)
        )

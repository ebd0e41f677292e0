"""Streaming readers over Beam's FileSystems: local, gs:// and .gz, all read the same way.

Beam's FileSystems.open returns objects that are not full `io` streams (CompressedFile has no
`writable()`, so io.TextIOWrapper refuses it); `RawReader` adapts anything with read(n) so the
csv module and ijson can stream from it record by record, never loading a whole file.

Public transforms (a "paths" argument is one path/glob or a list of them):

- `OpenFiles(paths)`: PBegin -> `fileio.ReadableFile` per matched file.
- `ReadLines(paths, with_filename)`: PBegin -> `str` lines, or `(filename, line)` tuples.
- `ParseFiles(paths, parse, ...)`: PBegin -> whatever `parse` yields from those files or lines.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from typing import IO, Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

__all__ = ["RawReader", "open_path", "binary_stream", "open_stream", "text_stream", "sniff", "as_patterns",
           "OpenFiles", "ReadLines", "ParseFiles"]

_CHUNK = 1 << 20  # 1 MiB reads: few round trips to GCS, little memory


class RawReader(io.RawIOBase):
    """A raw binary stream over any object with read(n), optionally after `prefix` bytes."""

    def __init__(self, source: Any, prefix: bytes = b"") -> None:
        super().__init__()
        self._source = source
        self._prefix = prefix

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._source.read(len(buffer))
        if isinstance(data, str):  # a text stream was passed: hand on its UTF-8 bytes
            data = data.encode("utf-8")
        n = len(data)
        buffer[:n] = data
        return n

    def close(self):
        if not self.closed:
            try:
                close = getattr(self._source, "close", None)
                if close is not None:
                    close()
            finally:
                super().close()


def open_path(path: str) -> IO[bytes]:
    """Binary stream of a local or gs:// path; .gz/.bz2/... decompressed by extension."""
    return FileSystems.open(path, mime_type="application/octet-stream")


def binary_stream(fileobj: Any, prefix: bytes = b"") -> io.BufferedReader:
    """A buffered binary stream over `fileobj` (binary or text file-like)."""
    return io.BufferedReader(RawReader(fileobj, prefix), buffer_size=_CHUNK)


@contextlib.contextmanager
def open_stream(path: str) -> Iterator[io.BufferedReader]:
    """`path` as an ordinary iterable, buffered binary stream, closed on exit."""
    with binary_stream(open_path(path)) as stream:
        yield stream


def text_stream(fileobj: Any, newline: str = "") -> io.TextIOBase:
    """UTF-8 text over `fileobj`: BOM dropped, bad bytes replaced (never a crash).

    newline="" (the csv module's need) leaves line ends untranslated; "\n" splits on LF only,
    for JSON lines whose text may hold a stray CR.
    """
    if isinstance(fileobj, io.TextIOBase):
        return fileobj
    return io.TextIOWrapper(binary_stream(fileobj), encoding="utf-8-sig", errors="replace",
                            newline=newline)


def sniff(fileobj: Any, size: int = 4096) -> tuple[str, io.BufferedReader]:
    """(first non-blank character or '', stream at the start, past any UTF-8 BOM)."""
    stream = binary_stream(fileobj)
    if stream.peek(3)[:3] == b"\xef\xbb\xbf":
        stream.read(3)  # ijson would reject it
    head = stream.peek(size)[:size]
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    return (text[:1], stream)


def as_patterns(paths: str | Sequence[str]) -> list[str]:
    """One path/glob or a list of them (repeatable options) -> list."""
    return [paths] if isinstance(paths, str) else list(paths)


class OpenFiles(beam.PTransform):
    """PCollection of fileio.ReadableFile for every file matched by one or more paths/globs."""

    def __init__(self, paths: str | Sequence[str]) -> None:
        super().__init__()
        self._patterns = as_patterns(paths)

    def expand(self, pbegin):
        return (pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match" >> fileio.MatchAll()
                | "Open" >> fileio.ReadMatches())


class ReadLines(beam.PTransform):
    """Lines of one or more paths/globs, as (filename, line) when with_filename.

    ReadFromText splits uncompressed files across workers: for one-record-a-line formats only.
    """

    def __init__(self, paths: str | Sequence[str], with_filename: bool = False) -> None:
        super().__init__()
        self._patterns = as_patterns(paths)
        self._with_filename = with_filename

    def expand(self, pbegin):
        read = beam.io.ReadFromTextWithFilename if self._with_filename else beam.io.ReadFromText
        reads = [pbegin | f"Read{i}" >> read(p) for i, p in enumerate(self._patterns)]
        return reads[0] if len(reads) == 1 else reads | "Lines" >> beam.Flatten()


class ParseFiles(beam.PTransform):
    """Files of one or more paths/globs through `parse` (a PTransform, usually a ParDo).

    lines=False: `parse` gets fileio.ReadableFile objects (record formats: CSV with quoted
    newlines, JSON); lines=True: it gets lines (ReadFromText, which splits big files across
    workers), as (filename, line) with with_filename. spread=True reshuffles what `parse`
    yields, for files one worker reads whole.
    """

    def __init__(self, paths: str | Sequence[str], parse: beam.PTransform, lines: bool = False,
                 with_filename: bool = False, spread: bool = False) -> None:
        super().__init__()
        self._paths = paths
        self._parse = parse
        self._lines = lines
        self._with_filename = with_filename
        self._spread = spread

    def expand(self, pbegin):
        if self._lines:
            source = pbegin | "Read" >> ReadLines(self._paths, with_filename=self._with_filename)
        else:
            source = pbegin | "Open" >> OpenFiles(self._paths)
        parsed = source | "Parse" >> self._parse
        return parsed | "Spread" >> beam.Reshuffle() if self._spread else parsed

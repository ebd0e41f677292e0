"""Streaming readers over Beam's FileSystems: local, gs:// and .gz, all read the same way.

Beam's FileSystems.open returns objects that are not full `io` streams (CompressedFile has no
`writable()`, so io.TextIOWrapper refuses it); `RawReader` adapts anything with read(n) so the
csv module and ijson can stream from it record by record, never loading a whole file.

Public transforms (a "paths" argument is one path/glob or a list of them):

- `OpenFiles(paths)`: PBegin -> `CheckedFile` per matched file, each once (file_matches.MatchFiles).
- `ReadLines(paths, with_filename)`: PBegin -> `str` lines, or `(filename, line)` tuples.

Every compressed input is read to its end-of-stream marker: a .gz, .bz2, .xz or .zst cut short
fails the job with a `CompressedInputError` naming the file (Beam's own readers would hand on
the lines before the cut and say nothing).
- `ParseFiles(paths, parse, ...)`: PBegin -> whatever `parse` yields from those files or lines.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

__all__ = [
    "RawReader",
    "open_path",
    "binary_stream",
    "open_stream",
    "text_stream",
    "sniff",
    "as_patterns",
    "CheckedFile",
    "OpenFiles",
    "ReadLines",
    "ParseFiles",
]
from transforms.errors import BadInput
from transforms.io import text_forms
from transforms.io.file_matches import MatchFiles
from transforms.io.text_forms import AsUtf8, compressed_text, cr_line_ends, split_lines, text_encoding

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


class CompressedInputError(BadInput):
    """A compressed file ends before its end-of-stream marker, or its data is corrupt."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        # One-argument form: Beam re-raises a DoFn's exception as type(exc)(message + step), and
        # would turn it into a bare RuntimeError (exit 1, "unexpected") if that call failed.
        super().__init__(path if reason is None else f"{path}: compressed file is truncated or corrupt ({reason})")
        self.path = path
        self.reason = reason


class _ZstdReader:
    """Zstandard frames read to their end: python-zstandard's stream_reader ends quietly at a cut."""

    def __init__(self, raw):
        import zstandard  # noqa: PLC0415 (optional, only for .zst files)

        self._zstd = zstandard
        self._raw = raw
        self._decoder = zstandard.ZstdDecompressor().decompressobj()
        self._started = False  # bytes of the current frame were fed
        self._pending = b""

    def read(self, size=-1):
        while not self._pending:
            chunk = self._raw.read(_CHUNK)
            if not chunk:
                if self._started and not self._decoder.eof:
                    raise EOFError("zstd frame ended before its end marker")
                return b""
            while chunk:
                self._started = True
                try:
                    self._pending += self._decoder.decompress(chunk)
                except self._zstd.ZstdError as exc:
                    raise ValueError(str(exc)) from None
                chunk = b""
                if self._decoder.eof:  # next frame, if any
                    chunk = self._decoder.unused_data
                    self._decoder = self._zstd.ZstdDecompressor().decompressobj()
                    self._started = False
        size = len(self._pending) if size is None or size < 0 else size
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def close(self):
        self._raw.close()


_DECOMPRESSORS = {
    CompressionTypes.GZIP: lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    CompressionTypes.BZIP2: lambda raw: bz2.BZ2File(raw, mode="rb"),
    CompressionTypes.LZMA: lambda raw: lzma.LZMAFile(raw, mode="rb"),
    CompressionTypes.ZSTD: _ZstdReader,
}


class CheckedDecompressor:
    """read(n) over a decompressing file: a cut or corrupt stream raises CompressedInputError.

    Beam's CompressedFile stops quietly where a .gz or .bz2 is cut short (the last half-line then
    reads as a record); python's own decompressors raise EOFError there, which this turns into a
    BadInput naming the file.
    """

    _PIECE = 64 * 1024

    def __init__(self, path, raw, compression):
        self._path = path
        self._raw = raw
        self._stream = _DECOMPRESSORS[compression](raw)
        self._failure = None  # raised on the read after the one that returned the last good bytes
        self._started = False  # bytes came out of the stream

    def read(self, size=-1):
        """Up to `size` bytes; every byte decompressed before a failure is returned first."""
        if self._failure is not None:
            raise self._failure
        size = 1 << 62 if size is None or size < 0 else size
        pieces, got = [], 0
        read_piece = getattr(self._stream, "read1", self._stream.read)
        while got < size:
            try:
                piece = self._checked(read_piece, min(self._PIECE, size - got))
            except CompressedInputError as exc:
                if not pieces:
                    raise (exc if self._started else self._as_named(exc)) from None
                self._failure = exc
                break
            if not piece:
                if not self._started and not pieces:
                    self._check_not_empty()
                break
            self._started = True
            pieces.append(piece)
            got += len(piece)
        return b"".join(pieces)

    def _as_named(self, exc):
        """A file not starting as its name's compression (a plain file named .gz) is not cut short:
        BadInput saying so, which --accept-truncated does not take for a cut (text_forms)."""
        with FileSystems.open(self._path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            problem = text_forms.misnamed_compression(raw.read(16), self._path)
        return BadInput(f"{self._path}: {problem}") if problem else exc

    def _check_not_empty(self):
        """A 0-byte file is no compressed stream (gzip and zstd would read it as empty data): a
        download that never started. A stream of empty data (`gzip < /dev/null`) is not 0 bytes."""
        tell = getattr(self._raw, "tell", None)
        if tell is not None and tell() == 0:
            raise CompressedInputError(self._path, "cut short: the file is empty (0 bytes), no compressed stream")

    def _checked(self, read, size):
        try:
            return read(size)
        except EOFError as exc:
            raise CompressedInputError(self._path, f"cut short: {exc}") from None
        except (zlib.error, gzip.BadGzipFile, lzma.LZMAError, ValueError) as exc:
            raise CompressedInputError(self._path, f"corrupt: {exc}") from None
        except OSError as exc:
            if "Invalid data stream" in str(exc):  # bz2
                raise CompressedInputError(self._path, f"corrupt: {exc}") from None
            raise

    def close(self):
        try:
            self._stream.close()
        finally:
            self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_path(path):
    """Binary stream of a local or gs:// path; .gz/.bz2/.xz/.zst decompressed by extension, to the
    end-of-stream marker (CheckedDecompressor); other compressions through Beam."""
    compression = CompressionTypes.detect_compression_type(path)
    if compression in _DECOMPRESSORS:
        raw = FileSystems.open(
            path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
        )
        return CheckedDecompressor(path, raw, compression)
    return FileSystems.open(path, mime_type="application/octet-stream")


def binary_stream(fileobj: Any, prefix: bytes = b"") -> io.BufferedReader:
    """A buffered binary stream over `fileobj` (binary or text file-like); UTF-16 and UTF-32 text
    (text_forms.text_encoding) comes out as UTF-8 (text_forms.AsUtf8)."""
    stream: io.BufferedReader = io.BufferedReader(RawReader(fileobj, prefix), buffer_size=_CHUNK)
    encoding = text_encoding(stream)
    if encoding is not None:
        return io.BufferedReader(AsUtf8(stream, encoding), buffer_size=_CHUNK)
    return stream


@contextlib.contextmanager
def open_stream(path: str, flag: str = "") -> Iterator[io.BufferedReader]:
    """`path` as an ordinary iterable, buffered binary stream, closed on exit; compressed data
    inside (text_forms.compressed_text) is BadInput, its line starting with `flag` and the path."""
    with binary_stream(open_path(path)) as stream:
        named = CompressionTypes.detect_compression_type(path) in _DECOMPRESSORS
        problem = compressed_text(stream.peek(16)[:16], path, named)
        if problem:
            raise BadInput(f"{flag} {path}: {problem}" if flag else f"{path}: {problem}")
        yield stream


def text_stream(fileobj: Any, newline: str = "") -> io.TextIOBase:
    """UTF-8 text over `fileobj`: BOM dropped, bad bytes replaced (never a crash).

    newline="" (the csv module's need) leaves line ends untranslated; "\n" splits on LF only,
    for JSON lines whose text may hold a stray CR.
    """
    if isinstance(fileobj, io.TextIOBase):
        return fileobj
    return io.TextIOWrapper(binary_stream(fileobj), encoding="utf-8-sig", errors="replace", newline=newline)


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


class CheckedFile:
    """A matched file whose `open()` reads compressed data to its end (`open_path`).

    fileio.ReadableFile.open() goes through Beam's CompressedFile, which stops quietly where a .gz
    is cut; parsers given this instead see the cut as a CompressedInputError.
    """

    def __init__(self, readable: fileio.ReadableFile) -> None:
        self.metadata = readable.metadata

    def open(self) -> Any:
        """A binary stream of the file, decompressed by extension (see `open_path`)."""
        return open_path(self.metadata.path)


def _read_whole(metadata: Any) -> bool:
    """Whether a file's lines need `_CheckedLinesFn`: Beam's text reader would read a compressed
    one quietly to a cut, decode UTF-16 and UTF-32 as UTF-8, and split lines on LF only."""
    if CompressionTypes.detect_compression_type(metadata.path) in _DECOMPRESSORS:
        return True
    with FileSystems.open(metadata.path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        stream = io.BufferedReader(RawReader(raw), buffer_size=_CHUNK)
        return text_encoding(stream) is not None or cr_line_ends(stream)


class OpenFiles(beam.PTransform):
    """PCollection of `CheckedFile` for every file matched by one or more paths/globs."""

    def __init__(self, paths: str | Sequence[str]) -> None:
        super().__init__()
        self._patterns = as_patterns(paths)

    def expand(self, pbegin):
        return (
            pbegin
            | "Match" >> MatchFiles(self._patterns)
            | "Open" >> fileio.ReadMatches()
            | "Checked" >> beam.Map(CheckedFile)
        )


class _CheckedLinesFn(beam.DoFn):
    """Lines of one file read whole: compressed (to its end-of-stream marker), UTF-16 or UTF-32,
    or with CR line ends only."""

    def __init__(self, with_filename: bool) -> None:
        self._with_filename = with_filename

    def process(self, metadata):
        path = metadata.path
        with open_stream(path) as binary:
            for raw in split_lines(binary):
                line = raw.decode("utf-8", errors="replace").rstrip("\n").rstrip("\r")
                yield (path, line) if self._with_filename else line


class ReadLines(beam.PTransform):
    """Lines of one or more paths/globs, as (filename, line) when with_filename.

    Plain files go through ReadAllFromText, which splits big files across workers (for
    one-record-a-line formats only); compressed files cannot be split anyway, so one worker reads
    each whole, to its end-of-stream marker, and so are UTF-16 and UTF-32 files and files with CR
    line ends.
    """

    def __init__(self, paths: str | Sequence[str], with_filename: bool = False) -> None:
        super().__init__()
        self._patterns = as_patterns(paths)
        self._with_filename = with_filename

    def expand(self, pbegin):
        files = pbegin | "Match" >> MatchFiles(self._patterns)
        # Why the split: a cut .gz must fail the job, and ReadAllFromText would read it quietly;
        # nor does it read UTF-16, UTF-32 or CR line ends (text_forms).
        plain, whole = files | "ByCompression" >> beam.Partition(lambda m, _: int(_read_whole(m)), 2)
        plain_lines = (
            plain
            | "PlainPaths" >> beam.Map(lambda metadata: metadata.path)
            | "ReadPlain" >> beam.io.ReadAllFromText(with_filename=self._with_filename)
        )
        compressed_lines = whole | "ReadCompressed" >> beam.ParDo(_CheckedLinesFn(self._with_filename))
        return (plain_lines, compressed_lines) | "Lines" >> beam.Flatten()


class ParseFiles(beam.PTransform):
    """Files of one or more paths/globs through `parse` (a PTransform, usually a ParDo).

    lines=False: `parse` gets fileio.ReadableFile objects (record formats: CSV with quoted
    newlines, JSON); lines=True: it gets lines (ReadFromText, which splits big files across
    workers), as (filename, line) with with_filename. spread=True reshuffles what `parse`
    yields, for files one worker reads whole.
    """

    def __init__(
        self,
        paths: str | Sequence[str],
        parse: beam.PTransform,
        lines: bool = False,
        with_filename: bool = False,
        spread: bool = False,
    ) -> None:
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

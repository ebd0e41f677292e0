"""Line ends and text encodings of manifests and side files, decided from a file's first bytes.

Every reader of a text input (transforms/io/readers.py `binary_stream`, and through it the
manifest parsers and side-file readers) sees UTF-8 bytes split the same way:

- A file in UTF-16 or UTF-32 (a spreadsheet's "Unicode text", an export tool's "UTF-16LE") is
  decoded and handed on as UTF-8, streamed (`AsUtf8`): read as UTF-8, its every URL and caption
  was NUL-riddled garbage, every row invalid. `text_encoding` tells it by its byte-order mark, or
  without one by the NULs of its first bytes, which a manifest's first line (ASCII URLs, JSON
  keys, headers) sets in every other byte (UTF-16) or three bytes of four (UTF-32). Other files
  are not decoded here: their bad UTF-8 (a cp1252 caption) is replaced by U+FFFD where they are
  decoded, never fatal.
- Lines end in LF or CRLF, and a CR elsewhere is part of the text (a stray CR in a caption or in
  a JSON string). A file with no LF at its start (what the reader's buffer holds, 8 KiB or more)
  but a CR (classic Mac OS line ends) is split on CR, LF and CRLF (`split_lines`): read on LF, its
  every line was one, a single row or label line. Line ends that change partway (files with LF
  and CR line ends joined by `cat`) are told line by line: a line read on LF whose CRs part two
  or more records (`tsv_record`, `json_record`) is split on them too.
"""

from __future__ import annotations

import codecs
import io
import itertools
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "SNIFF",
    "AsUtf8",
    "compressed_text",
    "misnamed_compression",
    "cr_line_ends",
    "json_record",
    "split_lines",
    "text_encoding",
    "tsv_record",
]

# The first bytes of each compressed format the readers decompress: (magic, its name, its suffix).
_MAGICS = (
    (b"\x1f\x8b\x08", "gzip", ".gz"),
    (b"BZh", "bzip2", ".bz2"),  # then a level digit and a block or end-of-stream magic (below)
    (b"\xfd7zXZ\x00", "xz", ".xz"),
    (b"\x28\xb5\x2f\xfd", "zstd", ".zst"),
)


def _compression(head: bytes) -> tuple[str, str] | None:
    """(format, suffix) of the compressed stream `head` starts, None for anything else."""
    for magic, name, suffix in _MAGICS:
        if head.startswith(magic):
            if name == "bzip2" and not (head[3:4].isdigit() and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90")):
                continue
            return name, suffix
    return None


def misnamed_compression(head: bytes, path: str) -> str | None:
    """What is wrong when a file named compressed (`path`) whose decompression failed at once does
    not start as its name says (`head`: its first bytes); None when it does (it is corrupt).

    Why: a plain file named .gz (or a bzip2 file named .gz) was "truncated or corrupt before its
    first line", and --accept-truncated ingested 0 of its records, exit 0.
    """
    named = next(((n, s) for _, n, s in _MAGICS if path.lower().endswith(s)), None)
    found = _compression(head)
    if named is None or found == named or not head:  # an empty file: cut short, said elsewhere
        return None
    if found is None:
        return (
            f"the file is not {named[0]} data although its name ends in {named[1]} (it starts with"
            f" {head[:12]!r}); if it is plain text, name it without {named[1]}"
        )
    return f"the file is {found[0]} data although its name ends in {named[1]}; name it to end in {found[1]}"


def compressed_text(head: bytes, path: str, named_compressed: bool) -> str | None:
    """What is wrong when `head`, the first bytes of a text input at `path` (decompressed by its
    name when `named_compressed`), are a compressed stream's; None when they are not.

    Why: compression is told by the name, so a .gz saved without its suffix, or a file compressed
    twice (gzipped again by a server's Content-Encoding), was read as text: a few rows of binary
    garbage (invalid_url) for all its records, exit 0.
    """
    found = _compression(head)
    if found is not None:
        name, suffix = found
        if named_compressed:
            return (
                f"the file is compressed twice (decompressed once, it is {name} data again);"
                " decompress it once more and give that file"
            )
        return (
            f"the file is {name}-compressed but its name does not end in {suffix};"
            f" name it {path.rsplit('/', 1)[-1]}{suffix} to have it read decompressed"
        )
    return None


SNIFF = 1 << 20  # at most this much of a file decides its line ends (peek gives one buffer: >= 8 KiB)
# Marks in the order they must be tried: UTF-32-LE's starts with UTF-16-LE's
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_HEAD = 512  # bytes whose NULs tell UTF-16 and UTF-32 without a mark
# (encoding, code unit size, byte positions in a unit that ASCII text leaves 0)
_NUL_PATTERNS = (
    ("utf-32-le", 4, (1, 2, 3)),
    ("utf-32-be", 4, (0, 1, 2)),
    ("utf-16-le", 2, (1,)),
    ("utf-16-be", 2, (0,)),
)
# A unit's other bytes are 0 only for a character like U+4E00 or a NUL: rare in a manifest's head
_ZERO_SHARE, _NONZERO_SHARE = 0.5, 0.9


class AsUtf8(io.RawIOBase):
    """UTF-8 bytes of a binary stream of UTF-16 or UTF-32 text, decoded as it is read.

    A byte-order mark is dropped ("utf-16", "utf-32" take the byte order from it); bytes that are
    not text of the encoding (an odd last byte, a lone surrogate) become U+FFFD, as bad UTF-8
    does elsewhere.
    """

    def __init__(self, source: Any, encoding: str) -> None:
        super().__init__()
        self._source = source
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._pending = b""
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._ended:
            chunk = self._source.read1(SNIFF)  # one raw read: a .gz cut keeps what came before
            self._ended = not chunk
            self._pending = self._decoder.decode(chunk, final=self._ended).encode("utf-8")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._source.close()
            finally:
                super().close()


def text_encoding(binary: Any) -> str | None:
    """The UTF-16 or UTF-32 encoding a buffered binary stream's first bytes show, else None.

    Args:
        binary: a stream with peek(), at the file's start.

    Returns:
        "utf-16" or "utf-32" (a byte-order mark), "utf-16-le", "utf-16-be", "utf-32-le" or
        "utf-32-be" (no mark: the NUL pattern of the first bytes), or None for UTF-8 or anything
        else, which is read as UTF-8.
    """
    head = binary.peek(_HEAD)[:_HEAD]
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    for encoding, size, zero_at in _NUL_PATTERNS:
        units = len(head) // size
        if units < 2:
            continue
        # Why shares, not all: a non-ASCII character (a CJK title) fills a unit's usual zeros
        zero = [head[i : units * size : size].count(0) / units for i in range(size)]
        if all(zero[i] >= _ZERO_SHARE for i in zero_at) and all(
            zero[i] <= 1 - _NONZERO_SHARE for i in range(size) if i not in zero_at
        ):
            return encoding
    return None


def cr_line_ends(binary: Any) -> bool:
    """Whether a buffered binary stream, at its start, has CR line ends only (classic Mac OS)."""
    head = binary.peek(SNIFF)[:SNIFF] if hasattr(binary, "peek") else b""
    return b"\r" in head and b"\n" not in head


def tsv_record(piece: bytes) -> bool:
    """Whether a piece of a line looks like a whole record of a TSV manifest or side file: a TAB
    and a URL (CC3M, CC12M, their labels and hashes all hold one)."""
    return b"\t" in piece and b"://" in piece


def json_record(piece: bytes) -> bool:
    """Whether a piece of a line looks like a whole JSON-lines record: one object."""
    piece = piece.strip()
    return piece.startswith(b"{") and piece.endswith(b"}")


def split_lines(binary: Any, record: Callable[[bytes], bool] | None = None) -> Iterator[bytes]:
    """Lines of a buffered binary stream, line ends kept.

    Args:
        binary: the stream, at its start.
        record: whether a piece of a line is a whole record of the file's format; given, a line
            read on LF that CRs part into two or more records is split on them (line ends that
            change partway), and other CRs stay in the text.

    Returns:
        The lines: split on LF, or in a file with CR line ends only (`cr_line_ends`) on CR, LF
        and CRLF.
    """
    if cr_line_ends(binary):
        return _cr_lines(binary)
    if record is None:
        return iter(binary)
    # Why blocks chained: lines handed on in C, not resumed through a generator one by one
    return itertools.chain.from_iterable(_lf_blocks(binary, record))


def _lf_blocks(binary, record):
    """Iterables of lines split on LF, and on the CRs inside a line that part records (split_lines)."""
    parts = []  # a line longer than a read, in pieces (joined once: no quadratic copying)
    # Why read1, one raw read at a time: read(n) loops raw reads and drops what it gathered when
    # one raises (a .gz cut short): --accept-truncated then kept none of the records before the cut.
    while chunk := binary.read1(SNIFF):
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            parts.append(chunk)
            continue
        block = b"".join([*parts, chunk[:cut]]) if parts else chunk[:cut]
        parts = [chunk[cut:]] if cut < len(chunk) else []
        # Why whole blocks: a block whose every CR ends a CRLF (the common file: none at all) is
        # split on LF in C (BytesIO's lines), as fast as the reader's own lines
        if b"\r" not in block or block.count(b"\r") == block.count(b"\r\n"):
            yield io.BytesIO(block)
        else:
            yield [piece for line in block[:-1].split(b"\n") for piece in _parted(line + b"\n", record)]
    if parts:
        yield _parted(b"".join(parts), record)


def _parted(line, record):
    """A line read on LF as it is, or its pieces if its CRs part two or more records."""
    pieces = line.splitlines(keepends=True)
    return pieces if len(pieces) > 1 and sum(map(record, pieces)) >= 2 else (line,)


def _cr_lines(binary):
    """Lines of a binary stream split on CR, LF and CRLF (bytes.splitlines), line ends kept."""
    rest = b""
    while chunk := binary.read1(SNIFF):  # one raw read at a time, as in _lf_blocks
        lines = (rest + chunk).splitlines(keepends=True)
        # the last piece may go on in the next chunk, or be a CR whose LF comes next
        rest = lines.pop() if not lines[-1].endswith(b"\n") else b""
        yield from lines
    if rest:
        yield rest

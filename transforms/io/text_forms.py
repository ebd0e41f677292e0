"""Line ends and text encodings of manifests and side files, decided from a file's first bytes.

Every reader of a text input (transforms/io/readers.py `binary_stream`, and through it the
manifest parsers and side-file readers) sees UTF-8 bytes split the same way:

- A file that starts with a UTF-16 byte-order mark (a spreadsheet's "Unicode text", LE or BE) is
  decoded as UTF-16 and handed on as UTF-8, streamed (`Utf16AsUtf8`): read as UTF-8, its every
  URL and caption was NUL-riddled garbage, every row invalid. Other files are not decoded here:
  their bad UTF-8 (a cp1252 caption) is replaced by U+FFFD where they are decoded, never fatal.
- Lines end in LF or CRLF, and a CR elsewhere is part of the text (a stray CR in a caption or in
  a JSON string). A file with no LF at its start (what the reader's buffer holds, 8 KiB or more)
  but a CR (classic Mac OS line ends) is split on CR, LF and CRLF (`split_lines`): read on LF, its
  every line was one, a single row or label line.
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Iterator
from typing import Any

__all__ = ["SNIFF", "Utf16AsUtf8", "cr_line_ends", "split_lines", "starts_utf16"]

SNIFF = 1 << 20  # at most this much of a file decides its line ends (peek gives one buffer: >= 8 KiB)
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class Utf16AsUtf8(io.RawIOBase):
    """UTF-8 bytes of a binary stream of UTF-16 text that starts with its byte-order mark.

    The mark decides the byte order and is dropped; bytes that are not UTF-16 (an odd last byte,
    a lone surrogate) become U+FFFD, as bad UTF-8 does elsewhere.
    """

    def __init__(self, source: Any) -> None:
        super().__init__()
        self._source = source
        self._decoder = codecs.getincrementaldecoder("utf-16")(errors="replace")
        self._pending = b""
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending and not self._ended:
            chunk = self._source.read(SNIFF)
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


def starts_utf16(binary: Any) -> bool:
    """Whether a buffered binary stream starts with a UTF-16 byte-order mark (LE or BE)."""
    return binary.peek(2)[:2] in _UTF16_BOMS


def cr_line_ends(binary: Any) -> bool:
    """Whether a buffered binary stream, at its start, has CR line ends only (classic Mac OS)."""
    head = binary.peek(SNIFF)[:SNIFF] if hasattr(binary, "peek") else b""
    return b"\r" in head and b"\n" not in head


def split_lines(binary: Any) -> Iterator[bytes]:
    """Lines of a buffered binary stream, line ends kept: split on LF, or in a file with CR line
    ends only (`cr_line_ends`) on CR, LF and CRLF."""
    return _cr_lines(binary) if cr_line_ends(binary) else iter(binary)


def _cr_lines(binary):
    """Lines of a binary stream split on CR, LF and CRLF (bytes.splitlines), line ends kept."""
    rest = b""
    while chunk := binary.read(SNIFF):
        lines = (rest + chunk).splitlines(keepends=True)
        # the last piece may go on in the next chunk, or be a CR whose LF comes next
        rest = lines.pop() if not lines[-1].endswith(b"\n") else b""
        yield from lines
    if rest:
        yield rest

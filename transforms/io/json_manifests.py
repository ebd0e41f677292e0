"""Manifests of the two JSON datasets: ImageNet-Captions and the CCMB Zero corpus.

Both parsers are generators over one binary file object (what Beam's FileSystems / fileio give)
that yield rows made by schema.new_row, streaming: the 463K-object imagenet_captions.json array
goes through ijson item by item, never json.load. A malformed record becomes a row with status
invalid_url and an `error`, never an exception and never a lost record. A file that stops being
JSON part-way (truncated, corrupt) yields one invalid row saying where reading stopped, since
nothing after that point can be delimited; bytes that are not UTF-8 are no such point:
they become U+FFFD, in both forms. Both accept either form of file: a first non-blank
character `[` means one (or several) JSON arrays, streamed by ijson; anything else is read as
one record a line (JSONL; blank lines skipped; a line that is not JSON is one invalid row).
An array file in which a top-level value that is not an array follows an array (a record
appended to an array file) is bad input naming the file, never read in part.
source_file is the file's path; source_line is the line of a JSONL record and null for array
elements (ijson gives no positions). Records without a usable id get the key
`<dataset>:<source_file>#<line or array index>`.

ImageNet-Captions (one JSON array of {filename, wnid, title, description, tags}):
  key `imagenet_captions:<filename>`; no URL, the image is `<imagenet_root>/<wnid>/<filename>`,
  set as both `url` and `_read_path` (the fetch stage reads it through FileSystems).
  caption: title, the tags joined by spaces, and description, in that order; inside each part
  every run of whitespace (\\n, \\r, tabs included) becomes one space; empty parts are left out and
  the rest joined by one space (the title + tags + description text commonly trained on);
  null when all three are empty. `title`, `description` and `tags` keep the text exactly as given.
  labels: [{id: wnid, name: class name from LOC_synset_mapping.txt (null if not listed),
  confidence 1.0, source "imagenet"}]. A filename or wnid holding a path separator or `..`
  never becomes a path (invalid row).

CCMB Zero (records {Url, Title, Content, Keywords, ImageKey, ImageUrl, ImageQuery}):
  key `zero:<ImageKey>` (a numeric ImageKey is written as text); url = ImageUrl;
  caption = Title exactly as given (null when empty); page_url = Url, description = Content,
  keywords = Keywords (a list is joined with ","), query = ImageQuery; title = Title.
  Chinese text is kept as decoded, never escaped or normalised.

No transforms here: `transforms.io.manifests.ReadManifests` (or `ReadImageNetCaptions`, `ReadZero`)
runs these parsers; each yields `schema.Row` dicts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import ijson
import numpy as np
from apache_beam.io.filesystems import FileSystems

from transforms import schema
from transforms.errors import BadInput
from transforms.io import readers
from transforms.io.labels import IMAGENET
from transforms.io.text_forms import AsUtf8, json_record, split_lines

IMAGENET_CAPTIONS = "imagenet_captions"
ZERO = "zero"
NAMESPACE = "json_manifests"

__all__ = [
    "IMAGENET_CAPTIONS",
    "ZERO",
    "NAMESPACE",
    "imagenet_caption",
    "iter_json_records",
    "parse_imagenet_captions",
    "parse_zero",
]

_WHITESPACE = re.compile(r"\s+")


def _squash(text):
    return _WHITESPACE.sub(" ", text).strip()


def imagenet_caption(title: str | None, tags: Iterable[str] | None, description: str | None) -> str | None:
    """The caption rule of ImageNet-Captions rows (see the module docstring)."""
    parts = [_squash(title or ""), _squash(" ".join(tags or ())), _squash(description or "")]
    caption = " ".join(p for p in parts if p)
    return caption or None


def _invalid(row, error):
    return schema.fail(row, schema.INVALID_URL, error)


def _position_key(dataset, source_name, position):
    # records without a usable native id still need a run-unique key
    return f"{dataset}:{source_name}#{position}"


def _text_field(record, name, required=False):
    """(value, error): a JSON string or number as text; None when absent/null."""
    value = record.get(name)
    if value is None:
        return None, (f"missing {name}" if required else None)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"{name} is {type(value).__name__}, not a string"
    value = value if isinstance(value, str) else str(value)
    if required and not value.strip():
        return None, f"empty {name}"
    return value, None


def _safe_path_part(value):
    return value not in (".", "..") and "/" not in value and "\\" not in value


def iter_json_records(
    fileobj: Any, source: str = "<stream>"
) -> Iterator[tuple[Any, int | None, int | str, str | None]]:
    """(record, line_no, position, error) of a JSON-array file or a JSON-lines file.

    The form is decided by the first character: `[` starts one (or several) top-level arrays,
    streamed by ijson (line_no None, position = index); anything else is read one record a line
    (position = line_no). A line that is not JSON gives (None, line_no, line_no, error); an array
    file that stops being JSON gives one final (None, None, "<next index>-", error).

    Raises:
        BadInput: naming `source`, when a top-level value that is not an array follows an array.
    """
    first, stream = readers.sniff(fileobj)
    if first == "[":
        # why AsUtf8: yajl stops at a byte that is not UTF-8 (a cp1252 title), and every record
        # after it was lost to one invalid row, exit 0; decoded with replacement, as JSON lines
        # are, the byte becomes U+FFFD (one raw read per read: a .gz cut keeps what came before)
        yield from _array_records(AsUtf8(stream, "utf-8"), source)
        return
    # LF only: a stray CR inside a record must not split it; CR too in a file with CR line ends
    # only (classic Mac OS) or where CRs part records, which read on LF were one invalid row
    for line_no, raw in enumerate(split_lines(stream, json_record), start=1):
        line = raw.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            record = json.loads(line, strict=False)  # strict=False: raw tabs inside strings
        except (ValueError, RecursionError) as err:  # RecursionError: a line nested too deep
            yield None, line_no, line_no, _squash(f"line {line_no} is not JSON: {err}")[:300]
            continue
        yield record, line_no, line_no, None


# Where a top-level array may end: a `]` not followed (past blanks) by `,`, `]` or `}`, as the
# `]` closing a list inside a record always is. Only these and the odd `]` inside a string cut
# the stream, so the cut costs nothing measurable (a few reads per 64 KiB).
_ARRAY_END = re.compile(rb"\](?=\s*(?:[^\s,\]}]|\Z))")
_NOT_BLANK = re.compile(rb"\S")
# A manifest record nests a few levels (an object holding a list). yajl has no depth limit and ijson
# keeps the path of every open level ("item.item.item..."), so memory grows with the square of the
# depth: 30,000 `[` in 60 KB took 2.3 GB. The read stops before the nesting can pass this depth.
_MAX_DEPTH = 2048
_SMALL_PIECE = 1024  # bytes: a piece whose openers could pass the depth is cut down to this


class _TooDeep(Exception):
    pass


def _count(buf: bytes, start: int, end: int, opening: bool) -> int:
    """How many `[` and `{` (opening) or `]` and `}` are in buf[start:end]: one vectorised pass
    (0x5B|0x20 = 0x7B `{`, 0x5D|0x20 = 0x7D `}`; no other byte ORs to those), ~11 us per 64 KiB."""
    if end <= start:
        return 0
    window = np.frombuffer(buf, np.uint8, count=end - start, offset=start)
    return int(np.count_nonzero((window | 0x20) == (0x7B if opening else 0x7D)))


class _Pieces:
    """A binary stream handed to ijson in pieces that end just after each possible array end.

    Why: one array is parsed at a time (ijson without multiple_values, which skipped silently
    every top-level value that is not an array); when yajl finds more JSON after the array, the
    piece it was reading starts right after that array, and `rest()` goes on from there.
    """

    def __init__(self, stream: Any, head: bytes = b"") -> None:
        self._stream, self._buf, self._pos = stream, head, 0
        self._start, self._ended = 0, True
        self.after_end = True  # the last piece read starts where an array may have ended
        # The nesting depth at the end of what was read: openers less closers (brackets inside
        # strings counted too), back to at most 1 + the last piece's openers at each record
        self._depth, self._opened = 0, 0

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes read() with read(0): it must consume nothing
            return b""
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._stream.read(size if size > 0 else 1 << 16), 0
        match = _ARRAY_END.search(self._buf, self._pos)
        end = match.end() if match else len(self._buf)
        opened = _count(self._buf, self._pos, end, opening=True)
        if self._depth + opened > _MAX_DEPTH:  # deep, or many brackets: in small pieces
            end = min(end, self._pos + _SMALL_PIECE)
            opened = _count(self._buf, self._pos, end, opening=True)
            if self._depth + opened > _MAX_DEPTH:
                raise _TooDeep
            match = match if match and match.end() == end else None
        self._depth = max(0, self._depth + opened - _count(self._buf, self._pos, end, opening=False))
        self._opened = opened
        piece = self._buf[self._pos : end]
        # blanks after an array end (a read ending in them) leave the next piece after that end
        self.after_end = self._ended
        self._ended = match is not None or (self._ended and _NOT_BLANK.search(piece) is None)
        self._start, self._pos = self._pos, end
        return piece

    def record_read(self) -> None:
        """A record ended in the last piece read: depth 1 there, then at most that piece's openers."""
        self._depth = min(self._depth, 1 + self._opened)

    def rest(self) -> tuple[bytes, _Pieces]:
        """(first non-blank byte of the last piece read, the stream from that piece on)."""
        head = self._buf[self._start :]
        found = _NOT_BLANK.search(head)
        return (found.group() if found else b""), _Pieces(self._stream, head)


def _array_records(stream, source):
    index = 0
    pieces = _Pieces(stream)
    while True:
        try:
            for record in ijson.items(pieces, "item", use_float=True):
                pieces.record_read()
                yield record, None, index, None
                index += 1
            return
        except _TooDeep:
            error = f"not JSON after {index} records: nested deeper than {_MAX_DEPTH} levels (a record has a few)"
            yield None, None, f"{index}-", error
            return
        except ijson.JSONError as err:
            message = str(err)
            if "trailing garbage" not in message:  # cut or corrupt: nothing after it can be delimited
                yield None, None, f"{index}-", _squash(f"not JSON after {index} records: {message}")[:300]
                return
        # an array was complete and more JSON follows: another array is read on; anything else
        # (a piece not after a possible array end never starts another array) is bad input
        after_end = pieces.after_end
        following, pieces = pieces.rest()
        if not after_end or following != b"[":
            raise BadInput(
                f"manifest {source}: a JSON value that is not an array follows the array ending"
                f" with record {index}; a JSON-array file holds arrays of records only"
                " (JSON lines: one record a line, no array)"
            )


# ---------------------------------------------------------------------------------------------
# ImageNet-Captions


def parse_imagenet_captions(
    fileobj: Any, source_name: str, imagenet_root: str | None, synsets: dict[str, str] | None = None
) -> Iterator[schema.Row]:
    """Rows of an imagenet_captions.json array (see the module docstring for the rules).

    fileobj: binary file object; source_name: its path (source_file column and fallback keys);
    imagenet_root: ILSVRC train root (local or gs://) holding <wnid>/<filename>;
    synsets: {wnid: class name} or None. JSON lines are accepted too.
    """
    synsets = synsets or {}
    # resolved once per file: looking the filesystem up per record cost a third of the parse
    join = FileSystems.get_filesystem(imagenet_root).join if imagenet_root else None
    for record, line_no, position, error in iter_json_records(fileobj, source_name):
        if error:
            row = schema.new_row(
                IMAGENET_CAPTIONS,
                _position_key(IMAGENET_CAPTIONS, source_name, position),
                source_file=source_name,
                source_line=line_no,
            )
            yield _invalid(row, error)
        else:
            yield _imagenet_row(record, line_no, position, source_name, imagenet_root, join, synsets)


def _imagenet_row(record, line_no, position, source_name, imagenet_root, join, synsets):
    if not isinstance(record, dict):
        row = schema.new_row(
            IMAGENET_CAPTIONS,
            _position_key(IMAGENET_CAPTIONS, source_name, position),
            source_file=source_name,
            source_line=line_no,
        )
        return _invalid(row, f"record is a JSON {type(record).__name__}, not an object")
    filename, err_f = _text_field(record, "filename", required=True)
    wnid, err_w = _text_field(record, "wnid", required=True)
    title, err_t = _text_field(record, "title")
    description, err_d = _text_field(record, "description")
    tags, err_g = _tags(record.get("tags"))
    key = f"{IMAGENET_CAPTIONS}:{filename}" if filename else _position_key(IMAGENET_CAPTIONS, source_name, position)
    path = None
    if filename and wnid and imagenet_root and _safe_path_part(filename) and _safe_path_part(wnid):
        path = join(imagenet_root, wnid, filename)
    labels = []
    if wnid:
        labels.append({"id": wnid, "name": synsets.get(wnid), "confidence": 1.0, "source": IMAGENET})
    row = schema.new_row(
        IMAGENET_CAPTIONS,
        key,
        url=path,
        caption=imagenet_caption(title, tags, description),
        title=title,
        description=description,
        tags=tags,
        labels=labels,
        source_file=source_name,
        source_line=line_no,
    )
    row["_read_path"] = path
    error = err_f or err_w or err_t or err_d or err_g
    if error is None and path is None:
        error = (
            "no --imagenet-root given"
            if not imagenet_root
            else f"filename {filename!r} or wnid {wnid!r} is not a plain file name"
        )
    return _invalid(row, error) if error else row


def _tags(value):
    """(list of str, error)."""
    if value is None:
        return [], None
    if isinstance(value, str):
        return [value], None
    if isinstance(value, list):
        return [t if isinstance(t, str) else json.dumps(t, ensure_ascii=False) for t in value], None
    return [], f"tags is {type(value).__name__}, not a list"


# ---------------------------------------------------------------------------------------------
# CCMB Zero


def parse_zero(fileobj: Any, source_name: str) -> Iterator[schema.Row]:
    """Rows of a Zero file, JSON lines or JSON array(s) (see the module docstring)."""
    for record, line_no, position, error in iter_json_records(fileobj, source_name):
        if error:
            row = schema.new_row(
                ZERO, _position_key(ZERO, source_name, position), source_file=source_name, source_line=line_no
            )
            yield _invalid(row, error)
        else:
            yield _zero_row(record, source_name, line_no, position)


def _zero_row(record, source_name, line_no, position):
    if not isinstance(record, dict):
        row = schema.new_row(
            ZERO, _position_key(ZERO, source_name, position), source_file=source_name, source_line=line_no
        )
        return _invalid(row, f"record is a JSON {type(record).__name__}, not an object")
    image_key, err_k = _text_field(record, "ImageKey", required=True)
    image_url, err_u = _text_field(record, "ImageUrl", required=True)
    title, err_t = _text_field(record, "Title")
    content, err_c = _text_field(record, "Content")
    page_url, err_p = _text_field(record, "Url")
    query, err_q = _text_field(record, "ImageQuery")
    keywords, err_w = _keywords(record.get("Keywords"))
    key = f"{ZERO}:{image_key}" if image_key else _position_key(ZERO, source_name, position)
    row = schema.new_row(
        ZERO,
        key,
        url=image_url,
        caption=title if title and title.strip() else None,
        title=title,
        description=content,
        keywords=keywords,
        page_url=page_url,
        query=query,
        source_file=source_name,
        source_line=line_no,
    )
    error = err_k or err_u or err_t or err_c or err_p or err_q or err_w
    return _invalid(row, error) if error else row


def _keywords(value):
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, list):
        return ",".join(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value), None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value), None
    return None, f"Keywords is {type(value).__name__}, not a string"

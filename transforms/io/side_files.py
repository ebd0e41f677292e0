"""Is a side file of the kind its option names? Checked on its first lines before the pipeline starts.

The side-file readers skip what they cannot read (a bad line is counted, the row keeps no label),
so a file of another kind given to an option (the CC3M manifest as `--cc3m-labels`, the Open
Images image list as `--openimages-classes`) ran with exit 0 and rows without their labels, class
names or hashes. `check_side_file(flag, path)` reads the first lines of every file `path` matches
and raises BadInput naming the option and the file when none of them is a line of its kind. A few
odd lines among good ones pass (the readers count those); `--long-captions` checks its header in
its reader (labels.parse_long_captions). Every side file, `--long-captions` included, is refused
when its text is compressed data (a compressed file not named so: readers.refuse_compressed_text).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable

from transforms.errors import BadInput
from transforms.io import labels
from transforms.io.checksums import parse_hash_list
from transforms.io.file_matches import matched_files, path_identity
from transforms.io.readers import CompressedInputError, open_stream

__all__ = ["SIDE_FILE_KINDS", "check_side_file", "head_lines"]

_HEAD_BYTES = 1 << 20
_HEAD_LINES = 20
_WNID = re.compile(r"n\d{8}")
_IMAGE_ID = re.compile(r"[0-9a-fA-F]{16}")


def head_lines(path: str, count: int = _HEAD_LINES, flag: str = "") -> list[str]:
    """The first `count` non-blank lines of a file (decompressed), at most its first MiB; compressed
    data inside (a compressed file not named so) is BadInput starting with `flag` (open_stream)."""
    with open_stream(path, flag) as binary:
        head = binary.read(_HEAD_BYTES)
    lines = head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()
    if len(head) == _HEAD_BYTES and len(lines) > 1:
        lines.pop()  # cut at the MiB
    return [line for line in lines if line.strip()][:count]


def _hash_line(line: str) -> bool | None:
    return next(parse_hash_list([line.encode("utf-8")])) is not None


def _cc3m_labels_line(line: str) -> bool | None:
    if line.count("\t") < 2:
        return False  # a manifest line: caption TAB url
    try:
        labels.parse_cc3m_labels_line(line)
    except labels.LabelListMismatch:
        return True  # its kind, one bad line: the reader counts it
    except ValueError:
        return False
    return True


def _openimages_labels_line(line: str) -> bool | None:
    fields = next(csv.reader([line]), [])
    if fields and fields[0].lstrip("\ufeff").strip().lower() == "imageid":
        return None  # a header, of a label file or not: its records decide
    if len(fields) == 1:
        return bool(_IMAGE_ID.fullmatch(fields[0].strip()))  # wide form, an image without labels
    try:
        return bool(labels.parse_openimages_label_line(line))
    except (ValueError, csv.Error):
        return False


def _class_line_ok(line: str) -> bool:
    fields = next(csv.reader([line]), [])
    return len(fields) >= 2 and fields[0].lstrip("\ufeff").strip().startswith("/")


def _synset_line(line: str) -> bool | None:
    return bool(_WNID.fullmatch(line.strip().partition(" ")[0]))


# option -> (what its file is, the line of that kind, one line judge: True of its kind, False not,
# None a header that says nothing)
SIDE_FILE_KINDS: dict[str, tuple[str, str, Callable[[str], bool | None]]] = {
    "--cc12m-hashes": ("a CC12M hash list", "url<TAB>sha256<TAB>md5, hex or base64", _hash_line),
    "--cc3m-labels": (
        "a CC3M Image Labels TSV",
        "caption<TAB>url<TAB>labels<TAB>MIDs<TAB>confidences",
        _cc3m_labels_line,
    ),
    "--openimages-labels": (
        "an Open Images image-level labels CSV",
        "ImageID,Source,LabelName,Confidence or ImageID,confidence:/m/...",
        _openimages_labels_line,
    ),
    "--openimages-classes": ("an Open Images class-names CSV", "/m/...,name", _class_line_ok),
    "--imagenet-synsets": ("a LOC_synset_mapping.txt", "n01440764 tench, Tinca tinca", _synset_line),
}


def _judge(flag: str, lines: list[str]) -> list[bool | None]:
    judge = SIDE_FILE_KINDS[flag][2]
    verdicts = [judge(line) for line in lines]
    if flag == "--openimages-classes" and verdicts and _class_header(lines[0]):
        verdicts[0] = None
    return verdicts


def _class_header(line: str) -> bool:
    """The V6/V7 header, LabelName,DisplayName (the V6 boxable file: id,name)."""
    fields = [f.lstrip("\ufeff").strip().lower() for f in next(csv.reader([line]), [])]
    return fields in (["labelname", "displayname"], ["id", "name"])


_URL = re.compile(r"\s*https?://", re.IGNORECASE)


def _url_at(field: Callable[[str], str]) -> Callable[[list[str]], bool]:
    """Whether some line has a URL in the field `field` picks."""
    return lambda lines: any(_URL.match(field(line)) for line in lines)


def _holds(*names: str) -> Callable[[list[str]], bool]:
    """Whether some line holds one of these JSON field names."""
    return lambda lines: any(f'"{name}"' in line for line in lines for name in names)


# Manifest kinds taken for one another: what each is, what tells it, that test on its first lines,
# and the kind it is taken for. CC3M and CC12M differ only in column order; Zero and
# ImageNet-Captions are both JSON.
_MANIFEST_SIGNS: dict[str, tuple[str, str, Callable[[list[str]], bool], str]] = {
    "cc3m": ("a CC3M manifest", "caption<TAB>url", _url_at(lambda line: line.rpartition("\t")[2]), "cc12m"),
    "cc12m": ("a CC12M manifest", "url<TAB>caption", _url_at(lambda line: line.partition("\t")[0]), "cc3m"),
    "zero": ("a Zero (CCMB) manifest", '"ImageKey", "ImageUrl"', _holds("ImageKey", "ImageUrl"), "imagenet_captions"),
    "imagenet_captions": ("an ImageNet-Captions file", '"filename", "wnid"', _holds("filename", "wnid"), "zero"),
}


def _check_manifest_kind(flag: str, kind: str, path: str) -> None:
    """BadInput when none of the first lines of a manifest reads as its kind and some read as the
    kind it is taken for (_MANIFEST_SIGNS): the two swapped. Read as given, every row was
    invalid_url (a caption in the url column, "missing ImageKey", "missing filename"), exit 0."""
    what, sign, reads_as, other = _MANIFEST_SIGNS[kind]
    try:
        lines = head_lines(path, flag=flag)
    except CompressedInputError:
        return  # cut short: the parser says where, or keeps what comes before (--accept-truncated)
    if reads_as(lines) or not _MANIFEST_SIGNS[other][2](lines):
        return
    raise BadInput(
        f"{flag}: {path} is not {what} ({sign}): none of its first {len(lines)} lines reads so, and they read"
        f" as {_MANIFEST_SIGNS[other][0]} ({_MANIFEST_SIGNS[other][1]}; the first: {lines[0][:120]!r});"
        f" give it as --manifest {other}=..."
    )


def check_side_file(flag: str, pattern: str | None, output: str | None = None) -> None:
    """BadInput when a file `pattern` matches has lines but none of the first 20 is of the kind
    `flag` reads (an empty file, or a header alone, passes: it holds nothing to lose), or whose
    text is compressed data (any side-file option).

    A manifest (flag `--manifest KIND=PATTERN`) is checked on its first file only, and only for
    the kind it is taken for (_MANIFEST_SIGNS: CC3M and CC12M, Zero and ImageNet-Captions); its
    parser does the rest.

    output: files inside it are left to preflight.check_not_inside_output, whose line says more.
    """
    if not pattern:
        return
    inside = path_identity(output) + "/" if output else None
    if flag.startswith("--manifest "):
        kind = flag.removeprefix("--manifest ").partition("=")[0]
        first = next(iter(matched_files(pattern)), None)
        if not first or (inside and path_identity(first).startswith(inside)):
            return
        if kind in _MANIFEST_SIGNS:
            _check_manifest_kind(flag, kind, first)
        return
    for path in matched_files(pattern):
        if inside and path_identity(path).startswith(inside):
            continue
        lines = head_lines(path, flag=flag)  # every side file: not compressed data
        if flag not in SIDE_FILE_KINDS:
            continue
        kind, form, _ = SIDE_FILE_KINDS[flag]
        verdicts = _judge(flag, lines)
        if True in verdicts or False not in verdicts:
            continue
        bad = lines[verdicts.index(False)]
        raise BadInput(
            f"{flag} {path}: not {kind}: none of its first {len(lines)} lines reads as {form}"
            f" (the first: {bad[:120]!r}); is it the file of another option?"
        )

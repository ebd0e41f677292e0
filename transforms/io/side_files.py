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

from apache_beam.io.filesystems import FileSystems

from transforms.errors import BadInput
from transforms.io import labels
from transforms.io.checksums import parse_hash_list
from transforms.io.manifests import path_identity
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
# The two TSV manifest kinds, which differ only in column order: (what it is, its line, its URL field)
_TSV_MANIFESTS: dict[str, tuple[str, str, Callable[[str], str]]] = {
    "cc3m": ("a CC3M manifest", "caption<TAB>url", lambda line: line.rpartition("\t")[2]),
    "cc12m": ("a CC12M manifest", "url<TAB>caption", lambda line: line.partition("\t")[0]),
}


def _check_tsv_manifest(flag: str, kind: str, path: str) -> None:
    """BadInput when none of the first lines of a CC3M or CC12M manifest has a URL where its kind
    puts it, and some have one where the other kind does: the two kinds swapped. Read as given,
    every row was invalid_url with its caption in the url column, exit 0."""
    other = "cc12m" if kind == "cc3m" else "cc3m"
    try:
        lines = head_lines(path, flag=flag)
    except CompressedInputError:
        return  # cut short: the parser says where, or keeps what comes before (--accept-truncated)
    if any(_URL.match(_TSV_MANIFESTS[kind][2](line)) for line in lines):
        return
    if any(_URL.match(_TSV_MANIFESTS[other][2](line)) for line in lines):
        what, form, _ = _TSV_MANIFESTS[kind]
        raise BadInput(
            f"{flag}: {path} is not {what} ({form}): none of its first {len(lines)} lines has its URL"
            f" there, and they read as {_TSV_MANIFESTS[other][0]} ({_TSV_MANIFESTS[other][1]}; the first:"
            f" {lines[0][:120]!r}); give it as --manifest {other}=..."
        )


# The JSON manifests, told apart by their field names: what each is, and the fields only it has.
_JSON_MANIFESTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "zero": ("a Zero (CCMB) manifest", ('"ImageKey"', '"ImageUrl"')),
    "imagenet_captions": ("an ImageNet-Captions file", ('"filename"', '"wnid"')),
}


def _check_json_manifest(flag: str, kind: str, path: str) -> None:
    """BadInput when the first lines of a Zero or ImageNet-Captions manifest hold none of its
    kind's fields and some of the other kind's: the two kinds swapped. Read as given, every row
    was invalid_url ("missing ImageKey", "missing filename"), exit 0."""
    other = "imagenet_captions" if kind == "zero" else "zero"
    try:
        text = "\n".join(head_lines(path, flag=flag))
    except CompressedInputError:
        return  # cut short: the parser says where
    if any(field in text for field in _JSON_MANIFESTS[kind][1]):
        return
    if any(field in text for field in _JSON_MANIFESTS[other][1]):
        raise BadInput(
            f"{flag}: {path} is not {_JSON_MANIFESTS[kind][0]}: its first lines have none of its fields"
            f" ({', '.join(_JSON_MANIFESTS[kind][1])}) and read as {_JSON_MANIFESTS[other][0]}"
            f" ({', '.join(_JSON_MANIFESTS[other][1])}); give it as --manifest {other}=..."
        )


def check_side_file(flag: str, pattern: str | None, output: str | None = None) -> None:
    """BadInput when a file `pattern` matches has lines but none of the first 20 is of the kind
    `flag` reads (an empty file, or a header alone, passes: it holds nothing to lose), or whose
    text is compressed data (any side-file option).

    A manifest (flag `--manifest KIND=PATTERN`) is checked on its first file only, and only for
    the kind it is most often taken for: CC3M and CC12M for each other's column order
    (_check_tsv_manifest), Zero and ImageNet-Captions for each other's fields
    (_check_json_manifest); its parser does the rest.

    output: files inside it are left to preflight.check_not_inside_output, whose line says more.
    """
    if not pattern:
        return
    inside = path_identity(output) + "/" if output else None
    if flag.startswith("--manifest "):
        kind = flag.removeprefix("--manifest ").partition("=")[0]
        first = next((m.path for r in FileSystems.match([pattern]) for m in r.metadata_list), None)
        if not first or (inside and path_identity(first).startswith(inside)):
            return
        if kind in _TSV_MANIFESTS:
            _check_tsv_manifest(flag, kind, first)
        elif kind in _JSON_MANIFESTS:
            _check_json_manifest(flag, kind, first)
        return
    for result in FileSystems.match([pattern]):
        for metadata in result.metadata_list:
            if inside and path_identity(metadata.path).startswith(inside):
                continue
            lines = head_lines(metadata.path, flag=flag)  # every side file: not compressed data
            if flag not in SIDE_FILE_KINDS:
                continue
            kind, form, _ = SIDE_FILE_KINDS[flag]
            verdicts = _judge(flag, lines)
            if True in verdicts or False not in verdicts:
                continue
            bad = lines[verdicts.index(False)]
            raise BadInput(
                f"{flag} {metadata.path}: not {kind}: none of its first {len(lines)} lines reads as {form}"
                f" (the first: {bad[:120]!r}); is it the file of another option?"
            )

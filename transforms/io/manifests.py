"""Reading URL manifests into rows, one row per manifest record, malformed records included.

Each parser is a generator over an open binary file, so a 12M-line manifest streams through a
worker without being held in memory. Keys are `dataset:native id`; line-numbered datasets add the
file name when a dataset has several files, so keys stay unique across the run.

Public transforms (rows are `schema.Row` dicts):

- `ReadManifests([(kind, pattern)], parsers, spread_rows)`: PBegin -> one row per manifest record.
- `ReadImageNetCaptions(pattern, imagenet_root, synsets_path)`, `ReadZero(pattern)`: PBegin -> rows
  of one JSON dataset, through ReadManifests.
- `RepeatedKeys(parsers)`: `(kind, path, key prefix)` -> `(key, (file, ordinal))` of keys that repeat
  (and with_taken, the native keys that read like a rename of one).
- `ParseManifestFile(parsers)` (DoFn): `(kind, path, key prefix)` -> rows of that file, streamed.
"""

from __future__ import annotations

import base64
import binascii
import csv
import functools
import io
import math
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from typing import IO

import apache_beam as beam

from transforms import schema
from transforms.errors import BadInput
from transforms.io import json_manifests, labels
from transforms.io.file_matches import matched_files, normalise_path, path_identity
from transforms.io.readers import CompressedInputError, open_stream
from transforms.io.text_forms import split_lines, tsv_record

__all__ = [
    "parse_cc3m",
    "parse_cc12m",
    "parse_openimages",
    "parse_zero_manifest",
    "parse_imagenet_manifest",
    "md5_hex",
    "sha256_hex",
    "ManifestParsers",
    "ParseManifestFile",
    "expand_manifests",
    "LINE_KEYED",
    "RepeatedKeys",
    "ReadManifests",
    "ReadImageNetCaptions",
    "ReadZero",
]


def _lines(binary):
    """(1-based line number, text) with the newline removed; bad UTF-8 is replaced, not fatal.

    Split on LF and CRLF, or on CR too in a file with CR line ends only or where CRs part TSV
    records (text_forms.split_lines).
    """
    for number, raw in enumerate(split_lines(binary, tsv_record), start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark is not part of the first caption or URL
        yield number, raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace")


def _none_if_blank(text):
    text = (text or "").strip()
    return text or None


# A URL at the start of a TSV field (CC3M: a record's URL run into the next record's caption), or
# one glued to the end of the text before it (CC12M: a caption run into the next record's URL)
_URL_STARTS_FIELD = re.compile(r"^\s*https?://", re.IGNORECASE)
_URL_ENDS_FIELD = re.compile(r"(?:^|\S)https?://\S*\s*$", re.IGNORECASE)
_RUN_TOGETHER = (
    "malformed line: two records run together (a line that lost its newline: files joined by cat"
    " where one did not end in a newline?); split it in two"
)


def _runs_together(line: str, url_in_field: re.Pattern) -> bool:
    """Whether a TSV manifest line holds two records: a field between its first and last holds
    the next record's URL where the run-together form puts it (`url_in_field`).

    Why: `cat a.tsv b.tsv` with no newline at a.tsv's end joins two records on one line; split on
    one TAB, it was an ok row of one URL with the other record in its caption, exit 0.
    """
    if line.count("\t") < 2:  # the common line: one TAB, nothing to look at
        return False
    return any(url_in_field.search(field) for field in line.split("\t")[1:-1])


def parse_cc3m(binary: IO[bytes], source: str, key_prefix: str) -> Iterator[schema.Row]:
    """CC3M TSV: caption TAB url, no header. Split on the LAST tab: captions may hold anything."""
    for number, line in _lines(binary):
        if not line.strip():
            continue
        key = f"{key_prefix}{number}"
        # why rstrip: an empty column after the URL (a spreadsheet's export) left the URL empty
        line = line.rstrip(" \t")
        caption, sep, url = line.rpartition("\t")
        row = schema.new_row(
            "cc3m",
            key,
            url.strip() if sep else None,
            _none_if_blank(caption) if sep else None,
            source_file=source,
            source_line=number,
        )
        if not sep:
            schema.fail(row, schema.INVALID_URL, "malformed line: expected caption<TAB>url")
            row["caption"] = _none_if_blank(line)
        elif _runs_together(line, _URL_STARTS_FIELD):
            schema.fail(row, schema.INVALID_URL, _RUN_TOGETHER)
        yield row


def parse_cc12m(binary: IO[bytes], source: str, key_prefix: str) -> Iterator[schema.Row]:
    """CC12M TSV: url TAB caption, no header. Split on the FIRST tab."""
    for number, line in _lines(binary):
        if not line.strip():
            continue
        # why lstrip: an empty column before the URL (a spreadsheet's export) left the URL empty
        line = line.lstrip(" \t")
        url, sep, caption = line.partition("\t")
        row = schema.new_row(
            "cc12m",
            f"{key_prefix}{number}",
            url.strip(),
            _none_if_blank(caption),
            source_file=source,
            source_line=number,
        )
        if not sep:
            schema.fail(row, schema.INVALID_URL, "malformed line: expected url<TAB>caption")
        elif _runs_together(line, _URL_ENDS_FIELD):
            schema.fail(row, schema.INVALID_URL, _RUN_TOGETHER)
        yield row


def md5_hex(value: str | None) -> str | None:
    """Hex MD5 from hex (32 chars) or base64 of the binary digest (24 chars); None if neither."""
    return _digest_hex(value, 16)


def sha256_hex(value: str | None) -> str | None:
    """Hex SHA-256 from hex (64 chars) or base64 of the binary digest (44 chars); None if neither."""
    return _digest_hex(value, 32)


def _digest_hex(value, size):
    value = (value or "").strip()
    if len(value) == 2 * size:
        try:
            return bytes.fromhex(value).hex()
        except ValueError:
            return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == size else None


def _rotation(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def parse_openimages(binary: IO[bytes], source: str, key_prefix: str) -> Iterator[schema.Row]:
    """Open Images image list: RFC-4180 CSV with a header; every column-set version, by name."""
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")
    # strict: a quote left open to the end of the file is an error; read leniently, the records
    # after it silently became one title and were lost with exit 0
    reader = csv.reader(text, strict=True)
    try:
        yield from _openimages_rows(reader, source, key_prefix)
    except csv.Error as exc:
        # Why BadInput: the csv module stops the file here (a field past its limit, often a quote
        # left open that ran on to the next lines), and nothing past it can be delimited.
        raise BadInput(
            f"manifest {source}: unreadable CSV at line {reader.line_num} ({exc});"
            " a quote left open before it runs a field on over the following lines"
        ) from None


_OPENIMAGES_HEADER_NAMES = frozenset({"ImageID", "OriginalURL"})  # a record holding both is a header


def _openimages_columns(header):
    """{column name: index} of an Open Images header; a byte-order mark (a joined file's) dropped."""
    return {name.lstrip("\ufeff").strip(): i for i, name in enumerate(header)}


def _openimages_rows(reader, source, key_prefix):
    header = next(reader, None)
    if header is None:
        return
    columns = _openimages_columns(header)
    if "OriginalURL" not in columns:
        # Why not a row per record: without the header, its first record was taken for it and
        # would be lost, and every other record has no URL to fetch; the user gave another file.
        raise BadInput(
            f"manifest {source}: first line {','.join(header)[:120]!r} has no OriginalURL column;"
            " an Open Images image list starts with its header (ImageID,...,OriginalURL,...)"
        )
    next_line = reader.line_num + 1
    for record in reader:
        number, next_line = next_line, reader.line_num + 1
        if not any(field.strip() for field in record):
            continue
        if _OPENIMAGES_HEADER_NAMES <= _openimages_columns(record).keys():
            # why: lists joined by `cat` (train, validation, test; V3 without Rotation) repeat their
            # header: it was a row (openimages:ImageID) and a new column set made the records after
            # it invalid; it is no record, and the records after it are read by their own header
            header, columns = record, _openimages_columns(record)
            continue
        fields = {name: record[i] if i < len(record) else None for name, i in columns.items()}
        image_id = _none_if_blank(fields.get("ImageID"))
        key = f"openimages:{image_id}" if image_id else f"{key_prefix}line{number}"
        row = schema.new_row(
            "openimages",
            key,
            _none_if_blank(fields.get("OriginalURL")),
            None,
            source_file=source,
            source_line=number,
            page_url=_none_if_blank(fields.get("OriginalLandingURL")),
            license=_none_if_blank(fields.get("License")),
            author=_none_if_blank(fields.get("Author")),
            title=_none_if_blank(fields.get("Title")),
            rotation=_rotation(fields.get("Rotation")),
        )
        original_md5 = _none_if_blank(fields.get("OriginalMD5"))
        if original_md5:
            row["expected_md5"] = md5_hex(original_md5)
        if len(record) != len(header):
            schema.fail(row, schema.INVALID_URL, f"malformed record: {len(record)} fields, header has {len(header)}")
        elif not image_id:
            schema.fail(row, schema.INVALID_URL, "record has no ImageID")
        elif original_md5 and row["expected_md5"] is None:
            schema.fail(row, schema.INVALID_URL, f"OriginalMD5 {original_md5!r} is not an MD5 digest")
        yield row


def parse_zero_manifest(binary: IO[bytes], source: str, _key_prefix: str) -> Iterator[schema.Row]:
    """CCMB Zero JSON (lines or arrays); keys come from ImageKey."""
    return json_manifests.parse_zero(binary, source)


def parse_imagenet_manifest(
    binary: IO[bytes],
    source: str,
    _key_prefix: str,
    imagenet_root: str | None = None,
    synsets: dict[str, str] | None = None,
) -> Iterator[schema.Row]:
    """ImageNet-Captions JSON; images are read from imagenet_root, not fetched over HTTP."""
    return json_manifests.parse_imagenet_captions(binary, source, imagenet_root, synsets)


class ManifestParsers:
    """KIND -> parser(binary file, source path, key prefix) -> rows.

    A table object rather than module state, so a job can configure parsers (ImageNet's root and
    class names) and pickle the whole table along with the DoFn.
    """

    def __init__(self, imagenet_root: str | None = None, imagenet_synsets: dict[str, str] | None = None) -> None:
        self.parsers = {
            "cc3m": parse_cc3m,
            "cc12m": parse_cc12m,
            "openimages": parse_openimages,
            "zero": parse_zero_manifest,
            "imagenet_captions": functools.partial(
                parse_imagenet_manifest, imagenet_root=imagenet_root, synsets=imagenet_synsets
            ),
        }

    def __contains__(self, kind):
        return kind in self.parsers

    def __getitem__(self, kind):
        return self.parsers[kind]


class ParseManifestFile(beam.DoFn):
    """(kind, path, key prefix, label) -> rows of that file, streamed.

    A compressed file cut short or corrupt (readers.CompressedInputError) fails the run naming
    the file and its last good line; with accept_truncated the rows read before the cut are kept
    and the cut is reported on the TRUNCATED output as {"path", "last_line", "rows", "reason"}.
    Every file also yields {"path", "records"} on the RECORDS output: the books' "in" side.
    """

    RECORDS = "records"
    TRUNCATED = "truncated"

    def __init__(self, parsers, counted=True, accept_truncated=False):
        self._parsers = parsers
        self._counted = counted  # False for a second pass over the same files
        self._accept_truncated = accept_truncated

    def setup(self):
        self._rows = beam.metrics.Metrics.counter("manifest", "rows")
        self._malformed = beam.metrics.Metrics.counter("manifest", "malformed")

    def process(self, spec, repeated=None, taken=()):
        """repeated: RepeatedKeys as a dict, to rename later occurrences of a key while parsing;
        taken: RepeatedKeys' TAKEN output, native keys a rename must not become."""
        kind, path, key_prefix, label = spec
        parse = self._parsers[kind]
        records, last_line = 0, 0
        taken = frozenset(taken)
        try:
            with open_stream(path, "manifest") as binary:
                for ordinal, row in enumerate(parse(binary, path, key_prefix), start=1):
                    row["_ordinal"] = ordinal
                    if repeated:
                        _rename_repeat(row, repeated, label, taken)
                    if self._counted:
                        self._rows.inc()
                        if row.get("status"):
                            self._malformed.inc()
                    records, last_line = ordinal, row.get("source_line") or ordinal
                    yield row
        except CompressedInputError as exc:
            where = f"after line {last_line}" if last_line else "before its first line"
            if not self._accept_truncated:
                raise BadInput(
                    f"manifest {path}: compressed file is truncated or corrupt {where}"
                    f" ({exc.reason}); --accept-truncated ingests the {records} records"
                    " read before it"
                ) from None
            if self._counted:
                yield beam.pvalue.TaggedOutput(
                    self.TRUNCATED, {"path": path, "last_line": last_line, "rows": records, "reason": exc.reason}
                )
        if self._counted:
            yield beam.pvalue.TaggedOutput(self.RECORDS, {"path": path, "records": records})


def file_labels(paths):
    """Normalised paths -> {path: label}: the path relative to the paths' common folder.

    One file: its basename. Files of one folder: their basenames (the keys of earlier versions);
    files of several folders: `2024/part-0.tsv`, `2025/part-0.tsv`, unambiguous.
    """
    if len(paths) == 1:
        return {paths[0]: posixpath.basename(paths[0])}
    remote = [p for p in paths if "://" in p]
    if remote and len(remote) != len(paths):  # local and gs:// files of one dataset: full names
        return {p: p for p in paths}
    folders = [posixpath.dirname(p) for p in paths]
    if remote:
        schemes = {p.split("://", 1)[0] + "://" for p in paths}
        if len(schemes) > 1:
            return {p: p for p in paths}
        scheme = schemes.pop()
        root = posixpath.commonpath([f[len(scheme) - 1 :] for f in folders])  # keeps the leading "/"
        return {p: posixpath.relpath(p[len(scheme) - 1 :], root) for p in paths}
    root = os.path.commonpath(folders)
    return {p: os.path.relpath(p, root).replace(os.sep, "/") for p in paths}


def expand_manifests(manifests, parsers):
    """[(kind, pattern)] -> [(kind, path, key prefix, label)], matched now so a typo fails at launch.

    A file reached by two names (two --manifest flags, overlapping globs, `a/../a/x.tsv`, a
    symlink) is read once. Line-numbered keys name the file by its label (file_labels) once a
    dataset has several files, so files of the same name in different folders never share a key.
    """
    files, first_match = [], {}  # path identity -> the (kind, pattern) that matched it first
    for kind, pattern in manifests:
        if kind not in parsers:
            raise BadInput(f"unknown manifest kind {kind!r}; expected one of {', '.join(sorted(parsers.parsers))}")
        matched = sorted(normalise_path(path) for path in matched_files(pattern))
        if not matched:
            raise BadInput(f"no file matches {kind}={pattern}")
        for path in matched:
            identity = path_identity(path)
            if identity not in first_match:
                first_match[identity] = (kind, pattern)
                files.append((kind, path))
            elif first_match[identity][0] != kind:
                # why: a file is a manifest of one kind; read as each, its every line gave two rows
                # (one of them invalid_url garbage), exit 0: `zero=/in/*` beside `cc12m=/in/m.tsv`
                first_kind, first_pattern = first_match[identity]
                raise BadInput(
                    f"{path} is matched by --manifest {first_kind}={first_pattern} and by --manifest"
                    f" {kind}={pattern}: a file is a manifest of one kind; narrow the patterns so that"
                    " each file is given once"
                )
    per_kind = {}
    for kind, path in files:
        per_kind.setdefault(kind, []).append(path)
    labels_of = {kind: file_labels(paths) for kind, paths in per_kind.items()}
    return [
        (
            kind,
            path,
            f"{kind}:{labels_of[kind][path]}:" if len(per_kind[kind]) > 1 else f"{kind}:",
            labels_of[kind][path],
        )
        for kind, path in files
    ]


LINE_KEYED = frozenset({"cc3m", "cc12m"})  # keys from line numbers: unique by construction


def _position(row):
    """Where a record stands: (file, ordinal of the record in its file)."""
    return (row.get("source_file") or "", row.get("_ordinal") or 0)


def _first_and_count(positions):
    positions = list(positions)
    return (min(p for p, _ in positions), sum(n for _, n in positions))


class RepeatedKeys(beam.PTransform):
    """Manifest files -> (key, position of its first occurrence) for keys that occur more than once.

    Keys stay unique when a manifest repeats an ImageID, ImageKey or filename: the first occurrence
    (by file, then line) keeps `dataset:id`; each later one becomes `dataset:id@file:line`,
    deterministic across runs (`_rename_repeat`). This is a pass of its own over the files of
    ID-keyed datasets, so that only keys and positions cross a shuffle and the rows themselves
    stream from the file into the fetch (the local runner holds what crosses a shuffle in memory).

    with_taken: return {"repeated": the above, TAKEN: native keys of the form `<repeated key>@...`}.
    A native ID may itself read like a rename (an ImageKey `1@z.jsonl:2` beside ImageKey `1`
    repeated at z.jsonl line 2): the rename must not take it (`_rename_repeat`). Only keys holding
    an `@` after a repeated key cross that join, a handful in real manifests.
    """

    TAKEN = "taken"

    def __init__(self, parsers, accept_truncated=False, with_taken=False):
        super().__init__()
        self._parsers = parsers
        self._accept_truncated = accept_truncated
        self._with_taken = with_taken

    def expand(self, files):
        positions = (
            files
            | "IdKeyedFiles" >> beam.Filter(lambda spec: spec[0] not in LINE_KEYED)
            | "Keys"
            >> beam.ParDo(ParseManifestFile(self._parsers, counted=False, accept_truncated=self._accept_truncated))
            | "Positions" >> beam.Map(lambda row: (row["key"], (_position(row), 1)))
        )
        repeated = (
            positions
            | "FirstAndCount" >> beam.CombinePerKey(_first_and_count)
            | "Repeated" >> beam.Filter(lambda item: item[1][1] > 1)
            | "FirstOnly" >> beam.Map(lambda item: (item[0], item[1][0]))
        )
        if not self._with_taken:
            return repeated
        taken = (
            {
                "native": positions | "RenameBases" >> beam.FlatMap(_rename_bases),
                "repeated": repeated | "RepeatedMark" >> beam.MapTuple(lambda key, _first: (key, True)),
            }
            | "JoinBases" >> beam.CoGroupByKey()
            | "Taken" >> beam.FlatMap(lambda item: item[1]["native"] if item[1]["repeated"] else [])
            | "OnceEach" >> beam.Distinct()
        )
        return {"repeated": repeated, self.TAKEN: taken}


def _rename_bases(item):
    """(base, native key) for each `@` of a native key: the repeated key it may read as a rename of."""
    key = item[0]
    start = key.find("@")
    while start > 0:
        yield key[:start], key
        start = key.find("@", start + 1)


def _rename_repeat(row, first, label, taken=frozenset()):
    """label: the file's label (file_labels), unambiguous among the run's files of the dataset.

    taken: native keys of the run that read like renames (RepeatedKeys.TAKEN). A rename that
    meets one gets `#2`, `#3`, ...: the native record keeps its ID, and no rename ends so (a
    line or `#ordinal` follows the last `:` of every rename), so the result is unique.
    """
    key = row["key"]
    if key in first and _position(row) != tuple(first[key]):
        _file, ordinal = _position(row)
        where = row.get("source_line") or f"#{ordinal}"  # records of a JSON array have no line
        renamed = candidate = f"{key}@{label}:{where}"
        number = 1
        while candidate in taken:
            number += 1
            candidate = f"{renamed}#{number}"
        row["key"] = candidate
    return row


class ReadManifests(beam.PTransform):
    """[(kind, pattern)] -> one row per manifest record.

    spread_rows: cross a shuffle so that the fetch spreads over workers (Dataflow fuses it onto
    the worker that read the file otherwise). Off for a local run in one process, where the rows
    then stream from the file into the fetch instead of being held in memory all at once.
    accept_truncated: keep what a cut compressed file held (ParseManifestFile) instead of failing.
    with_books: return {"rows", "records", "truncated"} (ParseManifestFile's outputs), not the rows.
    """

    def __init__(self, manifests, parsers=None, spread_rows=True, accept_truncated=False, with_books=False):
        super().__init__()
        self._parsers = parsers or ManifestParsers()
        self._files = expand_manifests(manifests, self._parsers)
        self._spread_rows = spread_rows
        self._accept_truncated = accept_truncated
        self._with_books = with_books

    @property
    def files(self):
        """[(kind, path, key prefix, label)] of the matched manifest files."""
        return list(self._files)

    def expand(self, pbegin):
        files = pbegin | "ManifestFiles" >> beam.Create(self._files) | "SpreadFiles" >> beam.Reshuffle()
        repeated = files | "RepeatedKeys" >> RepeatedKeys(self._parsers, self._accept_truncated, with_taken=True)
        # The parse itself takes the side input: a step of its own after the parse would make
        # the runner hold every parsed row until the side input is ready.
        parsed = files | "ParseRecords" >> beam.ParDo(
            ParseManifestFile(self._parsers, accept_truncated=self._accept_truncated),
            repeated=beam.pvalue.AsDict(repeated["repeated"]),
            taken=beam.pvalue.AsList(repeated[RepeatedKeys.TAKEN]),
        ).with_outputs(ParseManifestFile.RECORDS, ParseManifestFile.TRUNCATED, main="rows")
        rows = parsed.rows
        if self._spread_rows:
            # Rows cross the shuffle in batches: a runner's cost per shuffled element is far above
            # a row's size.
            rows = (
                rows
                | "Batch" >> beam.BatchElements(min_batch_size=256, max_batch_size=256)
                | "SpreadRows" >> beam.Reshuffle()
                | "Unbatch" >> beam.FlatMap(lambda batch: batch)
            )
        if not self._with_books:
            return rows
        return {
            "rows": rows,
            "records": parsed[ParseManifestFile.RECORDS],
            "truncated": parsed[ParseManifestFile.TRUNCATED],
        }


def _patterns(pattern):
    return [pattern] if isinstance(pattern, str) else list(pattern)


class ReadImageNetCaptions(beam.PTransform):
    """Rows of imagenet_captions.json files (path, glob or list), through ReadManifests.

    imagenet_root: ILSVRC train root; synsets_path: LOC_synset_mapping.txt or None.
    """

    def __init__(
        self, pattern: str | Sequence[str], imagenet_root: str | None, synsets_path: str | None = None
    ) -> None:
        super().__init__()
        self._pattern = pattern
        self._root = imagenet_root
        self._synsets_path = synsets_path

    def expand(self, pbegin):
        synsets = labels.load_synsets(self._synsets_path) if self._synsets_path else None
        return pbegin | "Read" >> ReadManifests(
            [(json_manifests.IMAGENET_CAPTIONS, p) for p in _patterns(self._pattern)],
            ManifestParsers(self._root, synsets),
        )


class ReadZero(beam.PTransform):
    """Rows of CCMB Zero files (path, glob or list), JSONL or JSON arrays, through ReadManifests."""

    def __init__(self, pattern: str | Sequence[str]) -> None:
        super().__init__()
        self._pattern = pattern

    def expand(self, pbegin):
        return pbegin | "Read" >> ReadManifests([(json_manifests.ZERO, p) for p in _patterns(self._pattern)])

"""Label and caption side files of the seed datasets, and the Beam joins that attach them to rows.

Formats (shared FORMATS.md), each with a plain parser and a PTransform that reads it:

- Open Images class names: V1 `dict.csv` (no header, every field quoted), `class-descriptions.csv`
  (no header, quoted only where needed), V6/V7 `oidv7-class-descriptions.csv` (header
  `LabelName,DisplayName`; the V6 boxable file says `id,name`). The csv module reads all three;
  the form only decides whether the first record is a header (`class_file_form`).
- Open Images image-level labels, every header form: `ImageID,Source,LabelName,Confidence`, the
  older `ImageID,Source,Label,Confidence`, and the first release's wide form, one line per image:
  `000060e3121c7305,0.9:/m/06ht1,0.9:/m/05wrt,...` (seen in machine_ann_2016_08/train/labels.csv,
  openimages/dataset issue #1). The wide form has no Source column: a file whose path contains
  "human" (human_ann_2016_08/...) is source "human", any other "machine". Lines are classified one
  by one, so a file can be split across workers (ReadFromText) without knowing its header.
- CC3M `Image_Labels_Subset_Train_GCC-Labels-training.tsv`: caption TAB url TAB labels TAB mids
  TAB confidences, the three lists comma-separated and possibly all empty.
- DreamLIP long captions CSV, records with quoted multi-line fields: parsed by the csv module from
  one stream per file (fileio), never line by line.
- ImageNet `LOC_synset_mapping.txt`: `n01440764 tench, Tinca tinca`, split on the first space.

Joins: the label files are far larger than any worker's memory (tens of millions of Open Images
label rows), so rows and labels meet in a CoGroupByKey keyed by ImageID or URL; only the small
class-name table (~20K) is a side input. Rows a join does not concern pass through untouched, and
every input row comes out exactly once.

Public transforms (rows are `schema.Row` dicts; a pattern is a path, glob or list of them):

- `JoinOpenImagesLabels(label_paths, classes_path)`: rows -> the same rows, Open Images rows with
  `labels` and `negative_labels`.
- `JoinCC3MLabels(path)`: rows -> the same rows, CC3M rows with `labels`.
- `JoinLongCaptions(path, datasets)`: rows -> the same rows, with `long_captions`.
- `JoinRowsByKey(side, key_fn, attach, counter_name)`: the generic join under the three above.
- `ReadOpenImagesClasses(pattern)`: PBegin -> `(mid, name)`.
- `ReadOpenImagesLabels(paths)`: PBegin -> `(image_id, (mid, confidence, source))`.
- `ReadCC3MLabels(pattern)`: PBegin -> `(url, [label dict])`.
- `ReadLongCaptions(pattern)`: PBegin -> `(url, long_captions dict)`.
- `ReadSynsets(pattern)`: PBegin -> `(wnid, class name)`.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import schema
from transforms.errors import BadInput
from transforms.io import readers

__all__ = [
    "NAMESPACE",
    "OPENIMAGES",
    "CC3M",
    "IMAGENET",
    "MACHINE",
    "HUMAN",
    "FORM_DICT_V1",
    "FORM_CLASS_DESCRIPTIONS",
    "FORM_HEADER",
    "LONG_CAPTION_COLUMNS",
    "LONG_CAPTION_FIELDS",
    "DREAMLIP_URL_COLUMN",
    "class_file_form",
    "parse_class_descriptions",
    "read_class_descriptions",
    "ReadOpenImagesClasses",
    "source_from_path",
    "parse_openimages_label_line",
    "is_negative",
    "ReadOpenImagesLabels",
    "build_openimages_labels",
    "JoinRowsByKey",
    "openimages_image_id",
    "JoinOpenImagesLabels",
    "LabelListMismatch",
    "parse_cc3m_labels_line",
    "ReadCC3MLabels",
    "JoinCC3MLabels",
    "parse_long_captions",
    "ReadLongCaptions",
    "JoinLongCaptions",
    "parse_synsets",
    "ReadSynsets",
    "load_synsets",
]

NAMESPACE = "labels"

OPENIMAGES = "openimages"
CC3M = "cc3m"
IMAGENET = "imagenet"
MACHINE = "machine"
HUMAN = "human"

# Class-name file forms, as `class_file_form` names them.
FORM_DICT_V1 = "dict_v1"  # "/m/05wrt","property"
FORM_CLASS_DESCRIPTIONS = "class_descriptions"  # /m/05wrt,property
FORM_HEADER = "header"  # LabelName,DisplayName (V6/V7) or id,name

# DreamLIP header -> long_captions struct field (schema.LONG_CAPTIONS_TYPE).
LONG_CAPTION_COLUMNS = {
    "raw_caption": "raw",
    "shortib_captions": "short_instructblip",
    "longib_captions": "long_instructblip",
    "shortsv_captions": "short_sharegpt4v",
    "longsv_captions": "long_sharegpt4v",
    "shortlla_captions": "short_llava",
    "longlla_captions": "long_llava",
}
LONG_CAPTION_FIELDS = tuple(LONG_CAPTION_COLUMNS.values())
DREAMLIP_URL_COLUMN = "image path"

_CSV_FIELD_LIMIT = 1 << 24  # long captions can pass the csv module's 128 KiB default


def _label(mid, name, confidence, source):
    return {"id": mid, "name": name, "confidence": confidence, "source": source}


def _confidence(text):
    value = float(text)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"confidence {text!r} is not in [0, 1]")
    return value


# ---------------------------------------------------------------------------------------------
# Open Images class names


def class_file_form(first_record: Sequence[str] | None, first_raw_line: str = "") -> str:
    """Which class-name form a file is, from its first CSV record and that record's raw text."""
    first = (first_record[0] if first_record else "").lstrip("\ufeff").strip()
    if first and not first.startswith("/"):
        return FORM_HEADER  # every id is a /m/ or /g/ path; anything else is a header
    if first_raw_line.lstrip("\ufeff").startswith('"'):
        return FORM_DICT_V1
    return FORM_CLASS_DESCRIPTIONS


def parse_class_descriptions(fileobj: Any) -> Iterator[tuple[str, str]]:
    """(mid, display name) pairs of any class-name file form; fileobj is a binary stream."""
    for _form, mid, name in read_class_descriptions(fileobj):
        yield mid, name


def read_class_descriptions(fileobj: Any, source: str = "") -> Iterator[tuple[str, str, str]]:
    """(form, mid, name) triples: like parse_class_descriptions, with the detected file form.

    A quote left open (or a field past the csv module's limit) is BadInput naming `source`.
    """
    text = readers.text_stream(fileobj)
    first_line = text.readline()
    if not first_line:
        return
    # Re-read the first line with the csv module (it may be quoted); the rest streams on.
    records = _strict_records(_chain_first(first_line, text), "--openimages-classes", source)
    first = next(records, None)
    form = class_file_form(first, first_line)
    if form != FORM_HEADER and first:
        pair = _class_pair(first)
        if pair:
            yield (form,) + pair
    for record in records:
        pair = _class_pair(record)
        if pair:
            yield (form,) + pair


def _strict_records(lines: Iterable[str], flag: str, source: str) -> Iterator[list[str]]:
    """CSV records of a side file; a quote left open is BadInput naming the file and line.

    Why strict: read leniently, a quote left open runs its field on to the end of the file, so the
    records after it become one name or caption and their rows lose theirs behind exit 0; past the
    csv module's field limit the same mistake was an "unexpected" exit 1.
    """
    reader = csv.reader(lines, strict=True)
    try:
        yield from reader
    except csv.Error as exc:
        where = f"{flag} {source}: " if source else f"{flag}: "
        raise BadInput(
            f"{where}unreadable CSV at line {reader.line_num} ({exc});"
            " a quote left open before it runs a field on over the following lines"
        ) from None


def _chain_first(first_line, rest):
    yield first_line
    yield from rest


def _class_pair(record):
    if len(record) < 2:
        return None
    mid = record[0].lstrip("\ufeff").strip()
    name = record[1].strip()
    if not mid:
        return None
    return (mid, name)


class _ParseClassFileFn(beam.DoFn):
    def __init__(self):
        self.classes = Metrics.counter(NAMESPACE, "openimages_classes")

    def process(self, readable_file):
        form = None
        for row_form, mid, name in read_class_descriptions(readable_file.open(), readable_file.metadata.path):
            form = row_form  # the last row's, logged below
            self.classes.inc()
            yield (mid, name)
        logging.info("class names %s read as %s", readable_file.metadata.path, form)


def ReadOpenImagesClasses(pattern: str | Sequence[str]) -> beam.PTransform:  # noqa: N802 (returns a PTransform)
    """PCollection of (mid, name) from dict.csv / class-descriptions files (path, glob or list)."""
    return readers.ParseFiles(pattern, beam.ParDo(_ParseClassFileFn()))


# ---------------------------------------------------------------------------------------------
# Open Images image-level labels


def source_from_path(path: str | None) -> str:
    """Source of a wide-form label file, which has no Source column (human_ann_... -> human)."""
    return HUMAN if HUMAN in (path or "").lower() else MACHINE


def parse_openimages_label_line(line: str, default_source: str = MACHINE) -> list[tuple[str, str, float, str]]:
    """(image_id, mid, confidence, source) tuples of one label-file line, any header form.

    Header and blank lines give []. A line that is none of the forms raises ValueError.
    `default_source` is used by the wide form only (see `source_from_path`).
    """
    if not line.strip():
        return []
    fields = [f.strip() for f in next(csv.reader([line]))]
    image_id = fields[0].lstrip("\ufeff")
    if image_id.lower() == "imageid":
        return []  # header of any form
    if not image_id:
        raise ValueError("empty ImageID")
    if len(fields) >= 2 and ":" in fields[1]:
        # Wide form: ImageID,conf:mid,conf:mid,...; confidences are numbers, so the first colon
        # separates them from the mid.
        out = []
        for field in fields[1:]:
            if not field:
                continue
            conf, sep, mid = field.partition(":")
            if not sep or not mid:
                raise ValueError(f"wide-form field {field!r} is not confidence:label")
            out.append((image_id, mid, _confidence(conf), default_source))
        return out
    if len(fields) == 1:
        return []  # wide form, image without labels
    if len(fields) != 4:
        raise ValueError(f"{len(fields)} fields, expected ImageID,Source,LabelName,Confidence")
    _, source, mid, conf = fields
    if not mid or not source:
        raise ValueError("empty Source or LabelName")
    return [(image_id, mid, _confidence(conf), source.lower())]


def is_negative(source: str, confidence: float) -> bool:
    """Human-verified negative: any non-machine source with confidence 0."""
    return confidence == 0.0 and source != MACHINE


class _ParseOpenImagesLabelsFn(beam.DoFn):
    """(filename, line) -> (image_id, (mid, confidence, source)); bad lines counted, skipped."""

    def __init__(self):
        self.parsed = Metrics.counter(NAMESPACE, "openimages_labels_parsed")
        self.bad = Metrics.counter(NAMESPACE, "openimages_labels_bad_line")
        self._warned = 0

    def process(self, element):
        filename, line = element
        try:
            records = parse_openimages_label_line(line, source_from_path(filename))
        except (ValueError, csv.Error) as err:
            self.bad.inc()
            if self._warned < 10:  # a few examples in the worker log, not millions
                self._warned += 1
                logging.warning("bad Open Images label line in %s: %s (%r)", filename, err, line[:200])
            return
        for image_id, mid, conf, source in records:
            self.parsed.inc()
            yield image_id, (mid, conf, source)


def ReadOpenImagesLabels(label_paths: str | Sequence[str]) -> beam.PTransform:  # noqa: N802
    """PCollection of (ImageID, (mid, confidence, source)) from label files (paths or globs).

    Lines are self-describing, so files can be split across workers (ReadFromText).
    """
    return readers.ParseFiles(label_paths, beam.ParDo(_ParseOpenImagesLabelsFn()), lines=True, with_filename=True)


def build_openimages_labels(
    records: Iterable[tuple[str, float, str]], class_names: dict[str, str] | None
) -> tuple[list[dict], list[dict]]:
    """(labels, negative_labels) lists from (mid, confidence, source) records of one image.

    Exact duplicates (the same file given twice) collapse; order is by confidence, then source,
    then id, so the output does not depend on shuffle order.
    """
    positives, negatives = [], []
    for mid, conf, source in sorted(set(records), key=lambda r: (-r[1], r[2], r[0])):
        label = _label(mid, class_names.get(mid) if class_names else None, conf, source)
        if is_negative(source, conf):
            negatives.append(label)
        elif conf > 0.0:
            positives.append(label)
        # machine confidence 0 is neither a label nor a verified negative: dropped
    return positives, negatives


# ---------------------------------------------------------------------------------------------
# Generic keyed join: rows x side records, CoGroupByKey, other rows untouched

_ROWS = "rows"
_SIDE = "side"
_OTHER = "other"


class _KeyRowsFn(beam.DoFn):
    def __init__(self, key_fn):
        self._key_fn = key_fn

    def process(self, row):
        key = self._key_fn(row)
        if key is None:
            yield beam.pvalue.TaggedOutput(_OTHER, row)
        else:
            yield key, row


class _AttachFn(beam.DoFn):
    """For each joined key: every row once, with `attach(row, side_values, *side_inputs)`."""

    def __init__(self, attach, counter_name):
        self._attach = attach
        self.joined = Metrics.counter(NAMESPACE, counter_name + "_rows_joined")
        self.unmatched = Metrics.counter(NAMESPACE, counter_name + "_rows_unmatched")

    def process(self, element, *side_inputs):
        _key, grouped = element
        rows = grouped[_ROWS]
        # No rows: side records for rows not in this run, and nothing to yield.
        values = list(grouped[_SIDE]) if rows else []
        for row in rows:
            if values:
                self.joined.inc()
                yield self._attach(row, values, *side_inputs)
            else:
                self.unmatched.inc()
                yield row


class JoinRowsByKey(beam.PTransform):
    """Rows whose key_fn(row) is not None meet `side` (key, value) records in a CoGroupByKey.

    attach(row, values, *side_inputs) returns the new row (never mutate the input). Rows with
    key None, and matched rows, come out exactly once each.
    """

    def __init__(
        self,
        side: beam.PCollection,
        key_fn: Callable[[schema.Row], Any | None],
        attach: Callable[..., schema.Row],
        counter_name: str,
        side_inputs: Sequence[Any] = (),
    ) -> None:
        super().__init__()
        self._side = side
        self._key_fn = key_fn
        self._attach = attach
        self._counter_name = counter_name
        self._side_inputs = side_inputs

    def expand(self, rows):
        split = rows | "KeyRows" >> beam.ParDo(_KeyRowsFn(self._key_fn)).with_outputs(_OTHER, main="keyed")
        joined = (
            {_ROWS: split.keyed, _SIDE: self._side}
            | "CoGroup" >> beam.CoGroupByKey()
            | "Attach" >> beam.ParDo(_AttachFn(self._attach, self._counter_name), *self._side_inputs)
        )
        return (joined, split[_OTHER]) | "Merge" >> beam.Flatten()


def openimages_image_id(row):
    """ImageID of an Open Images row (key "openimages:<ImageID>"), None for other rows.

    A repeated ImageID's later rows are keyed "openimages:<ImageID>@<file>:<line>"
    (manifests._rename_repeat): they carry the same image's labels, so the suffix is dropped.
    """
    if row.get("dataset") != OPENIMAGES or not row.get("key"):
        return None
    key = row["key"]
    prefix = OPENIMAGES + ":"
    image_id = key[len(prefix) :] if key.startswith(prefix) else key
    return image_id.split("@", 1)[0]


def _attach_openimages(row, records, class_names=None):
    positives, negatives = build_openimages_labels(records, class_names)
    out = dict(row)
    out["labels"] = list(row.get("labels") or []) + positives
    out["negative_labels"] = list(row.get("negative_labels") or []) + negatives
    return out


class JoinOpenImagesLabels(beam.PTransform):
    """Open Images rows get `labels` and `negative_labels` from label files, joined by ImageID.

    label_paths: one path/glob or a list (machine and human files, any header form).
    classes_path: dict.csv or any class-descriptions file (names become label `name`), or None.
    """

    def __init__(self, label_paths: str | Sequence[str], classes_path: str | None = None) -> None:
        super().__init__()
        self._label_paths = label_paths
        self._classes_path = classes_path

    def expand(self, rows):
        labels = rows.pipeline | "ReadLabels" >> ReadOpenImagesLabels(self._label_paths)
        side_inputs = ()
        if self._classes_path:
            classes = rows.pipeline | "ReadClasses" >> ReadOpenImagesClasses(self._classes_path)
            side_inputs = (beam.pvalue.AsDict(classes),)
        return rows | "Join" >> JoinRowsByKey(
            labels, openimages_image_id, _attach_openimages, "openimages_labels", side_inputs
        )


# ---------------------------------------------------------------------------------------------
# CC3M Image Labels TSV


class LabelListMismatch(ValueError):
    """labels, MIDs and confidences of one CC3M line differ in length."""


def parse_cc3m_labels_line(line: str) -> tuple[str, list[dict]]:
    """(url, [label dicts]) of one CC3M labels TSV line.

    Raises LabelListMismatch when the three lists differ in length and ValueError for a line
    without a URL or with a bad confidence. Empty lists give [] (tolerated).
    """
    fields = line.rstrip("\r\n").split("\t")
    if len(fields) > 5:
        # a TAB inside the caption: the last four fields are url and the three lists
        fields = ["\t".join(fields[:-4])] + fields[-4:]
    fields += [""] * (5 - len(fields))
    _caption, url, names, mids, confs = fields
    url = url.strip()
    if not url:
        raise ValueError("no URL")
    names, mids, confs = (_comma_list(x) for x in (names, mids, confs))
    if not (len(names) == len(mids) == len(confs)):
        raise LabelListMismatch(f"{len(names)} labels, {len(mids)} MIDs, {len(confs)} confidences")
    return url, [_label(mid, name, _confidence(conf), CC3M) for name, mid, conf in zip(names, mids, confs, strict=True)]


def _comma_list(text):
    text = text.strip()
    return [item.strip() for item in text.split(",")] if text else []


class _ParseCC3MLabelsFn(beam.DoFn):
    def __init__(self):
        self.parsed = Metrics.counter(NAMESPACE, "cc3m_labels_lines")
        self.empty = Metrics.counter(NAMESPACE, "cc3m_labels_empty_lists")
        self.mismatch = Metrics.counter(NAMESPACE, "cc3m_labels_length_mismatch")
        self.bad = Metrics.counter(NAMESPACE, "cc3m_labels_bad_line")
        self._warned = 0

    def process(self, line):
        if not line.strip():
            return
        try:
            url, labels = parse_cc3m_labels_line(line)
        except LabelListMismatch as err:
            self.mismatch.inc()
            self._warn("CC3M label lists of different lengths, labels skipped: %s (%r)", err, line)
            return
        except ValueError as err:
            self.bad.inc()
            self._warn("bad CC3M labels line, skipped: %s (%r)", err, line)
            return
        self.parsed.inc()
        if not labels:
            self.empty.inc()
            return
        yield url, labels

    def _warn(self, fmt, err, line):
        if self._warned < 10:
            self._warned += 1
            logging.warning(fmt, err, line[:200])


def ReadCC3MLabels(pattern: str | Sequence[str]) -> beam.PTransform:  # noqa: N802
    """PCollection of (url, [label dicts]) from CC3M labels TSVs (path, glob or list)."""
    return readers.ParseFiles(pattern, beam.ParDo(_ParseCC3MLabelsFn()), lines=True)


def _cc3m_url(row):
    if row.get("dataset") != CC3M or not row.get("url"):
        return None
    return row["url"].strip()


def _attach_cc3m(row, label_lists):
    seen, joined = set(), []
    # a URL listed twice: union of its labels, in a shuffle-independent order
    for labels in sorted(label_lists, key=repr):
        for label in labels:
            ident = (label["id"], label["name"], label["confidence"])
            if ident not in seen:
                seen.add(ident)
                joined.append(label)
    out = dict(row)
    out["labels"] = list(row.get("labels") or []) + joined
    return out


class JoinCC3MLabels(beam.PTransform):
    """CC3M rows get `labels` (source "cc3m", id = MID, name = label) by URL.

    path: the Image Labels TSV (path, glob or list). Label lists of different lengths are
    counted (counter labels/cc3m_labels_length_mismatch) and that line's labels skipped.
    """

    def __init__(self, path: str | Sequence[str]) -> None:
        super().__init__()
        self._path = path

    def expand(self, rows):
        labels = rows.pipeline | "ReadCC3MLabels" >> ReadCC3MLabels(self._path)
        return rows | "Join" >> JoinRowsByKey(labels, _cc3m_url, _attach_cc3m, "cc3m_labels")


# ---------------------------------------------------------------------------------------------
# DreamLIP long captions


def parse_long_captions(fileobj: Any, source: str = "") -> Iterator[tuple[str, dict[str, str | None]]]:
    """(url, long_captions dict) per record of a DreamLIP CSV; empty fields become None.

    Records, not lines: quoted fields may hold newlines, commas and quotes. Columns are found by
    header name (case and spaces ignored); a file without an `Image Path` column is rejected with
    BadInput (exit 2) naming `source`, the file's path: the user gave the wrong file.
    """
    records = _strict_records(readers.text_stream(fileobj), "--long-captions", source)
    header = next(records, None)
    if header is None:
        return
    names = [h.lstrip("\ufeff").strip().lower() for h in header]
    if DREAMLIP_URL_COLUMN not in names:
        where = f"--long-captions {source}: " if source else ""
        raise BadInput(f"{where}not a DreamLIP long-caption CSV: header {header!r} has no 'Image Path' column")
    url_at = names.index(DREAMLIP_URL_COLUMN)
    columns = [(names.index(col), field) for col, field in LONG_CAPTION_COLUMNS.items() if col in names]
    for record in records:
        if not record:
            continue
        url = record[url_at].strip() if url_at < len(record) else ""
        captions = dict.fromkeys(LONG_CAPTION_FIELDS)
        for at, field in columns:
            if at < len(record) and record[at] != "":
                captions[field] = record[at]
        yield url, captions


class _ParseLongCaptionsFn(beam.DoFn):
    def __init__(self):
        self.parsed = Metrics.counter(NAMESPACE, "long_captions_records")
        self.no_url = Metrics.counter(NAMESPACE, "long_captions_no_url")

    def setup(self):
        csv.field_size_limit(_CSV_FIELD_LIMIT)

    def process(self, readable_file):
        for url, captions in parse_long_captions(readable_file.open(), readable_file.metadata.path):
            if not url:
                self.no_url.inc()
                continue
            self.parsed.inc()
            yield url, captions


def ReadLongCaptions(pattern: str | Sequence[str]) -> beam.PTransform:  # noqa: N802
    """PCollection of (url, long_captions dict) from DreamLIP CSVs (path, glob or list).

    One file is read by one worker (records span lines): its records are spread before the join.
    """
    return readers.ParseFiles(pattern, beam.ParDo(_ParseLongCaptionsFn()), spread=True)


def _long_caption_rank(captions):
    # a URL listed twice: prefer the fuller record, then a fixed order
    return (-sum(v is not None for v in captions.values()), [captions[f] or "" for f in LONG_CAPTION_FIELDS])


def _attach_long_captions(row, captions_list):
    out = dict(row)
    out["long_captions"] = min(captions_list, key=_long_caption_rank)
    return out


class JoinLongCaptions(beam.PTransform):
    """Rows get the `long_captions` struct by URL from DreamLIP CSVs (path, glob or list).

    datasets: the row datasets to join (default: every row with a URL; DreamLIP covers CC3M and
    CC12M, whose URLs overlap).
    """

    def __init__(self, path: str | Sequence[str], datasets: Iterable[str] | None = None) -> None:
        super().__init__()
        self._path = path
        self._datasets = frozenset(datasets) if datasets else None

    def expand(self, rows):
        captions = rows.pipeline | "ReadLongCaptions" >> ReadLongCaptions(self._path)
        datasets = self._datasets

        def row_url(row):
            if datasets is not None and row.get("dataset") not in datasets:
                return None
            url = row.get("url")
            return url.strip() if url else None

        return rows | "Join" >> JoinRowsByKey(captions, row_url, _attach_long_captions, "long_captions")


# ---------------------------------------------------------------------------------------------
# ImageNet synsets


def parse_synsets(fileobj: Any) -> Iterator[tuple[str, str]]:
    """(wnid, class name) pairs of LOC_synset_mapping.txt: split on the first space."""
    for line in readers.text_stream(fileobj):
        line = line.strip()
        if not line:
            continue
        wnid, _, name = line.partition(" ")
        yield wnid, name.strip()


def ReadSynsets(pattern: str | Sequence[str]) -> beam.PTransform:  # noqa: N802
    """PCollection of (wnid, class name) from LOC_synset_mapping.txt (path, glob or list)."""
    return readers.ParseFiles(pattern, beam.FlatMap(lambda f: parse_synsets(f.open())))


def load_synsets(path: str) -> dict[str, str]:
    """{wnid: name} read at construction time (1,000 lines), for callers outside a pipeline."""
    with readers.open_path(path) as f:
        return dict(parse_synsets(f))

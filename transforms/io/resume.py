"""Resuming an ingest: keep the rows a previous run settled, fetch only the rest again.

Public transform: `MergeWithPrevious(previous, retry_statuses)`: manifest rows (`schema.Row`) ->
{"carry": previous rows kept as they are, "fetch": rows to fetch again}.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam

from transforms import schema
from transforms.errors import BadInput
from transforms.io.manifests import LINE_KEYED

__all__ = [
    "FETCH_OUTCOME_COLUMNS",
    "DESCRIPTION_COLUMNS",
    "EXPECTED_HASH_COLUMNS",
    "SizeLimits",
    "reset_for_refetch",
    "parse_retry_statuses",
    "MergeWithPrevious",
]

# Everything a fetch decides; reset before a row is fetched again. Manifest and join columns stay.
FETCH_OUTCOME_COLUMNS = (
    "status",
    "http_status",
    "error",
    "sha256",
    "md5",
    "phash",
    "dhash",
    "width",
    "height",
    "blob",
    "cluster_id",
    "is_canonical",
    "fetched_at",
    "format",
    "content_type",
    "size_bytes",
    "final_url",
    "etag",
    "last_modified",
    "fetch_ms",
    "attempts",
)

# What this run's manifests and side files (--cc3m-labels, --openimages-labels, --long-captions)
# say about a row's picture; a carried row takes them from this run's record of its key.
# why: a resume with a caption corrected or a labels file added kept OUT's old caption and labels
# on the carried rows only: the table mixed two versions of the text behind exit 0.
DESCRIPTION_COLUMNS = (
    "caption",
    "labels",
    "negative_labels",
    "long_captions",
    "title",
    "description",
    "tags",
    "keywords",
    "page_url",
    "query",
    "license",
    "author",
    "rotation",
    "source_file",
    "source_line",
)

# What this run's --cc12m-hashes (and an Open Images manifest's OriginalMD5) expect of a row's
# bytes: the fetch's verdict (ok or hash_mismatch) depends on them.
# why: a resume with another hash list (or the same path rewritten) carried OUT's rows with the old
# list's expected hash and verdict, while the rows fetched again were checked against the new one:
# one table of two hash lists behind exit 0.
EXPECTED_HASH_COLUMNS = ("expected_sha256", "expected_md5")


@dataclasses.dataclass(frozen=True)
class SizeLimits:
    """This run's --max-bytes and --max-pixels (None: no limit): an `ok` row OUT holds past either
    is fetched again, so this run's limit decides it (too_large, decode_error).

    why: a resume with a lower limit carried OUT's rows past it as `ok` while a row fetched again
    past it failed: one table of two limits behind exit 0.
    """

    max_bytes: int | None = None
    max_pixels: int | None = None

    def exceeded_by(self, row: schema.Row) -> bool:
        """An `ok` row whose size in bytes or pixels is past a limit.

        Args:
            row: a row of OUT's table.
        Returns:
            True when this run's fetch would not store it as `ok`.
        """
        if row.get("status") != schema.OK:
            return False
        size, width, height = row.get("size_bytes"), row.get("stored_width"), row.get("stored_height")
        if width is None or height is None:  # tables written before stored_* existed
            width, height = row.get("width"), row.get("height")
        return (self.max_bytes is not None and size is not None and size > self.max_bytes) or (
            self.max_pixels is not None
            and width is not None
            and height is not None
            and width * height > self.max_pixels
        )


def reset_for_refetch(row: schema.Row) -> schema.Row:
    """A copy of `row` with every fetch outcome cleared, ready to be fetched again."""
    row = dict(row)
    for name in FETCH_OUTCOME_COLUMNS:
        row[name] = None
    return row


def parse_retry_statuses(text: str | None) -> frozenset[str]:
    """'timeout,connection_error' -> frozenset; None or '' -> every status but ok."""
    if not text:
        return frozenset(s for s in schema.STATUSES if s != schema.OK)
    chosen = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = chosen - set(schema.STATUSES)
    if unknown:
        raise ValueError(f"--retry-status: unknown status {', '.join(sorted(unknown))}")
    return chosen


class _Choose(beam.DoFn):
    FETCH = "fetch"
    KEPT = "kept"

    def __init__(self, retry_statuses, key_prefixes, limits=None):
        self._retry = retry_statuses
        self._prefixes = key_prefixes
        self._limits = limits or SizeLimits()

    def setup(self):
        self._carried = beam.metrics.Metrics.counter("resume", "carried")
        self._refetched = beam.metrics.Metrics.counter("resume", "refetched")
        self._new = beam.metrics.Metrics.counter("resume", "new")

    def process(self, item):
        key, grouped = item
        new = next(iter(grouped["new"]), None)
        olds = list(grouped["old"])
        if len(olds) > 1:
            # Why refused: an output of an earlier version whose keys collided. Which old row a
            # record matches is unknown; keeping them all (as before) wrote the key two or three
            # times behind exit 0, and the books now count distinct keys (row_keys.py).
            where = sorted(f"{o.get('source_file') or '?'}" for o in olds)
            raise BadInput(
                f"--resume: OUT holds {key} {len(olds)} times ({', '.join(where[:3])}): an output of an"
                " earlier version whose keys collided; which record each row is cannot be told."
                " Ingest the manifests into a new --output"
            )
        old = olds[0] if olds else None
        if old is not None and new is not None and old.get("url") != new.get("url"):
            yield from self._moved(old, new)
            return
        if old is not None and new is None:
            self._check_key_scheme(old)
            # Why: a row no manifest lists any more is kept; the books count it as read from OUT.
            yield beam.pvalue.TaggedOutput(self.KEPT, old.get("source_file") or "")
        if old is not None and old["status"] not in self._retry and not self._verdict_changes(old, new):
            self._carried.inc()
            if new is not None:  # the record's text and place as this run's manifests give them
                old.update({name: new.get(name) for name in DESCRIPTION_COLUMNS + EXPECTED_HASH_COLUMNS})
            yield old
        elif new is not None:
            (self._refetched if old is not None else self._new).inc()
            yield beam.pvalue.TaggedOutput(self.FETCH, new)
        else:
            self._refetched.inc()
            yield beam.pvalue.TaggedOutput(self.FETCH, reset_for_refetch(old))

    def _verdict_changes(self, old, new):
        """This run's fetch could settle a row of OUT otherwise: it expects other bytes of a row OUT
        hashed (another hash list: ok or hash_mismatch), or the row is `ok` past this run's size
        limits. A row OUT holds no bytes of (a 404) just takes the new expected hashes; a row no
        manifest lists any more keeps its own."""
        if new is None:
            return False
        hashed = old.get("sha256") is not None
        return (hashed and any(old.get(name) != new.get(name) for name in EXPECTED_HASH_COLUMNS)) or (
            self._limits.exceeded_by(old)
        )

    def _check_key_scheme(self, old):
        """A CC3M/CC12M row of a file this run reads, whose line this run keys otherwise: a file added
        to a single-file run (`cc3m:7` becomes `cc3m:a.tsv:7`), or a folder added that moves the
        files' common folder. Keeping it (no manifest lists its key) while its line is fetched again
        under the new key stored every row of the file twice, books balanced, exit 0."""
        prefix = self._prefixes.get(old.get("source_file"))
        if prefix is None or old.get("dataset") not in LINE_KEYED or old.get("source_line") is None:
            return
        now = f"{prefix}{old['source_line']}"
        if now != old["key"]:
            raise BadInput(
                f"--resume: OUT holds {old['key']} for {old['source_file']} line {old['source_line']}, which"
                f" these manifests key {now} (CC3M and CC12M keys name the file once a dataset has several):"
                " every row of that file would be stored twice. Resume with the manifests OUT was made from,"
                " or ingest them all into a new --output"
            )

    def _moved(self, old, new):
        """A key whose URL in the manifests is not the one OUT fetched."""
        if new.get("dataset") in LINE_KEYED:
            # A line number names a record only within its manifest: these manifests are not the
            # ones OUT was made from (the next slice of a manifest, an edited copy). Carrying the
            # old row would give this line another URL's image; fetching the new one would drop a
            # record OUT holds under the same key.
            where = f"{new.get('source_file') or 'the manifest'} line {new.get('source_line')}"
            raise BadInput(
                f"--resume: OUT holds {new['key']} fetched from {old.get('url')}, but {where} gives"
                f" {new.get('url')}: OUT was ingested from other manifests (CC3M and CC12M keys are line"
                " numbers). Resume with the manifests OUT was made from, or ingest these into a new --output"
            )
        # An ID names its record whatever its URL: the manifest moved it, so OUT's fetch of the old
        # URL says nothing of the new one.
        self._refetched.inc()
        yield beam.pvalue.TaggedOutput(self.FETCH, new)


class MergeWithPrevious(beam.PTransform):
    """Manifest rows + a previous run's rows -> {"carry": settled rows, "fetch": rows to fetch}.

    By key: a previous row whose status is not retried is carried with its fetch outcome and this
    run's text (DESCRIPTION_COLUMNS: caption, labels, ... as the manifests give them); otherwise, or
    when this run expects other bytes of it (EXPECTED_HASH_COLUMNS: another hash list) or it is
    `ok` past this run's `limits` (SizeLimits), the manifest's row (or the previous row, reset) is
    fetched again. A key the manifests give
    another URL is fetched again when its dataset is keyed by ID, and refused (BadInput) when it
    is keyed by line number: those manifests are not the ones OUT was made from; so is a line-keyed
    row of a file these manifests read but key otherwise (key_prefixes: {path: key prefix} of this
    run's CC3M and CC12M files), and a key OUT holds twice. Previous rows the manifests no
    longer list are kept: a resume never loses rows; "kept" has the source_file of each (the
    books count them as rows read from OUT).
    """

    def __init__(
        self,
        previous: beam.PCollection,
        retry_statuses: frozenset[str],
        key_prefixes: dict[str, str] | None = None,
        limits: SizeLimits | None = None,
    ) -> None:
        super().__init__()
        self._previous = previous
        self._retry = retry_statuses
        self._prefixes = dict(key_prefixes or {})
        self._limits = limits or SizeLimits()

    def expand(self, new_rows):
        keyed = lambda label, rows: rows | label >> beam.Map(lambda row: (row["key"], row))  # noqa: E731
        chosen = (
            {"new": keyed("KeyNew", new_rows), "old": keyed("KeyOld", self._previous)}
            | "ByKey" >> beam.CoGroupByKey()
            | "Choose"
            >> beam.ParDo(_Choose(self._retry, self._prefixes, self._limits)).with_outputs(
                _Choose.FETCH, _Choose.KEPT, main="carry"
            )
        )
        return {"carry": chosen.carry, "fetch": chosen[_Choose.FETCH], "kept": chosen[_Choose.KEPT]}

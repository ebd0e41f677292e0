"""Resuming an ingest: keep the rows a previous run settled, fetch only the rest again.

Public transform: `MergeWithPrevious(previous, retry_statuses)`: manifest rows (`schema.Row`) ->
{"carry": previous rows kept as they are, "fetch": rows to fetch again}.
"""
from __future__ import annotations

import apache_beam as beam

from transforms import schema

__all__ = ["FETCH_OUTCOME_COLUMNS", "reset_for_refetch", "parse_retry_statuses", "MergeWithPrevious"]

# Everything a fetch decides; reset before a row is fetched again. Manifest and join columns stay.
FETCH_OUTCOME_COLUMNS = (
    "status", "http_status", "error", "sha256", "md5", "phash", "dhash", "width", "height", "blob",
    "cluster_id", "is_canonical", "fetched_at", "format", "content_type", "size_bytes", "final_url",
    "etag", "last_modified", "fetch_ms", "attempts",
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

    def __init__(self, retry_statuses):
        self._retry = retry_statuses

    def setup(self):
        self._carried = beam.metrics.Metrics.counter("resume", "carried")
        self._refetched = beam.metrics.Metrics.counter("resume", "refetched")
        self._new = beam.metrics.Metrics.counter("resume", "new")

    def process(self, item):
        _key, grouped = item
        new = next(iter(grouped["new"]), None)
        old = next(iter(grouped["old"]), None)
        if old is not None and old["status"] not in self._retry:
            self._carried.inc()
            yield old
        elif new is not None:
            (self._refetched if old is not None else self._new).inc()
            yield beam.pvalue.TaggedOutput(self.FETCH, new)
        else:
            self._refetched.inc()
            yield beam.pvalue.TaggedOutput(self.FETCH, reset_for_refetch(old))


class MergeWithPrevious(beam.PTransform):
    """Manifest rows + a previous run's rows -> {"carry": settled rows, "fetch": rows to fetch}.

    By key: a previous row whose status is not retried is carried as it is; otherwise the
    manifest's row (or the previous row, reset) is fetched again. Previous rows the manifests no
    longer list are kept: a resume never loses rows.
    """

    def __init__(self, previous: beam.PCollection, retry_statuses: frozenset[str]) -> None:
        super().__init__()
        self._previous = previous
        self._retry = retry_statuses

    def expand(self, new_rows):
        keyed = lambda label, rows: rows | label >> beam.Map(lambda row: (row["key"], row))  # noqa: E731
        chosen = (
            {"new": keyed("KeyNew", new_rows), "old": keyed("KeyOld", self._previous)}
            | "ByKey" >> beam.CoGroupByKey()
            | "Choose" >> beam.ParDo(_Choose(self._retry)).with_outputs(_Choose.FETCH, main="carry")
        )
        return {"carry": chosen.carry, "fetch": chosen[_Choose.FETCH]}

"""The refresh's settings that can only be refused, not repaired: the numbers of the verdict rules,
and a night judged before its snapshot existed (docs/refresh.md, "Verdicts").

A data team deletes what the refresh calls dead, so a setting that cannot mean what it says is one
line and exit 2 before anything is fetched, never a quiet substitute:

- `check_rule_numbers(opts)`: --dead-after and --host-dead-after at least 1 (0 was run as 1 while
  summary.json recorded 0), --placeholder-min-urls 0 or at least 2 (1 made every URL redirected to
  another picture a placeholder, so `dead`), no negative count.
- `check_night_after_snapshots(night, snapshots)`: the night is not before the first row of a
  snapshot was fetched (the ingest fetch counts as the night before a key's first; judged earlier,
  a failed fetch made a URL dead on a night it was not yet known).
- `refuse_verdict_tables(root, facts)`: no snapshot file is a refresh's own table (`status/`, a
  history night): its `status` is a night's verdict, which the night would take for an ingest's.

`options_record(opts, params)` is what summary.json records of them ("options").
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from transforms.liveness.verdicts import utc_date

__all__ = [
    "RECORDED_OPTIONS",
    "check_night_after_snapshots",
    "check_rule_numbers",
    "first_fetch_date",
    "options_record",
    "refuse_verdict_tables",
]

# why: columns only a refresh's own tables (REFRESH_OUT/status/, a --history night) hold; an ingest
# or dedup table has none of them
_VERDICT_TABLE_COLUMNS = ("night", "checked_at", "ingest_status")

_AT_LEAST_ONE = ("dead_after", "host_dead_after")
# The options summary.json records under "options" (with the night and the --max-distance applied).
RECORDED_OPTIONS = (
    "snapshot",
    "history",
    "snapshot_replaced",
    "dead_after",
    "host_dead_after",
    "unreachable_dead_after",
    "placeholder",
    "placeholder_min_urls",
    "no_head",
    "timeout",
    "max_bytes",
    "retries",
    "concurrency",
    "per_host",
    "max_rate",
    "allow_network",
    "accept_dark_night",
)
_NOT_NEGATIVE = ("unreachable_dead_after", "placeholder_min_urls", "summary_hosts")


def check_rule_numbers(opts: Any) -> None:
    """Raises ValueError (the job's exit 2) for a verdict rule's number that cannot mean what it says.

    Args:
        opts: the refresh's parsed options.
    """
    for name in _AT_LEAST_ONE + _NOT_NEGATIVE:
        if getattr(opts, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative")
    for name in _AT_LEAST_ONE:
        if getattr(opts, name) == 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be at least 1 (the answers of that kind a URL needs before it"
                " is dead, tonight's one of them)"
            )
    if opts.placeholder_min_urls == 1:
        raise ValueError(
            "--placeholder-min-urls must be 0 (the rule off) or at least 2: one URL redirected to another"
            " picture is a moved or changed picture, not a placeholder (and a placeholder is dead)"
        )


def first_fetch_date(facts: Iterable[dict]) -> datetime.date | None:
    """The UTC date of the earliest `fetched_at` of a snapshot's files, from their footers' column
    statistics (table_record.footer_facts' "first_fetched_at": read once at start-up, with the
    table's other footer facts); None when no file has them.

    Args:
        facts: the footer facts of a snapshot's table files.
    Returns:
        The date, or None.
    """
    found = [fact["first_fetched_at"] for fact in facts if fact.get("first_fetched_at") is not None]
    if not found:
        return None
    return utc_date(min(found))


def check_night_after_snapshots(night: datetime.date, snapshots: Sequence[tuple[str, Iterable[dict]]]) -> None:
    """Raises ValueError (exit 2) when `night` is before the day a snapshot's first row was fetched.

    Args:
        night: the --night.
        snapshots: [(the --snapshot, the footer facts of its table files)].
    """
    for root, facts in snapshots:
        first = first_fetch_date(facts)
        if first is not None and night < first:
            raise ValueError(
                f"--night {night.isoformat()} is before --snapshot {root} was fetched (its first row on"
                f" {first.isoformat()}): a night is judged after its snapshot; give a later --night"
            )


def refuse_verdict_tables(root: str, facts: Mapping[str, dict]) -> None:
    """Raises ValueError (exit 2) when a file of a snapshot is a refresh's own table.

    Why: `--snapshot 'REFRESH_OUT/status/*.parquet'` holds the key, url and status columns a
    snapshot needs, so it was read as an ingest table: its verdicts (alive, dead, unreachable) taken
    for ingest statuses, every picture "none to compare with", the rows dead at ingest re-checked
    and recorded `unreachable` with `ingest_status` `dead`, exit 0.

    Args:
        root: the --snapshot as given.
        facts: {path: table_record.footer_facts' facts} of its files ("columns": their top-level columns).
    """
    for path, fact in facts.items():
        if all(name in fact.get("columns", ()) for name in _VERDICT_TABLE_COLUMNS):
            raise ValueError(
                f"--snapshot {root}: {path} is a refresh's table (its status is a night's verdict: alive,"
                " changed, unreachable, dead), not an ingest images/ table; give the output the refresh"
                " checked (--snapshot OUT, an ingest or dedup output)"
            )


def options_record(opts: Any, params: Any) -> dict:
    """The night's options as summary.json records them ("options").

    Args:
        opts: the refresh's parsed options.
        params: the night's verdicts.RefreshParams (the night, the --max-distance applied).
    Returns:
        {option: value} of RECORDED_OPTIONS, with "night" and "max_distance".
    """
    record = {name: getattr(opts, name, None) for name in RECORDED_OPTIONS}
    record.update(night=params.night.isoformat(), max_distance=params.max_distance)
    return record

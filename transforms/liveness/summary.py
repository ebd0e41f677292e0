"""summary.json of a refresh night: counts by dataset x verdict, the night's flags, success rates,
link rot, hosts, detected placeholders (docs/refresh.md, "summary.json").
"""

import collections
import datetime
import time

import apache_beam as beam

from transforms.errors import BooksUnbalanced
from transforms.io.sinks import file_name, join_path, write_json
from transforms.liveness.dark_night import DarkNightCounts, check_dark_night, dark_night_record
from transforms.liveness.verdicts import ALIVE, BASELINE_STATUSES, CHANGED, DEAD, VERDICTS, WALL_REASON

__all__ = [
    "DAYS_PER_MONTH",
    "months_between",
    "link_rot",
    "RefreshTotals",
    "url_stats",
    "build_refresh_summary",
    "refresh_books",
    "check_refresh_books",
    "SummarizeRefresh",
]


DAYS_PER_MONTH = 30.4375


def months_between(fetched_at, night):
    """Months from the ingest fetch to the end of `night` (UTC), never negative."""
    if fetched_at is None:
        return None
    if fetched_at.tzinfo is None:
        fetched_at = fetched_at.replace(tzinfo=datetime.timezone.utc)
    end = datetime.datetime.combine(night + datetime.timedelta(days=1), datetime.time(0), tzinfo=datetime.timezone.utc)
    return max((end - fetched_at).total_seconds(), 0.0) / 86400.0 / DAYS_PER_MONTH


def link_rot(alive_at_ingest, dead_now, months_sum):
    """Link rot per month: the fraction of keys alive at ingest (a picture in the snapshot) that are
    dead tonight, divided by the mean months since their ingest fetch. None under a day."""
    if not alive_at_ingest:
        return {"alive_at_ingest": 0, "dead_now": 0, "dead_fraction": None, "mean_months": None, "per_month": None}
    fraction = dead_now / alive_at_ingest
    months = months_sum / alive_at_ingest
    return {
        "alive_at_ingest": alive_at_ingest,
        "dead_now": dead_now,
        "dead_fraction": round(fraction, 6),
        "mean_months": round(months, 4),
        "per_month": round(fraction / months, 6) if months >= 1 / DAYS_PER_MONTH else None,
    }


class RefreshTotals(beam.CombineFn):
    """Status rows -> counts by dataset x verdict, the night's flags, and link-rot sums per dataset."""

    def create_accumulator(self):
        return {"counts": {}, "flags": collections.Counter(), "methods": collections.Counter(), "rot": {}}

    def add_input(self, acc, row):
        per = acc["counts"].setdefault(row["dataset"], {})
        per[row["status"]] = per.get(row["status"], 0) + 1
        flags = acc["flags"]
        flags["newly_dead"] += bool(row["newly_dead"])
        flags["revived"] += bool(row["revived"])
        flags["newly_changed"] += row["status"] == CHANGED and row.get("previous_status") != CHANGED
        flags["bytes_changed"] += row["status"] == ALIVE and bool(row["bytes_changed"])
        flags["placeholder"] += bool(row["placeholder"])
        flags["picture_unchecked"] += bool(row.get("picture_unchecked"))
        flags["wall"] += (row.get("reason") or "").startswith(WALL_REASON)
        acc["methods"][row["method"]] += 1
        if row.get("ingest_status") in BASELINE_STATUSES:
            rot = acc["rot"].setdefault(row["dataset"], [0, 0, 0.0])
            rot[0] += 1
            rot[1] += row["status"] == DEAD
            rot[2] += months_between(row.get("ingest_fetched_at"), row["night"]) or 0.0
        return acc

    def merge_accumulators(self, accumulators):
        out = self.create_accumulator()
        for acc in accumulators:
            for dataset, per in acc["counts"].items():
                mine = out["counts"].setdefault(dataset, {})
                for status, n in per.items():
                    mine[status] = mine.get(status, 0) + n
            out["flags"].update(acc["flags"])
            out["methods"].update(acc["methods"])
            for dataset, (n, dead, months) in acc["rot"].items():
                rot = out["rot"].setdefault(dataset, [0, 0, 0.0])
                rot[0] += n
                rot[1] += dead
                rot[2] += months
        return out

    def extract_output(self, acc):
        return {
            "counts": acc["counts"],
            "flags": dict(acc["flags"]),
            "methods": dict(acc["methods"]),
            "rot": acc["rot"],
        }


def url_stats(checked):
    check = checked["check"]
    requests = check.get("requests") or 0
    return {"urls": 1, "requests": requests, f"urls_{check['method']}": 1, "urls_one_request": int(requests == 1)}


def _add_counts(dicts):
    total = collections.Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def build_refresh_summary(
    totals, top_hosts, host_count, urls, placeholders, frequent, night, previous, started_at, finished_at, options=None
):
    """summary.json of a refresh night (docs/refresh.md, "summary.json")."""
    counts = totals["counts"]
    verdict_totals = {v: sum(per.get(v, 0) for per in counts.values()) for v in VERDICTS}
    rows = sum(verdict_totals.values())

    def rates(per):
        n = sum(per.values())
        return {
            "rows": n,
            "success_rate": round(per.get(ALIVE, 0) / n, 6) if n else None,
            "reachable_rate": round((per.get(ALIVE, 0) + per.get(CHANGED, 0)) / n, 6) if n else None,
        }

    rot = totals["rot"]
    all_rot = [sum(v[i] for v in rot.values()) for i in range(3)] if rot else [0, 0, 0.0]
    flags = totals["flags"]
    ranked = sorted(top_hosts, key=lambda h: (-h["rows"], h["host"]))
    elapsed = max(finished_at - started_at, 1e-9)
    return {
        "job": "refresh",
        "night": night.isoformat(),
        "previous_night": previous.isoformat() if previous else None,
        "rows": rows,
        "counts": counts,
        "verdict_totals": verdict_totals,
        "newly_dead": flags.get("newly_dead", 0),
        "revived": flags.get("revived", 0),
        "changed": verdict_totals[CHANGED],
        "newly_changed": flags.get("newly_changed", 0),
        "bytes_changed": flags.get("bytes_changed", 0),
        "placeholder_rows": flags.get("placeholder", 0),
        "picture_unchecked": flags.get("picture_unchecked", 0),
        "wall_rows": flags.get("wall", 0),
        "methods": dict(sorted(totals["methods"].items())),
        "urls": dict(sorted(urls.items())),
        "success_rate": dict(rates(verdict_totals), by_dataset={d: rates(per) for d, per in sorted(counts.items())}),
        "by_host": {"hosts": host_count, "top": ranked},
        "link_rot": dict(link_rot(*all_rot), by_dataset={d: link_rot(*v) for d, v in sorted(rot.items())}),
        "placeholders_detected": [
            {"sha256": sha, "replaced_pictures": n} for sha, n in sorted(placeholders, key=lambda p: (-p[1], p[0]))
        ],
        "frequent_replacements": [
            {"sha256": sha, "replaced_pictures": n} for sha, n in sorted(frequent, key=lambda p: (-p[1], p[0]))
        ],
        "timings": {
            "started_at": datetime.datetime.fromtimestamp(started_at, datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "wall_seconds": round(elapsed, 3),
            "rows_per_second": round(rows / elapsed, 2),
        },
        "options": options or {},
    }


def refresh_books(rows_in, merged, written, tables=None):
    """The refresh's books: snapshot rows read = status rows written + rows merged into another
    row of their key (a key in several snapshots, or twice in one); and each OUT's rows read = the
    rows of the table checked before the run (`tables`).

    Args:
        rows_in: [(snapshot, rows read)].
        merged: rows merged, counted while keys were merged.
        written: the status files; their rows are counted from the Parquet footers.
        tables: {snapshot: which table was read (table_record.checked_table)}, for OUTs.
    Returns:
        {"snapshots": [{"path", "rows", "table"?}], "rows_in", "merged", "rows_out", "balanced"}.
    """
    from transforms.io.table_record import footer_rows  # noqa: PLC0415 (pyarrow, only here)

    per_snapshot = collections.Counter()
    for label, n in rows_in:
        per_snapshot[label] += n
    total_in = sum(per_snapshot.values())
    rows_out = sum(footer_rows(sorted(written)).values())
    tables = tables or {}
    snapshots = [
        {"path": label, "rows": n, **({"table": tables[label]} if label in tables else {})}
        for label, n in sorted(per_snapshot.items())
    ]
    # why: a table read short (a part lost between the check and the read) balanced as fewer rows in
    whole = all(s["rows"] == s["table"]["rows"] for s in snapshots if "table" in s)
    return {
        "snapshots": snapshots,
        "rows_in": total_in,
        "merged": merged,
        "rows_out": rows_out,
        "balanced": total_in == rows_out + merged and whole,
    }


def check_refresh_books(books):
    """Raises BooksUnbalanced unless the books balance (refresh_books)."""
    if not books["balanced"]:
        raise BooksUnbalanced(
            f"the books do not balance: {books['rows_in']} snapshot rows read"
            f" ({', '.join(s['path'] for s in books['snapshots'])}), {books['rows_out']} status rows"
            f" written + {books['merged']} merged into another row of their key"
            + "".join(
                f"; {s['path']}: {s['rows']} rows read of its table's {s['table']['rows']}"
                for s in books["snapshots"]
                if "table" in s and s["rows"] != s["table"]["rows"]
            )
        )
    return books


class SummarizeRefresh(beam.PTransform):
    """Status rows (+ checked URLs, host records, detected placeholders) -> `out_dir`/summary.json
    (the run's folder aside: night_output.PublishOutput puts it into place), written once the status
    files are final. With "rows_in" and "merged" (ReadSnapshots' books) the books go in the summary
    and are checked once it is written (BooksUnbalanced, exit 1): its path comes out only if they balance."""

    def __init__(
        self, out_dir, night, previous, started_at, top_hosts=100, options=None, accept_dark_night=False, tables=None
    ):
        super().__init__()
        self._tables = dict(tables or {})  # {snapshot: the table checked before the run}
        self._out_dir, self._night, self._previous = out_dir, night, previous
        self._started_at, self._top_hosts, self._options = started_at, top_hosts, options
        self._accept_dark_night = accept_dark_night

    def expand(self, inputs):
        rows, checked, hosts = inputs["rows"], inputs["checked"], inputs["hosts"]
        placeholders, frequent, written = inputs["placeholders"], inputs["frequent"], inputs["written"]
        totals = rows | "Totals" >> beam.CombineGlobally(RefreshTotals())
        urls = checked | "UrlStats" >> beam.Map(url_stats) | "SumUrlStats" >> beam.CombineGlobally(_add_counts)
        # Only the top hosts reach the single summary writer: there can be hundreds of thousands.
        top = hosts | "TopHosts" >> beam.combiners.Top.Of(self._top_hosts, key=lambda h: (h["rows"], h["host"]))
        host_count = hosts | "CountHosts" >> beam.combiners.Count.Globally()
        # why here: the night is refused where its books are, before anything is published
        dark = hosts | "DarkNight" >> beam.CombineGlobally(DarkNightCounts())
        accept_dark_night = self._accept_dark_night
        path = join_path(self._out_dir, "summary.json")
        night, previous, started_at, options = self._night, self._previous, self._started_at, self._options
        tables = self._tables

        books = {}
        if "rows_in" in inputs:
            books = {
                "rows_in": beam.pvalue.AsList(inputs["rows_in"]),
                "merged": beam.pvalue.AsSingleton(inputs["merged"]),
            }
        if "outages" in inputs:  # host_outages.FindHostOutages: ((host, shape), (URLs, URLs checked, sha256))
            books["outages"] = beam.pvalue.AsList(inputs["outages"])
        if "walls" in inputs:  # walls.FindWalls: (page name, (hosts, URLs, sha256))
            books["walls"] = beam.pvalue.AsList(inputs["walls"])

        def write(_, totals, top, host_count, urls, placeholders, frequent, written, dark, **counts):
            summary = build_refresh_summary(
                totals, top, host_count, urls, placeholders, frequent, night, previous, started_at, time.time(), options
            )
            summary["dark_night"] = dark_night_record(dark, accept_dark_night)
            summary["written"] = sorted(file_name(f) for f in written)
            outages = counts.pop("outages", None)
            if outages is not None:
                summary["host_outages"] = [
                    {"host": host, "page_sha256": sha256, "urls": n, "urls_checked": checked}
                    for (host, _), (n, checked, sha256) in sorted(outages)
                ]
            walls = counts.pop("walls", None)
            if walls is not None:
                summary["walls"] = [
                    {"page_sha256": sha256, "hosts": hosts, "urls": urls}
                    for _, (hosts, urls, sha256) in sorted(walls, key=lambda page: (-page[1][0], page[0]))
                ]
            if counts:
                summary["books"] = refresh_books(counts["rows_in"], counts["merged"], written, tables)
            write_json(path, summary)
            if counts:
                check_refresh_books(summary["books"])
            check_dark_night(summary["dark_night"])
            return path

        return (
            rows.pipeline
            | "Once" >> beam.Create([None])
            | "Write"
            >> beam.Map(
                write,
                totals=beam.pvalue.AsSingleton(totals),
                top=beam.pvalue.AsSingleton(top),
                host_count=beam.pvalue.AsSingleton(host_count),
                urls=beam.pvalue.AsSingleton(urls),
                placeholders=beam.pvalue.AsList(placeholders),
                frequent=beam.pvalue.AsSingleton(frequent),
                written=beam.pvalue.AsList(written),
                dark=beam.pvalue.AsSingleton(dark),
                **books,
            )
        )

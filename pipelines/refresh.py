"""Refresh: re-check every URL of an ingest snapshot; one verdict per key for the night.

    python -m pipelines.refresh --snapshot OUT --output REFRESH_OUT [--history HISTORY] [--night YYYY-MM-DD]

Writes REFRESH_OUT/status/*.parquet (one row per snapshot key), REFRESH_OUT/hosts/*.parquet (one
row per host), REFRESH_OUT/summary.json and, with --history, HISTORY/<night>/. Never writes under a
snapshot. docs/refresh.md has the verdict rules and every option.
"""

import os
import re
import sys
import time
import uuid

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import job_runner, output_checks, preflight
from pipelines.report import run_resources
from transforms.fetch.client import FetchConfig
from transforms.io.file_matches import path_identity
from transforms.io.sinks import join_path, read_json
from transforms.io.table import RemoveDirectory
from transforms.io.table_record import checked_table, footer_facts
from transforms.liveness import checks, history, host_outages, night_output, refresh_settings, summary, verdicts, walls
from transforms.liveness.history_identity import check_history_snapshots, snapshot_identities

# The refresh's own thresholds: not the dedup job's (DEDUP_MAX_DISTANCE 8, DEDUP_PLACEHOLDER_MIN_URLS
# 50 in transforms/clustering/dedup_settings.py), which group different pictures, where these
# recognise one picture served again.
__all__ = ["JOB", "RefreshOptions", "build_pipeline", "main", "resolve", "run"]

REFRESH_SAME_PICTURE_MAX_DISTANCE = verdicts.DEFAULT_MAX_DISTANCE
REFRESH_PLACEHOLDER_MIN_URLS = verdicts.DEFAULT_PLACEHOLDER_MIN_URLS


class RefreshOptions(PipelineOptions):
    """The refresh job's own options, in groups (docs/refresh.md)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        inputs = parser.add_argument_group("inputs")
        inputs.add_argument(
            "--snapshot",
            action="append",
            default=[],
            metavar="OUT",
            help="an ingest output to re-check (repeatable): its images/*.parquet are read;"
            " a path ending in .parquet or holding a glob is read as given",
        )
        output = parser.add_argument_group("output")
        job_runner.add_argument_once(
            output, "--output", metavar="REFRESH_OUT", help="refresh output directory, local or gs://"
        )
        output.add_argument(
            "--history",
            metavar="PATH",
            help="history directory (local or gs://): one sub-directory per night, read for"
            " the failure streaks and revivals, tonight's added",
        )
        output.add_argument(
            "--night",
            metavar="YYYY-MM-DD",
            help="the night the verdicts are for (default: today, UTC; at most tomorrow);"
            " re-running a night replaces that night's history entry",
        )
        output.add_argument(
            "--snapshot-replaced",
            action="store_true",
            help="the --snapshot differs from the one --history's last night checked on purpose (moved, a slice"
            " added); by default refused (exit 2)",
        )
        rules = parser.add_argument_group("verdicts", "when a URL is dead, changed or a placeholder")
        rules.add_argument(
            "--dead-after",
            type=int,
            default=verdicts.DEFAULT_DEAD_AFTER,
            metavar="N",
            help="'gone' answers (404, 410, 451, placeholder, soft 404) within a URL's failure"
            " streak, tonight's one of them, before it is dead; unreachable until then"
            f" (default {verdicts.DEFAULT_DEAD_AFTER}; the ingest fetch counts as the night"
            " before the first)",
        )
        rules.add_argument(
            "--host-dead-after",
            type=int,
            default=verdicts.DEFAULT_HOST_DEAD_AFTER,
            metavar="N",
            help="the same for 'no such host name' and 'connection refused' answers ('gone' ones count too)"
            f" (default {verdicts.DEFAULT_HOST_DEAD_AFTER})",
        )
        rules.add_argument(
            "--unreachable-dead-after",
            type=int,
            default=verdicts.DEFAULT_UNREACHABLE_DEAD_AFTER,
            metavar="N",
            help="nights in a row of any failure (timeouts, 5xx) after which a URL is"
            " dead anyway; 0: never"
            f" (default {verdicts.DEFAULT_UNREACHABLE_DEAD_AFTER})",
        )
        job_runner.add_argument_once(
            rules,
            "--max-distance",
            type=int,
            default=None,
            help="pHash Hamming distance at or under which tonight's picture is the same"
            f" picture (default {REFRESH_SAME_PICTURE_MAX_DISTANCE} in the refresh;"
            " the dedup job's default differs)",
        )
        rules.add_argument(
            "--placeholder",
            action="append",
            default=[],
            metavar="HASH",
            help="sha256 (64 hex) or pHash (16 hex) of a placeholder picture served in place of"
            " removed photos (repeatable); added to the built-in list",
        )
        job_runner.add_argument_once(
            rules,
            "--placeholder-min-urls",
            type=int,
            default=REFRESH_PLACEHOLDER_MIN_URLS,
            metavar="K",
            help="a picture that replaced the different pictures of at least K"
            f" URLs tonight is a placeholder; 0: off (default"
            f" {REFRESH_PLACEHOLDER_MIN_URLS} in the refresh)",
        )
        rules.add_argument(
            "--accept-dark-night",
            action="store_true",
            help="record a night on which most hosts that served pictures serve none (default: exit 1)",
        )
        rules.add_argument(
            "--no-head",
            action="store_true",
            help="GET at once where the snapshot recorded no ETag/Last-Modified, instead of HEAD first",
        )
        output.add_argument(
            "--summary-hosts",
            type=int,
            default=100,
            metavar="N",
            help="hosts listed in summary.json (most rows first); hosts/ has them all (default 100)",
        )
        job_runner.add_argument_once(
            output,
            "--force-unlock",
            action="store_true",
            help="take REFRESH_OUT's lease even though another run seems to hold it (only"
            " when that run is known to be dead)",
        )
        FetchConfig.add_arguments(parser)


JOB = job_runner.Job(
    usage="python -m pipelines.refresh --snapshot OUT --output REFRESH_OUT [options]",
    name="refresh",
    options=RefreshOptions,
    description="Re-check every URL of an ingest snapshot: one verdict per key for the night "
    "(REFRESH_OUT/status/, hosts/, summary.json; HISTORY/<night>/ with --history).",
    interrupted="REFRESH_OUT keeps its previous night; rerun the same command",
)


def snapshot_pattern(value):
    """--snapshot value -> (root directory, Parquet file pattern)."""
    value = value.strip()
    if value.endswith(".parquet") or any(c in value for c in "*?["):
        prefix = re.split(r"[*?[]", value, maxsplit=1)[0]  # what comes before the first glob character
        return prefix.rsplit("/", 1)[0] or prefix, value
    return value.rstrip("/"), join_path(value, "images", "*.parquet")


def resolve(opts):
    """Checked settings from the options: (snapshots [(root, pattern, columns)], RefreshParams)."""
    if not opts.output:
        raise ValueError("--output is required")
    # "{night}" in --output names each night's folder, so one fixed schedule (Cloud Scheduler posts
    # the same body every night) still gives every night its own output.
    # why once: read twice, the clock could pass UTC midnight between the folder and the verdicts
    # (night D+1 written into the folder of D, which the next night's run then replaced)
    night = verdicts.parse_night(opts.night)
    opts.output = opts.output.replace("{night}", night.isoformat())
    if not opts.snapshot:
        raise ValueError("give at least one --snapshot OUT (an ingest output)")
    snapshots = []
    for root, pattern in (snapshot_pattern(v) for v in opts.snapshot):
        for name, path in (("--output", opts.output), ("--history", opts.history)):
            if path and (preflight.is_inside(path, root) or preflight.is_inside(root, path)):
                raise ValueError(f"{name} {path} overlaps the snapshot {root}: a refresh never writes there")
        # why: a bucket that does not exist is the user's mistake (exit 2), not BeamIOError's exit 1
        preflight.list_matches(pattern, named=f"--snapshot {root}")
        try:
            columns = checks.snapshot_columns(pattern)
        except ValueError as exc:
            raise ValueError(f"--snapshot {root}: {exc}") from None
        snapshots.append((root, pattern, columns))
    if opts.history and path_identity(opts.history) == path_identity(opts.output):
        raise ValueError("--history and --output must be different directories")
    if opts.history and "://" not in opts.history and os.path.isfile(opts.history):
        raise ValueError(f"--history {opts.history} is an existing file, not a directory")
    if opts.max_distance is not None and not 0 <= opts.max_distance <= verdicts.MAX_SAME_PICTURE_DISTANCE:
        raise ValueError(verdicts.too_wide(opts.max_distance))
    if opts.history and preflight.is_inside(opts.output, opts.history):
        # why: HISTORY holds one folder per night (--output H/{night} is that night's own folder,
        # whose publish then removed this run's files: "vanished", exit 1, every night)
        raise ValueError(
            f"--output {opts.output} is inside --history {opts.history}: give each its own folder"
            " (e.g. --output R/{night} --history R/history)"
        )
    refresh_settings.check_rule_numbers(opts)
    extra = [verdicts.parse_placeholder(v) for v in opts.placeholder]
    params = verdicts.RefreshParams(
        night=night,
        max_distance=REFRESH_SAME_PICTURE_MAX_DISTANCE if opts.max_distance is None else opts.max_distance,
        dead_after=opts.dead_after,
        host_dead_after=opts.host_dead_after,
        unreachable_dead_after=opts.unreachable_dead_after,
        placeholder_min_urls=opts.placeholder_min_urls,
        placeholder_sha256=frozenset(h for kind, h in extra if kind == "sha256"),
        placeholder_phash=verdicts.RefreshParams.placeholder_phash | {h for kind, h in extra if kind == "phash"},
        head_first=not opts.no_head,
        max_pixels=opts.max_pixels,
    )
    return snapshots, params


def build_pipeline(
    pipeline, opts, snapshots, params, started_at, read_history=None, run_id=None, guard=None, tables=None
):
    """Adds the refresh graph to `pipeline`; returns the status rows PCollection. `read_history`: a
    history.ReadHistory built (and so checked) before the run started. `run_id` names the run's
    folder aside (REFRESH_OUT/_tmp-<run>) and its files (default: a new one). `guard`: the lease's
    LeaseGuard, confirmed before each publish step. `tables`: {OUT: the table read, checked_table}."""
    target = night_output.RefreshOutput(opts.output, run_id or uuid.uuid4().hex[:12], guard)
    read = pipeline | "ReadSnapshots" >> checks.ReadSnapshots(snapshots)
    entries = read["entries"]
    checked = entries | "CheckUrls" >> checks.CheckUrls(FetchConfig.from_options(opts), params)
    found = checked | "FindPlaceholders" >> checks.FindPlaceholders(params)
    placeholders = found["placeholders"]
    read_history = read_history or history.ReadHistory(opts.history, params.night)
    previous = pipeline | "ReadHistory" >> read_history
    outages = checked | "FindHostOutages" >> host_outages.FindHostOutages()
    shared_pages = checked | "FindWalls" >> walls.FindWalls()
    judged = dict(checked=checked, previous=previous, placeholders=placeholders, outages=outages, walls=shared_pages)
    rows = judged | "Judge" >> checks.Judge(params)
    # why aside: the previous night's verdicts stay in REFRESH_OUT until this night's books balance
    written = rows | "WriteStatus" >> checks.WriteStatusTable(target.aside("status"), target.prefix)
    hosts = rows | "Hosts" >> checks.HostTable()
    host_files = hosts | "WriteHosts" >> checks.WriteHostTable(target.aside("hosts"), target.prefix)
    books = {
        "rows": rows,
        "checked": checked,
        "hosts": hosts,
        "placeholders": placeholders,
        "frequent": found["frequent"],
        "outages": outages,
        "walls": shared_pages,
        "written": written,
        # the books: snapshot rows read = status rows written + rows merged by key (checked there)
        "rows_in": read["rows_in"],
        "merged": read["merged"],
    } | "WriteSummary" >> summary.SummarizeRefresh(
        target.aside(),
        params.night,
        read_history.previous,
        started_at,
        opts.summary_hosts,
        refresh_settings.options_record(opts, params),
        opts.accept_dark_night,
        tables,
    )
    night = {}
    if opts.history:
        # why first: REFRESH_OUT, what the data team acts on, never gets ahead of the history
        night["night"] = rows | "WriteHistory" >> history.WriteHistory(
            opts.history, params.night, target.run_id, books, snapshot_identities(root for root, _, _ in snapshots)
        )
    parts = {"status": written, "hosts": host_files, "summary": books, **night}
    published = parts | "Publish" >> night_output.PublishOutput(target)
    _ = published | "DropTemporary" >> RemoveDirectory(target.aside())
    return rows


def run(argv=None):
    """The refresh job: parses argv, checks the snapshots, runs and waits; returns the PipelineResult."""
    options, opts = JOB.parse(argv)
    # Before anything is read: a remote runner's workers cannot open this machine's files.
    job_runner.require_shared_paths(
        options,
        {
            "--snapshot": [snapshot_pattern(v)[0] for v in opts.snapshot or []],
            "--output": opts.output,
            "--history": opts.history,
        },
    )
    snapshots, params = resolve(opts)
    tables, read = {}, []
    for order, (root, pattern, columns) in enumerate(snapshots):  # every footer, not only the first file's
        files = preflight.check_table("--snapshot", root, checks.REQUIRED_SNAPSHOT_COLUMNS, pattern)
        # why once: the table check, the rows and the night check all read footers, each a request on gs://
        facts = footer_facts(files)
        refresh_settings.refuse_verdict_tables(root, facts)
        if pattern == snapshot_pattern(root)[1]:  # an OUT, not files named by the user: its whole table
            files, tables[root] = checked_table("--snapshot", root, files, facts=facts)
            # why the files, not the glob: an ingest rerun publishing meanwhile made it read two tables, exit 0
            snapshots[order] = (root, files, columns)
            if any(facts[path]["rows"] for path in files):  # URLs to check need the ingest's networks
                preflight.check_ingest_networks("--snapshot", root, opts.allow_network)
        read.append((root, [facts[path] for path in files]))
    refresh_settings.check_night_after_snapshots(params.night, read)
    FetchConfig.from_options(opts)
    output_checks.check_output_dir(opts.output)
    holds_rows = any(fact["rows"] for _root, facts in read for fact in facts)
    if not job_runner.builds_template_only(options) and not holds_rows:
        print(f"refresh: nothing to check: {', '.join(root for root, _, _ in snapshots)} holds no rows")
        return None
    started_at = time.time()
    # The history is listed and checked before anything is written: a storage error stops here.
    read_history = history.ReadHistory(opts.history, params.night)
    identities = snapshot_identities(root for root, _, _ in snapshots)
    check_history_snapshots(opts.history, read_history.previous, identities, opts.snapshot_replaced)
    run_id = uuid.uuid4().hex[:12]
    # Why: one writer per REFRESH_OUT (docs/integrity.md), held until the summary is written.
    with job_runner.leased_output(
        options,
        opts.output,
        "refresh",
        opts.force_unlock,
        clear=lambda out: night_output.sweep_leftovers(out, opts.history, params.night),
    ) as guard:
        try:
            return JOB.execute(
                options,
                lambda p: build_pipeline(p, opts, snapshots, params, started_at, read_history, run_id, guard, tables),
                opts.output,
                summary=report,
            )
        except Exception:
            # Why: REFRESH_OUT and the history night are as the previous run left them; only this
            # run's files aside remain (Ctrl-C and kill -9 leave them to the next run's sweep).
            night_output.remove_run_temporaries(opts.output, opts.history, params.night, run_id)
            raise


def report(out):
    summary = read_json(join_path(out, "summary.json"))
    rot = summary["link_rot"]
    print(
        f"\nrefresh: night {summary['night']}, {summary['rows']} rows, {summary['urls'].get('urls', 0)} URLs,"
        f" {summary['urls'].get('requests', 0)} requests in {summary['timings']['wall_seconds']:.1f}s -> {out}"
    )
    print(f"  previous night: {summary['previous_night'] or 'none'}")
    print(
        f"  newly dead {summary['newly_dead']}, revived {summary['revived']}, changed {summary['changed']}"
        f" ({summary['newly_changed']} new), alive with other bytes {summary['bytes_changed']}"
    )
    rate = summary["success_rate"]["success_rate"]
    per_month = rot["per_month"]
    print(
        f"  success rate {'-' if rate is None else f'{rate:.1%}'}, link rot per month"
        f" {'- (under a day since ingest)' if per_month is None else f'{per_month:.2%}'}"
    )
    print(f"  status:  {join_path(out, 'status')}/*.parquet\n  summary: {join_path(out, 'summary.json')}")
    cost = run_resources.cost_line(summary)
    if cost:
        print(f"  cost:    {cost}")
    print()
    print(job_runner.format_status_table(summary["counts"], verdicts.VERDICTS))


def main(argv=None) -> int:
    """`python -m pipelines.refresh`: the exit status (0 done, 2 bad input, 1 environment or books, 130 Ctrl-C)."""
    return JOB.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Refresh: re-check every URL of an ingest snapshot; one verdict per key for the night.

    python -m pipelines.refresh --snapshot OUT --output REFRESH_OUT [--history HISTORY] [--night YYYY-MM-DD]

Writes REFRESH_OUT/status/*.parquet (one row per snapshot key), REFRESH_OUT/hosts/*.parquet (one
row per host), REFRESH_OUT/summary.json and, with --history, HISTORY/<night>/. Never writes under a
snapshot. README.md, "Nightly refresh" has the verdict rules and every option.
"""
import argparse
import os
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import job_runner
from transforms.liveness import verdicts
from transforms.io.sinks import join_path, read_json


class RefreshOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--snapshot", action="append", default=[], metavar="OUT",
                            help="an ingest output to re-check (repeatable): its images/*.parquet are read;"
                                 " a path ending in .parquet or holding a glob is read as given")
        job_runner.add_argument_once(parser, "--output", help="refresh output directory, local or gs://")
        parser.add_argument("--history", metavar="PATH",
                            help="history directory (local or gs://): one sub-directory per night, read for"
                                 " the failure streaks and revivals, tonight's added")
        parser.add_argument("--night", metavar="YYYY-MM-DD",
                            help="the night the verdicts are for (default: today, UTC); re-running a night"
                                 " replaces that night's history entry")
        parser.add_argument("--dead-after", type=int, default=verdicts.DEFAULT_DEAD_AFTER, metavar="N",
                            help="nights in a row a URL must fail, the last one with a 'gone' answer (404, 410,"
                                 " 451, DNS name gone, placeholder, soft 404), before it is dead; unreachable"
                                 " until then")
        parser.add_argument("--unreachable-dead-after", type=int, default=verdicts.DEFAULT_UNREACHABLE_DEAD_AFTER,
                            metavar="N", help="nights in a row of any failure (timeouts, 5xx) after which a URL is"
                                              " dead anyway; 0: never")
        job_runner.add_argument_once(parser, "--max-distance", type=int, default=None,
                                 help="pHash Hamming distance at or under which tonight's picture is the same"
                                      f" picture (default {verdicts.DEFAULT_MAX_DISTANCE})")
        parser.add_argument("--placeholder", action="append", default=[], metavar="HASH",
                            help="sha256 (64 hex) or pHash (16 hex) of a placeholder picture served in place of"
                                 " removed photos (repeatable); added to the built-in list")
        job_runner.add_argument_once(parser, "--placeholder-min-urls", type=int, default=verdicts.DEFAULT_PLACEHOLDER_MIN_URLS,
                            metavar="K", help="a picture that replaced the different pictures of at least K URLs"
                                              " tonight is a placeholder; 0: off")
        parser.add_argument("--no-head", action="store_true",
                            help="GET at once where the snapshot recorded no ETag/Last-Modified, instead of"
                                 " HEAD first")
        parser.add_argument("--summary-hosts", type=int, default=100, metavar="N",
                            help="hosts listed in summary.json (most rows first); hosts/ has them all")
        job_runner.add_network_arguments(parser)


def snapshot_pattern(value):
    """--snapshot value -> (root directory, Parquet file pattern)."""
    value = value.strip()
    if value.endswith(".parquet") or any(c in value for c in "*?["):
        prefix = value
        for i, char in enumerate(value):
            if char in "*?[":
                prefix = value[:i]
                break
        return prefix.rsplit("/", 1)[0] or prefix, value
    return value.rstrip("/"), join_path(value, "images", "*.parquet")


def _norm(path):
    if "://" in path:
        return path.rstrip("/")
    return os.path.abspath(path)


def _inside(path, root):
    path, root = _norm(path), _norm(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve(opts):
    """Checked settings from the options: (snapshots [(root, pattern, columns)], RefreshParams)."""
    if not opts.output:
        raise ValueError("--output is required")
    # "{night}" in --output names each night's folder, so one fixed schedule (Cloud Scheduler posts
    # the same body every night) still gives every night its own output.
    opts.output = opts.output.replace("{night}", verdicts.parse_night(opts.night).isoformat())
    if not opts.snapshot:
        raise ValueError("give at least one --snapshot OUT (an ingest output)")
    snapshots = []
    for root, pattern in (snapshot_pattern(v) for v in opts.snapshot):
        for name, path in (("--output", opts.output), ("--history", opts.history)):
            if path and (_inside(path, root) or _inside(root, path)):
                raise ValueError(f"{name} {path} overlaps the snapshot {root}: a refresh never writes there")
        try:
            columns = verdicts.snapshot_columns(pattern)
        except ValueError as exc:
            raise ValueError(f"--snapshot {root}: {exc}") from None
        snapshots.append((root, pattern, columns))
    if opts.history and _norm(opts.history) == _norm(opts.output):
        raise ValueError("--history and --output must be different directories")
    for name in ("dead_after", "unreachable_dead_after", "placeholder_min_urls", "summary_hosts"):
        if getattr(opts, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must not be negative")
    extra = [verdicts.parse_placeholder(v) for v in opts.placeholder]
    params = verdicts.RefreshParams(
        night=verdicts.parse_night(opts.night),
        max_distance=verdicts.DEFAULT_MAX_DISTANCE if opts.max_distance is None else opts.max_distance,
        dead_after=max(opts.dead_after, 1),
        unreachable_dead_after=opts.unreachable_dead_after,
        placeholder_min_urls=opts.placeholder_min_urls,
        placeholder_sha256=frozenset(h for kind, h in extra if kind == "sha256"),
        placeholder_phash=verdicts.RefreshParams.placeholder_phash | {h for kind, h in extra if kind == "phash"},
        head_first=not opts.no_head,
        max_pixels=opts.max_pixels,
    )
    return snapshots, params


def prepare_outputs(out, history, night):
    """Re-running a night replaces its files rather than adding shards next to the old ones."""
    for part in ("status", "hosts"):
        verdicts.delete_matching(join_path(out, part, "*"))
    verdicts.delete_matching(join_path(out, "summary.json"))
    if history:
        verdicts.clear_night(history, night)


def build_pipeline(pipeline, opts, snapshots, params, started_at):
    """Adds the refresh graph to `pipeline`; returns the status rows PCollection."""
    out = opts.output
    entries = pipeline | "ReadSnapshots" >> verdicts.ReadSnapshots(snapshots)
    checked = entries | "CheckUrls" >> verdicts.CheckUrls(job_runner.fetch_config(opts), params)
    found = checked | "FindPlaceholders" >> verdicts.FindPlaceholders(params)
    placeholders = found["placeholders"]
    history = verdicts.ReadHistory(opts.history, params.night)
    previous = pipeline | "ReadHistory" >> history
    rows = {"checked": checked, "previous": previous, "placeholders": placeholders} | "Judge" >> verdicts.Judge(params)
    written = rows | "WriteStatus" >> verdicts.WriteStatusTable(join_path(out, "status"))
    hosts = rows | "Hosts" >> verdicts.HostTable()
    _ = hosts | "WriteHosts" >> verdicts.WriteHostTable(join_path(out, "hosts"))
    if opts.history:
        _ = rows | "WriteHistory" >> verdicts.WriteHistory(opts.history, params.night)
    _ = {"rows": rows, "checked": checked, "hosts": hosts, "placeholders": placeholders,
         "frequent": found["frequent"], "written": written} | \
        "WriteSummary" >> verdicts.SummarizeRefresh(out, params.night, history.previous, started_at,
                                                   opts.summary_hosts, _options_snapshot(opts, params))
    return rows


def _options_snapshot(opts, params):
    keep = ("snapshot", "history", "dead_after", "unreachable_dead_after", "placeholder", "placeholder_min_urls",
            "no_head", "timeout", "max_bytes", "retries", "concurrency", "per_host", "max_rate", "allow_network")
    snapshot = {name: getattr(opts, name, None) for name in keep}
    snapshot.update(night=params.night.isoformat(), max_distance=params.max_distance)
    return snapshot


def run(argv=None):
    options = PipelineOptions(argv)
    opts = options.view_as(RefreshOptions)
    job_runner.apply_local_defaults(options, argv)
    # Before anything is read: a remote runner's workers cannot open this machine's files.
    job_runner.require_shared_paths(options, {"--snapshot": [root for root, _ in map(snapshot_pattern, opts.snapshot)],
                                              "--output": opts.output, "--history": opts.history})
    snapshots, params = resolve(opts)
    started_at = time.time()
    prepare_outputs(opts.output, opts.history, params.night)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, opts, snapshots, params, started_at)
    # A Flex Template launcher passes --no_wait_until_finish and must return once submitted.
    result = job_runner.wait_for(pipeline.run(), options)
    if job_runner.is_local(options):
        report(opts.output)
    return result


def report(out):
    summary = read_json(join_path(out, "summary.json"))
    rot = summary["link_rot"]
    print(f"\nrefresh: night {summary['night']}, {summary['rows']} rows, {summary['urls'].get('urls', 0)} URLs,"
          f" {summary['urls'].get('requests', 0)} requests in {summary['timings']['wall_seconds']:.1f}s -> {out}")
    print(f"  previous night: {summary['previous_night'] or 'none'}")
    print(f"  newly dead {summary['newly_dead']}, revived {summary['revived']}, changed {summary['changed']}"
          f" ({summary['newly_changed']} new), alive with other bytes {summary['bytes_changed']}")
    rate = summary["success_rate"]["success_rate"]
    per_month = rot["per_month"]
    print(f"  success rate {'-' if rate is None else f'{rate:.1%}'}, link rot per month"
          f" {'- (under a day since ingest)' if per_month is None else f'{per_month:.2%}'}")
    print(f"  status:  {join_path(out, 'status')}/*.parquet\n  summary: {join_path(out, 'summary.json')}\n")
    print(job_runner.format_status_table(summary["counts"], verdicts.VERDICTS))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:  # Beam's own parser would print an empty help
        parser = argparse.ArgumentParser(prog="python -m pipelines.refresh",
                                         description=__doc__.split("\n\n")[0])
        RefreshOptions._add_argparse_args(parser)  # pylint: disable=protected-access
        parser.print_help()
        return 0
    job_runner.quiet_local_logs()
    try:
        run(argv)
    except ValueError as exc:  # bad options, missing snapshot: a message, not a traceback
        print(f"refresh: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every job shares: the local runner default, the network options, log noise, and the closing
status table."""
import argparse
import logging
import os
import sys

from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from transforms.clustering.clusters import (DEFAULT_DATASET_PRIORITY, DEFAULT_DHASH_MAX_DISTANCE, DEFAULT_MAX_DISTANCE,
                              DEFAULT_MATCH_VIEWS, DEFAULT_PLACEHOLDER_MIN_URLS, VIEW_NAMES, Dedup, DedupShards)
from transforms.clustering.near_search import DEFAULT_VIEW_MAX_DISTANCE
from transforms.errors import BadInput
from transforms.fetch.client import DEFAULT_USER_AGENT, FetchConfig, user_agent
from transforms.hashing import DEFAULT_MAX_PIXELS
from transforms.clustering.placeholders import known_placeholder_hashes


def add_argument_once(parser, *flags, **kwargs):
    """parser.add_argument, unless one of `flags` is already there.

    Jobs share flags (--output, the network options). Beam parses the options of every
    PipelineOptions subclass imported in the process into one parser (get_all_options, called by
    pipeline.run), and argparse refuses a flag defined twice; so a flag several jobs define must be
    added through here, with the same type in every job. Each job's own view still parses its own
    definition (PipelineOptions builds a view's parser from that class alone).
    """
    try:
        return parser.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        return None


def add_dedup_arguments(parser):
    """Dedup options of ingest and dedup, defined once (see add_argument_once)."""
    add = lambda *flags, **kwargs: add_argument_once(parser, *flags, **kwargs)  # noqa: E731
    add("--max-distance", type=int, default=None,
        help=f"pHash Hamming distance at or under which two images are near-duplicates"
             f" (default {DEFAULT_MAX_DISTANCE})")
    add("--dhash-max-distance", type=int, default=DEFAULT_DHASH_MAX_DISTANCE,
        help="dHash distance confirming a near match; -1 turns the confirmation off")
    add("--dataset-priority", default=",".join(DEFAULT_DATASET_PRIORITY),
        help="comma-separated tie-break of the canonical row after resolution")
    add("--placeholder-min-urls", type=int, default=DEFAULT_PLACEHOLDER_MIN_URLS,
        help="one picture at this many distinct URLs is a placeholder, not a duplicate")
    add("--placeholder-hash", dest="placeholder_hashes", action="append", default=[],
        help="sha256 or pHash of a placeholder picture, added to the built-in list "
             "(transforms/clustering/placeholders.py); repeatable")
    add("--views", default=",".join(DEFAULT_MATCH_VIEWS),
        help=f"picture views computed at hash time and matched through, comma-separated from "
             f"{','.join(VIEW_NAMES)}, or 'none' (docs/duplicates.md)")
    add("--view-max-distance", type=int, default=DEFAULT_VIEW_MAX_DISTANCE,
        help="pHash distance at or under which two view keys meet (their dHashes confirm)")
    add("--cc-rounds", type=int, default=6, help="large/small-star rounds before the exact union-find finish")
    add("--shard-bits", type=int, default=None,
        help="near search: 2^s shards per band (default 3; 0 in a one-process local run, where shards "
             "add no parallelism and each costs another in-memory copy of the query hashes)")


def parse_views(text):
    """--views: comma-separated view names or 'none' -> tuple of names.

    Args:
        text: the option's value (None: the default views).

    Returns:
        The view names in VIEW_NAMES order.

    Raises:
        BadInput: an unknown view name.
    """
    if text is None:
        return DEFAULT_MATCH_VIEWS
    names = {v.strip().lower() for v in text.split(",") if v.strip()}
    if names in ({"none"}, set()):
        return ()
    unknown = names - set(VIEW_NAMES)
    if unknown:
        raise BadInput(f"--views: unknown view {', '.join(sorted(unknown))}; "
                       f"known: {', '.join(VIEW_NAMES)} or none")
    return tuple(v for v in VIEW_NAMES if v in names)


def dedup_transform(opts, from_shards=False, one_process=False, spill_dir=None):
    """The Dedup transform the dedup options describe (DedupShards for rows kept in table shards).

    one_process: the job runs locally in one process (one_local_process), where the near search
    is not sharded unless --shard-bits says so.
    spill_dir: local directory for dedup's on-disk shuffle (transforms.clustering.spill); local runs only.
    """
    shard_bits = opts.shard_bits if opts.shard_bits is not None else (0 if one_process else 3)
    dhash_max = opts.dhash_max_distance if opts.dhash_max_distance is None or opts.dhash_max_distance >= 0 \
        else None
    return (DedupShards if from_shards else Dedup)(
        max_distance=DEFAULT_MAX_DISTANCE if opts.max_distance is None else opts.max_distance,
        dataset_priority=tuple(d.strip() for d in opts.dataset_priority.split(",") if d.strip()),
        dhash_max_distance=dhash_max, placeholder_min_urls=opts.placeholder_min_urls,
        placeholder_hashes=known_placeholder_hashes() + tuple(opts.placeholder_hashes or ()),
        cc_rounds=opts.cc_rounds,
        shard_bits=shard_bits, spill_dir=spill_dir,
        views=parse_views(getattr(opts, "views", None)),
        view_max_distance=DEFAULT_VIEW_MAX_DISTANCE if getattr(opts, "view_max_distance", None) is None
        else opts.view_max_distance)


def add_network_arguments(parser):
    """The fetch options of every job that goes on the web (ingest, refresh): one definition, so the
    jobs keep the same politeness, address policy and deadlines."""
    add = lambda *flags, **kwargs: add_argument_once(parser, *flags, **kwargs)  # noqa: E731
    add("--allow-network", action="append", default=[], metavar="CIDR",
        help="also allow fetching from this network (repeatable); by default only public addresses are fetched")
    add("--timeout", type=float, default=20.0, help="whole-request deadline in seconds, redirects and body included")
    add("--max-bytes", type=int, default=32 * 1024 * 1024, help="body size cap")
    add("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are refused as decompression bombs")
    add("--max-redirects", type=int, default=5)
    add("--retries", type=int, default=2, help="extra attempts after 429 or 5xx")
    add("--max-retry-after", type=float, default=10.0, help="longest Retry-After honoured; longer makes the row fail")
    add("--concurrency", type=int, default=64, help="requests in flight per worker thread")
    add("--per-host", type=int, default=8, help="requests in flight per host per worker process")
    add("--max-rate", type=float, default=0.0, help="requests started per second per worker process (0: no limit)")
    add("--host-failure-limit", type=int, default=10,
        help="consecutive failures to connect (refused, DNS, connect timeout) before a host's URLs are skipped")
    add("--host-cooldown", type=float, default=60.0, help="seconds a failing host is skipped before it is tried again")
    add("--user-agent", default=DEFAULT_USER_AGENT)
    add("--contact", help="e-mail or URL added to the User-Agent so site owners can reach you")
    add("--ignore-robots", action="store_true", help="do not honour X-Robots-Tag noai/noimageai (not recommended)")


def fetch_config(opts):
    """FetchConfig from the options add_network_arguments defined."""
    return FetchConfig(
        timeout=opts.timeout, max_bytes=opts.max_bytes, max_redirects=opts.max_redirects,
        retries=opts.retries, max_retry_after=opts.max_retry_after, concurrency=opts.concurrency,
        per_host=opts.per_host, max_rate=opts.max_rate, host_failure_limit=opts.host_failure_limit,
        host_cooldown=opts.host_cooldown, user_agent=user_agent(opts.contact, opts.user_agent),
        allow_networks=tuple(opts.allow_network),
        honor_robots=not opts.ignore_robots,
    )


def apply_local_defaults(options, argv=None, worker_processes=False):
    """With no --runner, run locally through the FnApi runner, in this one process.

    DirectRunner itself first tries to download the Prism runner whenever the graph looks
    Prism-compatible, which hangs offline; so the engine is named directly. One process is the
    fastest local setup measured (`make bench`): the fetch runs on an event-loop thread and the
    decode and hashes on a thread pool (Pillow and hashlib release the GIL), so every core works
    without worker processes to start and rows to copy between them. Pass
    --direct_running_mode=multi_processing --direct_num_workers=N for separate worker processes.
    worker_processes=True (the dedup job: pure-Python CPU work, no I/O to overlap) makes that the
    default instead, one process per core, unless the command line says otherwise.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "FnApiRunner"
        if worker_processes:
            argv = sys.argv[1:] if argv is None else argv
            given = lambda flag: any(arg == flag or arg.startswith(flag + "=") for arg in argv)  # noqa: E731
            direct = options.view_as(DirectOptions)
            if not given("--direct_running_mode"):
                direct.direct_running_mode = "multi_processing"
            if not given("--direct_num_workers"):  # Beam's default is 1
                direct.direct_num_workers = os.cpu_count() or 2
    return options


def wait_for(result, options):
    """Waits for the job unless --no_wait_until_finish (Beam's option, honoured as `with Pipeline`
    honours it): a Flex Template launcher must return once the job is submitted."""
    if not options.view_as(StandardOptions).no_wait_until_finish:
        result.wait_until_finish()
    return result


def job_done(result):
    """The job ran and finished successfully: not still running (a launcher that did not wait),
    and not merely written as a template (DataflowRunner with --template_location reports DONE
    with no job behind it)."""
    return getattr(result, "has_job", True) and result.state == PipelineState.DONE


def is_local(options):
    return options.view_as(StandardOptions).runner in ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner")


def one_local_process(options):
    """A local run whose bundles all run in this one process: nothing to gain from spreading rows."""
    direct = options.view_as(DirectOptions)
    return is_local(options) and (direct.direct_running_mode != "multi_processing"
                                  or (direct.direct_num_workers or 1) <= 1)


def format_status_table(counts, statuses):
    """{dataset: {status: n}} -> a fixed-width table with totals, statuses in contract order."""
    present = [s for s in statuses if any(s in per for per in counts.values())]
    datasets = sorted(counts)
    width = max([len("dataset"), len("total")] + [len(d) for d in datasets])
    cols = [max(len(s), 5) for s in present]
    lines = ["  ".join(["dataset".ljust(width)] + [s.rjust(c) for s, c in zip(present, cols)] + ["total".rjust(6)])]
    grand = {s: 0 for s in present}
    for dataset in datasets:
        per = counts[dataset]
        for s in present:
            grand[s] += per.get(s, 0)
        lines.append("  ".join([dataset.ljust(width)] + [str(per.get(s, 0)).rjust(c) for s, c in zip(present, cols)]
                               + [str(sum(per.values())).rjust(6)]))
    lines.append("  ".join(["total".ljust(width)] + [str(grand[s]).rjust(c) for s, c in zip(present, cols)]
                           + [str(sum(grand.values())).rjust(6)]))
    return "\n".join(lines)


def quiet_local_logs():
    """The local job service relays every worker warning (unparsed job options and the like)."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)

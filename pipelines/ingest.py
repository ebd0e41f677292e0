"""Ingest: URL manifests -> fetched, verified, hashed, deduplicated rows; Parquet + blobs + summary.

python -m pipelines.ingest --manifest cc3m=Train_GCC-training.tsv --output OUT [options]
python -m pipelines.ingest --demo --output demo-out
"""

import contextlib
import sys
import tempfile
import time
import uuid

import apache_beam as beam
import pyarrow
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.demo import sample_site
from pipelines.launch import console, job_runner, output_checks, preflight, scratch
from pipelines.report import progress_line, run_resources
from transforms import schema
from transforms.clustering.clusters import WriteDuplicates, slim_row
from transforms.clustering.dedup_settings import DedupSettings
from transforms.clustering.row_keys import KeyBooks
from transforms.errors import BadInput
from transforms.fetch.client import FetchConfig, FetchImages
from transforms.hashing import HashImages
from transforms.io import side_files
from transforms.io.books import BalanceBooks, check_books
from transforms.io.checksums import HASH_CONFLICT_RULE, AttachExpectedHashes
from transforms.io.labels import JoinCC3MLabels, JoinLongCaptions, JoinOpenImagesLabels, load_synsets
from transforms.io.manifests import LINE_KEYED, ManifestParsers, ReadManifests
from transforms.io.resume import MergeWithPrevious, SizeLimits, parse_retry_statuses
from transforms.io.sinks import (
    CountBlobs,
    StatusCounts,
    StoreBlobs,
    WriteSummary,
    absolute_uri,
    assign_blob_uri,
    join_path,
    read_json,
)
from transforms.io.table import (
    FinalizeTable,
    ReadImageTable,
    RetireFiles,
    WriteTableShards,
    list_duplicates_files,
    list_table_files,
    remove_stale_leftovers,
    temporary_dir,
)
from transforms.io.table_record import RECORD, check_recorded_table, recorded_table, roll_back, table_record
from transforms.record_progress import RecordProgress

__all__ = [
    "IngestOptions",
    "parse_manifest_args",
    "fetch_config",
    "build_pipeline",
    "spill_directory",
    "cluster_columns",
    "read_manifest_rows",
    "demo_inputs",
    "resumed_files",
    "run",
    "report",
    "main",
]

DEMO_TIMEOUT = 3.0
MAX_HASH_PROCESSES = 64  # per Beam worker process; each holds ~75 MB and all start at once


class IngestOptions(PipelineOptions):
    """The ingest's own options, in the groups of docs/ingest.md."""

    @classmethod
    def _add_argparse_args(cls, parser):
        inputs = parser.add_argument_group("inputs", "the manifests and their side files (local, gs://, globs, .gz)")
        inputs.add_argument(
            "--manifest",
            action="append",
            default=[],
            metavar="KIND=PATH",
            help="a manifest to ingest (repeatable); KIND is one of " + ", ".join(schema.DATASETS),
        )
        output = parser.add_argument_group("output", "where the table, blobs and summary go")
        job_runner.add_argument_once(output, "--output", metavar="OUT", help="output directory, local or gs://")
        inputs.add_argument(
            "--demo", action="store_true", help="ingest the bundled sample, served from a loopback server started here"
        )
        inputs.add_argument("--cc12m-hashes", help="CC12M hash list: url TAB sha256 TAB md5 (hex or base64)")
        inputs.add_argument(
            "--openimages-labels", action="append", default=[], help="Open Images image-level labels CSV (repeatable)"
        )
        inputs.add_argument("--openimages-classes", help="dict.csv or class-descriptions CSV: mid,name")
        inputs.add_argument("--cc3m-labels", help="CC3M Image_Labels_Subset TSV")
        inputs.add_argument("--long-captions", help="DreamLIP long-caption CSV keyed by URL")
        inputs.add_argument("--imagenet-root", help="ILSVRC train root: <root>/<wnid>/<filename>")
        inputs.add_argument("--imagenet-synsets", help="LOC_synset_mapping.txt")
        FetchConfig.add_arguments(parser)
        parser.add_argument_group("decode and hashes").add_argument(
            "--hash-processes",
            type=int,
            default=None,
            metavar="N",
            help="worker processes that decode and hash the images, per Beam worker process"
            f" (default: one per core; 0: threads inside the Beam worker, slower; at most {MAX_HASH_PROCESSES})",
        )
        output.add_argument(
            "--resume",
            action="store_true",
            help="keep OUT's settled rows, fetch only the others again, write a complete new table",
        )
        output.add_argument(
            "--retry-status",
            default=None,
            metavar="S1,S2",
            help="with --resume: the statuses fetched again (default: every status but ok)",
        )
        # integrity (docs/integrity.md)
        output.add_argument(
            "--accept-truncated",
            action="store_true",
            help="ingest the records of a cut-short or corrupt compressed manifest up to the cut,"
            " recorded in summary.json, instead of failing",
        )
        job_runner.add_argument_once(
            output,
            "--force-unlock",
            action="store_true",
            help="take OUT's lease even though another run seems to hold it (only when that run is known to be dead)",
        )
        DedupSettings.add_arguments(parser)
        # progress and report (docs/progress-and-report.md)
        progress = parser.add_argument_group("progress and report")
        progress.add_argument(
            "--no-progress", dest="progress", action="store_false", help="no live progress line on stderr (local runs)"
        )
        progress.add_argument(
            "--progress-interval",
            type=float,
            default=10.0,
            help="seconds between progress lines when stderr is not a terminal (default 10)",
        )
        progress.add_argument("--no-report", dest="html_report", action="store_false", help="no OUT/report.html")


JOB = job_runner.Job(
    usage="python -m pipelines.ingest --manifest KIND=PATH [--manifest KIND=PATH ...] --output OUT [options]",
    name="ingest",
    options=IngestOptions,
    description="URL manifests -> fetched, verified, hashed, deduplicated rows: OUT/images/*.parquet, "
    "OUT/blobs/, OUT/duplicates/, OUT/summary.json, OUT/report.html.",
    interrupted="OUT keeps its last finished table; rerun with --resume to continue",
)
# Ctrl-C on an OUT with no finished table: --resume would be refused there (nothing to resume)
FIRST_RUN_INTERRUPTED = "OUT has no finished table yet; rerun the same command to start again"


def parse_manifest_args(values):
    manifests = []
    for value in values:
        kind, sep, path = value.partition("=")
        if not sep or not path.strip():
            raise BadInput(f"--manifest takes KIND=PATH, got {value!r}")
        if kind.strip() not in schema.DATASETS:
            raise BadInput(
                f"--manifest {value}: unknown KIND {kind.strip()!r}; expected one of {', '.join(schema.DATASETS)}"
            )
        manifests.append((kind.strip(), path.strip()))
    return manifests


fetch_config = FetchConfig.from_options  # kept importable from here


def build_pipeline(pipeline, opts, started_at, progress_dir=None, one_process=False, scratch_dir=None, guard=None):
    """Adds the ingest graph to `pipeline`; returns the rows PCollection (without cluster columns).

    one_process: a local run in this one process (job_runner.one_local_process). The manifest rows
    then stream into the fetch instead of being shuffled across workers (see ReadManifests), the
    near search is not sharded, and dedup's keys are grouped through local files rather than in
    the runner's memory (transforms.clustering.spill).
    scratch_dir: a local directory for those files when OUT is remote (scratch.scratch_directory).
    guard: the lease's LeaseGuard (leased_output), confirmed before each publish step.
    """
    spread_rows = not one_process
    out = opts.output
    # why the random part: two runs of one second (a --force-unlock takeover) must not share part names
    run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(started_at))}-{uuid.uuid4().hex[:6]}"
    previous_files = list_table_files(out)  # replaced by this run's, once the books balance
    if opts.resume and not previous_files:
        raise BadInput(
            f"--resume: no table to resume in {join_path(out, 'images')} (no run has finished there"
            " yet, say the first was interrupted): run the same command without --resume"
        )
    previous_record = recorded_table(out, strict=False)[1]
    previous_duplicates = list_duplicates_files(out)
    read = read_manifest_rows(pipeline, opts, spread_rows)
    rows = read["rows"]
    carried = None
    kept = None
    if opts.resume:
        merged = rows | "MergePrevious" >> MergeWithPrevious(
            pipeline | "PreviousRun" >> ReadImageTable(resumed_files(out, previous_files)),
            parse_retry_statuses(opts.retry_status),
            read["key_prefixes"],
            SizeLimits(opts.max_bytes, opts.max_pixels),
        )
        rows, carried, kept = merged["fetch"], merged["carry"], merged["kept"]
    fetched = (
        rows
        | "Fetch" >> FetchImages(fetch_config(opts))
        | "Hash"
        >> HashImages(opts.max_pixels, views=DedupSettings.from_options(opts).views, processes=opts.hash_processes)
        | "Progress" >> RecordProgress(progress_dir)
        # why absolute: a blob URI is read from other working directories (export, refresh, an
        # operator's `xargs rm < dead_blobs.txt`); `--output OUT` typed relative once meant
        # another OUT's file, or none, from anywhere else
        | "BlobUri" >> beam.Map(assign_blob_uri, absolute_uri(out))
        | "StoreBlobs" >> StoreBlobs(temporary_dir(out, run_id))
    )
    if carried is not None:
        fetched = (fetched, carried) | "WithCarried" >> beam.Flatten()
    # Full rows never cross a shuffle (the local runner holds whatever crosses one in memory):
    # they stream into temporary Parquet shards; dedup sees a slim projection, re-reads only the
    # rows of clusters from the shards, and the shards get their cluster columns when finalised.
    shards = fetched | "WriteShards" >> WriteTableShards(out, run_id)
    deduped = {
        "slim": fetched | "DedupKeys" >> beam.Map(slim_row),
        "shards": shards,
    } | "Dedup" >> DedupSettings.from_options(opts).transform(
        from_shards=True,
        one_process=one_process,
        spill_dir=spill_directory(out, run_id, scratch_dir) if one_process else None,
    )
    clusters = deduped["rows"] | "ClusterColumns" >> beam.FlatMap(cluster_columns)
    duplicates_files = deduped["clusters"] | "WriteDuplicates" >> WriteDuplicates(out)
    table = shards | "WriteImages" >> FinalizeTable(out, run_id, clusters, with_counts=True, guard=guard)
    written = table["files"]
    # Why: the books (records read per manifest file = rows written) are checked by the job itself.
    # ... and so are the keys: as many distinct as rows written (CONTRACT.md: unique across the run).
    books_inputs = {
        "records": read["records"],
        "written": table["counts"],
        "truncated": read["truncated"],
        "keys": deduped["row_keys"] | "KeyBooks" >> KeyBooks(written),
    }
    if kept is not None:
        books_inputs["kept"] = kept
    books = books_inputs | "Books" >> BalanceBooks()
    blob_count = fetched | "CountBlobs" >> CountBlobs()
    duplicates = (
        deduped["stats"]
        | "DupStats" >> beam.combiners.ToList()
        | "WithBlobs"
        >> beam.Map(lambda stats, blobs: dict(*(stats or [{}]), blobs=blobs), blobs=beam.pvalue.AsSingleton(blob_count))
    )
    summary_inputs = {
        "counts": fetched | "Counts" >> StatusCounts(),
        "duplicates": duplicates,
        "written": written,
        "books": books,
        # what OUT/images holds: this run's files once the books balance, else the previous table
        RECORD: books
        | "TableRecord"
        >> beam.Map(
            lambda b, counts: table_record(counts) if b["balanced"] else previous_record,
            counts=beam.pvalue.AsList(table["counts"]),
        ),
    }
    if "hash_conflicts" in read:
        summary_inputs["hash_list"] = (
            read["hash_conflicts"]
            | "CountConflicts" >> beam.combiners.Count.Globally()
            | "HashListFigures" >> beam.Map(lambda n: {"conflicting_urls": n, "rule": HASH_CONFLICT_RULE})
        )
    if carried is not None:
        summary_inputs["resume"] = (
            carried | "CountCarried" >> beam.combiners.Count.Globally()
        ) | "ResumeFigures" >> beam.Map(
            lambda n, total: {"carried": n, "fetched": total - n},
            total=beam.pvalue.AsSingleton(fetched | "CountAll" >> beam.combiners.Count.Globally()),
        )
    # The books are checked right after summary.json is written, in the same step (check_books);
    # unbalanced, this run's table files are removed again and the previous ones stay.
    checked = summary_inputs | "WriteSummary" >> WriteSummary(
        out,
        started_at,
        "ingest",
        _options_snapshot(opts),
        check=check_books,
        on_failed_check=lambda files: roll_back(files, keep=previous_files),
        guard=guard,
    )
    # Why: the previous table goes only once the books balance; a re-run with another shard count
    # must not leave the old clusters-* files beside the new.
    _ = written | "RetirePrevious" >> RetireFiles(previous_files, after=checked, guard=guard)
    _ = duplicates_files | "RetireDuplicates" >> RetireFiles(previous_duplicates, after=checked, guard=guard)
    return fetched


def resumed_files(out, files):
    """The files of OUT's previous table a --resume reads: those its summary.json records, checked
    (table_record.check_recorded_table). Files it does not record are parts of a run killed before
    its summary: left unread (a key would come twice), and retired with the previous table."""
    kept = check_recorded_table("--resume", out, files, ignore_unrecorded=True)
    for path in sorted(set(files) - set(kept)):
        print(
            f"ingest: warning: {path} is not in {out}/summary.json's table: not read, removed",
            file=sys.stderr,
            flush=True,
        )
    return kept


SCRATCH_PREFIX = "ingest-spill-"


def spill_directory(out, run_id, scratch_dir=None):
    """Where a local run spills dedup's keys and clustered rows: inside the run's temporary folder
    when OUT is local (removed with it), else `scratch_dir`, a local scratch directory that the run
    removes however it ends (run(): scratch.scratch_directory)."""
    if "://" not in out:
        return join_path(temporary_dir(out, run_id), "spill")
    if scratch_dir is None:
        raise ValueError(f"a local run writing to {out} needs a local scratch directory for its spill")
    return scratch_dir


def cluster_columns(row):
    """(key, cluster columns) of a clustered row."""
    return [(row["key"], (row["cluster_id"], bool(row.get("is_canonical")), bool(row.get("is_placeholder"))))]


def read_manifest_rows(pipeline, opts, spread_rows=True):
    """Manifest rows with their published hashes, labels and captions joined (none without manifests).

    Returns:
        {"rows", "records" ({"path", "records"} per manifest file), "truncated" (cut compressed
        files kept with --accept-truncated), "key_prefixes" ({path: key prefix} of the CC3M and
        CC12M files)}, and "hash_conflicts" (URLs) with --cc12m-hashes.
    """
    manifests = parse_manifest_args(opts.manifest)
    if not manifests:
        return {
            **{
                name: pipeline | f"NoManifests{name.title()}" >> beam.Create([])
                for name in ("rows", "records", "truncated")
            },
            "key_prefixes": {},
        }
    synsets = load_synsets(opts.imagenet_synsets) if opts.imagenet_synsets else None
    parsers = ManifestParsers(opts.imagenet_root, synsets)
    reader = ReadManifests(manifests, parsers, spread_rows, accept_truncated=opts.accept_truncated, with_books=True)
    read = pipeline | "ReadManifests" >> reader
    read["key_prefixes"] = {path: prefix for kind, path, prefix, _label in reader.files if kind in LINE_KEYED}
    rows = read["rows"]
    # Joins run on the small pre-fetch rows: no image bytes cross their shuffles.
    if opts.cc12m_hashes:
        joined = rows | "PublishedHashes" >> AttachExpectedHashes(opts.cc12m_hashes, with_conflicts=True)
        rows = joined["rows"]
        read["hash_conflicts"] = joined["conflicts"]
    if opts.openimages_labels:
        rows = rows | "OpenImagesLabels" >> JoinOpenImagesLabels(opts.openimages_labels, opts.openimages_classes)
    if opts.cc3m_labels:
        rows = rows | "CC3MLabels" >> JoinCC3MLabels(opts.cc3m_labels)
    if opts.long_captions:
        rows = rows | "LongCaptions" >> JoinLongCaptions(opts.long_captions)
    read["rows"] = rows
    return read


def _options_snapshot(opts):
    keep = (
        "manifest",
        "timeout",
        "max_bytes",
        "max_pixels",
        "retries",
        "concurrency",
        "per_host",
        "allow_network",
        "max_distance",
        "dataset_priority",
        "cc12m_hashes",
        "demo",
        "resume",
        "retry_status",
        "accept_truncated",
    )
    # why the views as parsed: a --resume compares them with this run's (preflight.check_resumed_views)
    return {name: getattr(opts, name, None) for name in keep} | {"views": list(DedupSettings.from_options(opts).views)}


@contextlib.contextmanager
def demo_inputs(opts):
    """Serves the bundled sample on loopback and points the options at it."""
    server = sample_site.SampleWebServer(sample_site.demo_routes(DEMO_TIMEOUT)).start()
    try:
        with tempfile.TemporaryDirectory(prefix="ingest-demo-") as workdir:
            files = sample_site.render_templates(server, workdir)
            opts.manifest = [
                f"cc3m={files['cc3m.tsv']}",
                f"cc12m={files['cc12m.tsv']}",
                f"openimages={files['openimages.csv']}",
                f"zero={files['zero.jsonl']}",
                f"imagenet_captions={files['imagenet_captions.json']}",
            ]
            opts.cc12m_hashes = files["cc12m_hashes.tsv"]
            opts.openimages_labels = [
                files["openimages-labels-machine.csv"],
                files["openimages-labels-human.csv"],
                files["machine_ann_2016_08-labels.csv"],
            ]
            opts.openimages_classes = files["openimages-class-descriptions.csv"]
            opts.cc3m_labels = files["cc3m-labels.tsv"]
            opts.long_captions = files["dreamlip-long-captions.csv"]
            opts.imagenet_root = sample_site.write_imagenet_root(workdir)
            opts.imagenet_synsets = files["LOC_synset_mapping.txt"]
            opts.allow_network = list(opts.allow_network) + ["127.0.0.1/32"]
            opts.timeout = min(opts.timeout, DEMO_TIMEOUT)
            print(f"demo: serving the bundled sample at {server.base}", flush=True)
            yield
    finally:
        server.stop()


def check_remote_inputs(options, opts):
    """With a remote runner, refuses (BadInput) inputs its workers cannot read: local paths, --demo."""
    if opts.demo and not job_runner.is_local(options):
        raise BadInput(
            "--demo serves the sample from this machine's loopback and temporary files, which "
            "remote workers cannot reach: run it with the local runner"
        )
    job_runner.require_shared_paths(
        options,
        {
            "--output": opts.output,
            "--manifest": [path for _, path in parse_manifest_args(opts.manifest)],
            "--cc12m-hashes": opts.cc12m_hashes,
            "--openimages-labels": opts.openimages_labels,
            "--openimages-classes": opts.openimages_classes,
            "--cc3m-labels": opts.cc3m_labels,
            "--long-captions": opts.long_captions,
            "--imagenet-root": opts.imagenet_root,
            "--imagenet-synsets": opts.imagenet_synsets,
        },
    )


def input_patterns(opts):
    """{how the user gave it: [paths or globs]} of every manifest and side file."""
    patterns = {f"--manifest {kind}={pattern}": [pattern] for kind, pattern in parse_manifest_args(opts.manifest)}
    for flag in ("cc12m_hashes", "openimages_classes", "cc3m_labels", "long_captions", "imagenet_synsets"):
        if getattr(opts, flag):
            patterns["--" + flag.replace("_", "-")] = [getattr(opts, flag)]
    if opts.openimages_labels:
        patterns["--openimages-labels"] = list(opts.openimages_labels)
    return patterns


def check_inputs(opts):
    """What can be checked before the pipeline starts: the manifests and side files exist and are
    files, the option values make sense, OUT can be written (each a one-line BadInput or
    EnvironmentFailure naming the path)."""
    if not opts.output:
        raise BadInput("--output is required")
    if not opts.manifest and not opts.demo and not opts.resume:
        raise BadInput("give at least one --manifest KIND=PATH, --resume, or --demo")
    if not opts.demo:  # --demo writes its own files
        for flag, patterns in input_patterns(opts).items():
            for pattern in patterns:  # a manifest may be a glob; a side file is one file
                check = preflight.check_input_files if flag.startswith("--manifest") else preflight.check_input_file
                check(flag, pattern)
                side_files.check_side_file(flag, pattern, opts.output)  # of the kind the option reads
        preflight.check_input_file("--imagenet-root", opts.imagenet_root, directory=True)
    if opts.retry_status:
        parse_retry_statuses(opts.retry_status)
    if opts.progress_interval <= 0:
        raise BadInput(f"--progress-interval must be above 0, got {opts.progress_interval}")
    if opts.hash_processes is not None and opts.hash_processes < 0:
        raise BadInput(f"--hash-processes must be at least 0, got {opts.hash_processes}")
    if opts.hash_processes is not None and opts.hash_processes > MAX_HASH_PROCESSES:
        # why: the pool starts them all at once, ~75 MB each: 1000 would exhaust a worker's memory
        raise BadInput(f"--hash-processes must be at most {MAX_HASH_PROCESSES}, got {opts.hash_processes}")
    FetchConfig.from_options(opts)
    views = DedupSettings.from_options(opts).views
    output_checks.check_output_dir(opts.output)
    if opts.resume:
        preflight.check_resumed_views(opts.output, views)


def run(argv=None):
    """The ingest job: parses argv, checks the inputs, runs and waits (unless --no_wait_until_finish);
    returns the PipelineResult. Raises on failure (main() turns that into one line)."""
    options, opts = JOB.parse(argv)
    # A remote runner's workers cannot open this machine's files: refused before anything is read.
    check_remote_inputs(options, opts)
    check_inputs(opts)
    started_at = time.time()
    one_process = job_runner.one_local_process(options)
    if one_process:
        # Arrow's default mimalloc pool keeps the pages of freed buffers: +60 MB of RSS measured
        # for finalising one 20K-row shard, against +30 MB with the system allocator, which
        # gives them back. On Dataflow the workers' own defaults stay.
        pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    # Why: one writer per OUT (the lease, held until the table, summary and report are written);
    # with a remote OUT, the spill in a local scratch directory that goes however the run ends.
    remote_spill = one_process and "://" in opts.output
    first_run = not opts.resume and not list_table_files(opts.output)
    with (
        # installed before the scratch directory, whose Ctrl-C handler chains to it
        console.stop_on_interrupt(*console.stop_lines(JOB.name, FIRST_RUN_INTERRUPTED))
        if first_run
        else contextlib.nullcontext(),
        job_runner.leased_output(
            options, opts.output, "ingest", opts.force_unlock, clear=remove_stale_leftovers
        ) as guard,
        scratch.scratch_directory(SCRATCH_PREFIX) if remote_spill else contextlib.nullcontext() as scratch_dir,
    ):
        if not opts.demo:  # the demo's inputs are temporary files of its own
            preflight.check_not_inside_output(opts.output, input_patterns(opts))
        with demo_inputs(opts) if opts.demo else contextlib.nullcontext():
            with progress_line.LiveProgress(
                parse_manifest_args(opts.manifest),
                plain_interval=opts.progress_interval,
                enabled=opts.progress and job_runner.is_local(options),
            ) as live:

                def build(pipeline):
                    build_pipeline(pipeline, opts, started_at, live.directory, one_process, scratch_dir, guard)
                    live.start()

                return JOB.execute(options, build, opts.output, summary=report, html_report=opts.html_report)


def report(out):
    summary = read_json(join_path(out, "summary.json"))
    print(f"\ningest: {summary['rows']} rows in {summary['timings']['wall_seconds']:.1f}s -> {out}")
    print(f"  images:  {join_path(out, 'images')}/*.parquet")
    print(f"  blobs:   {join_path(out, 'blobs')}/ ({summary['duplicates'].get('blobs', 0)} distinct images)")
    print(f"  summary: {join_path(out, 'summary.json')}")
    cost = run_resources.cost_line(summary)
    if cost:
        print(f"  cost:    {cost}")
    if FileSystems.exists(join_path(out, "report.html")):
        print(f"  report:  {join_path(out, 'report.html')}")
    print()
    print(job_runner.format_status_table(summary["counts"], schema.STATUSES))


def main(argv=None) -> int:
    """`python -m pipelines.ingest`: the exit status (0 done, 2 bad input, 1 environment, 130 Ctrl-C)."""
    return JOB.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

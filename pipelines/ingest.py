"""Ingest: URL manifests -> fetched, verified, hashed, deduplicated rows; Parquet + blobs + summary.

    python -m pipelines.ingest --manifest cc3m=Train_GCC-training.tsv --output OUT [options]
    python -m pipelines.ingest --demo --output demo-out
"""
import contextlib
import sys
import tempfile
import time

import apache_beam as beam
import pyarrow
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.io.filesystems import FileSystems

from pipelines.launch import job_runner
from pipelines.report import run_metrics
from pipelines.report import progress_line
from pipelines.demo import sample_site
from pipelines.report.html_report import try_write_report
from transforms import schema
from transforms.io.checksums import AttachExpectedHashes
from transforms.clustering.clusters import WriteDuplicates, slim_row
from transforms.fetch.client import FetchImages
from transforms.hashing import HashImages
from transforms.io.labels import JoinCC3MLabels, JoinLongCaptions, JoinOpenImagesLabels, load_synsets
from transforms.io.manifests import ManifestParsers, ReadManifests
from transforms.io.resume import MergeWithPrevious, parse_retry_statuses
from transforms.io.sinks import CountBlobs, StatusCounts, StoreBlobs, WriteSummary, assign_blob_uri, join_path, read_json
from transforms.io.table import FinalizeTable, ReadImageTable, RetireFiles, WriteTableShards, list_orphan_shards, \
    list_table_files, temporary_dir
from transforms.record_progress import RecordProgress

DEMO_TIMEOUT = 3.0


class IngestOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--manifest", action="append", default=[], metavar="KIND=PATH",
                            help="a manifest to ingest (repeatable); KIND is one of " + ", ".join(schema.DATASETS))
        job_runner.add_argument_once(parser, "--output", help="output directory, local or gs://")
        parser.add_argument("--demo", action="store_true",
                            help="ingest the bundled sample, served from a loopback server started here")
        # side inputs
        parser.add_argument("--cc12m-hashes", help="CC12M hash list: url TAB sha256 TAB md5 (hex or base64)")
        parser.add_argument("--openimages-labels", action="append", default=[],
                            help="Open Images image-level labels CSV (repeatable)")
        parser.add_argument("--openimages-classes", help="dict.csv or class-descriptions CSV: mid,name")
        parser.add_argument("--cc3m-labels", help="CC3M Image_Labels_Subset TSV")
        parser.add_argument("--long-captions", help="DreamLIP long-caption CSV keyed by URL")
        parser.add_argument("--imagenet-root", help="ILSVRC train root: <root>/<wnid>/<filename>")
        parser.add_argument("--imagenet-synsets", help="LOC_synset_mapping.txt")
        job_runner.add_network_arguments(parser)
        # resume
        parser.add_argument("--resume", action="store_true",
                            help="keep OUT's settled rows, fetch only the others again, write a complete new table")
        parser.add_argument("--retry-status", default=None, metavar="S1,S2",
                            help="with --resume: the statuses fetched again (default: every status but ok)")
        # dedup
        job_runner.add_dedup_arguments(parser)
        # progress and report (README.md, Progress)
        parser.add_argument("--no-progress", dest="progress", action="store_false",
                            help="no live progress line on stderr (local runs)")
        parser.add_argument("--progress-interval", type=float, default=10.0,
                            help="seconds between progress lines when stderr is not a terminal")
        parser.add_argument("--no-report", dest="html_report", action="store_false", help="no OUT/report.html")


def parse_manifest_args(values):
    manifests = []
    for value in values:
        kind, sep, path = value.partition("=")
        if not sep or not path:
            raise ValueError(f"--manifest takes KIND=PATH, got {value!r}")
        manifests.append((kind.strip(), path.strip()))
    return manifests


fetch_config = job_runner.fetch_config  # kept importable from here


def build_pipeline(pipeline, opts, started_at, progress_dir=None, one_process=False):
    """Adds the ingest graph to `pipeline`; returns the rows PCollection (without cluster columns).

    one_process: a local run in this one process (job_runner.one_local_process). The manifest rows
    then stream into the fetch instead of being shuffled across workers (see ReadManifests), the
    near search is not sharded, and dedup's keys are grouped through local files rather than in
    the runner's memory (transforms.clustering.spill).
    """
    spread_rows = not one_process
    out = opts.output
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started_at))
    previous_files = list_table_files(out)  # replaced by this run's, once those are written
    if opts.resume and not previous_files:
        raise ValueError(f"--resume: no table to resume in {join_path(out, 'images')}")
    rows = read_manifest_rows(pipeline, opts, spread_rows)
    carried = None
    if opts.resume:
        merged = rows | "MergePrevious" >> MergeWithPrevious(
            pipeline | "PreviousRun" >> ReadImageTable(previous_files), parse_retry_statuses(opts.retry_status))
        rows, carried = merged["fetch"], merged["carry"]
    fetched = (
        rows
        | "Fetch" >> FetchImages(fetch_config(opts))
        | "Hash" >> HashImages(opts.max_pixels, views=job_runner.parse_views(opts.views))
        | "Progress" >> RecordProgress(progress_dir)
        | "BlobUri" >> beam.Map(assign_blob_uri, out)
        | "StoreBlobs" >> StoreBlobs()
    )
    if carried is not None:
        fetched = (fetched, carried) | "WithCarried" >> beam.Flatten()
    # Full rows never cross a shuffle (the local runner holds whatever crosses one in memory):
    # they stream into temporary Parquet shards; dedup sees a slim projection, re-reads only the
    # rows of clusters from the shards, and the shards get their cluster columns when finalised.
    shards = fetched | "WriteShards" >> WriteTableShards(out, run_id)
    deduped = (
        {"slim": fetched | "DedupKeys" >> beam.Map(slim_row), "shards": shards}
        | "Dedup" >> job_runner.dedup_transform(opts, from_shards=True, one_process=one_process,
                                            spill_dir=spill_directory(out, run_id) if one_process else None)
    )
    clusters = deduped["rows"] | "ClusterColumns" >> beam.FlatMap(cluster_columns)
    _ = deduped["clusters"] | "WriteDuplicates" >> WriteDuplicates(out)
    written = shards | "WriteImages" >> FinalizeTable(out, run_id, clusters)
    _ = written | "RetirePrevious" >> RetireFiles(previous_files + list_orphan_shards(out))
    blob_count = fetched | "CountBlobs" >> CountBlobs()
    duplicates = (
        deduped["stats"]
        | "DupStats" >> beam.combiners.ToList()
        | "WithBlobs" >> beam.Map(lambda stats, blobs: dict(*(stats or [{}]), blobs=blobs),
                                  blobs=beam.pvalue.AsSingleton(blob_count))
    )
    summary_inputs = {"counts": fetched | "Counts" >> StatusCounts(), "duplicates": duplicates, "written": written}
    if carried is not None:
        summary_inputs["resume"] = (
            (carried | "CountCarried" >> beam.combiners.Count.Globally())
            | "ResumeFigures" >> beam.Map(lambda n, total: {"carried": n, "fetched": total - n},
                                          total=beam.pvalue.AsSingleton(
                                              fetched | "CountAll" >> beam.combiners.Count.Globally())))
    _ = summary_inputs | "WriteSummary" >> WriteSummary(out, started_at, "ingest", _options_snapshot(opts))
    return fetched


def spill_directory(out, run_id):
    """Where a local run spills dedup's keys: inside the run's temporary folder when OUT is local
    (removed with it), else a local temporary folder (Dedup removes it when done)."""
    if "://" not in out:
        return join_path(temporary_dir(out, run_id), "spill")
    return tempfile.mkdtemp(prefix="ingest-spill-")


def cluster_columns(row):
    """(key, cluster columns) of a clustered row."""
    return [(row["key"], (row["cluster_id"], bool(row.get("is_canonical")), bool(row.get("is_placeholder"))))]


def read_manifest_rows(pipeline, opts, spread_rows=True):
    """Manifest rows with their published hashes, labels and captions joined (none without manifests)."""
    manifests = parse_manifest_args(opts.manifest)
    if not manifests:
        return pipeline | "NoManifests" >> beam.Create([])
    synsets = load_synsets(opts.imagenet_synsets) if opts.imagenet_synsets else None
    parsers = ManifestParsers(opts.imagenet_root, synsets)
    rows = pipeline | "ReadManifests" >> ReadManifests(manifests, parsers, spread_rows)
    # Joins run on the small pre-fetch rows: no image bytes cross their shuffles.
    if opts.cc12m_hashes:
        rows = rows | "PublishedHashes" >> AttachExpectedHashes(opts.cc12m_hashes)
    if opts.openimages_labels:
        rows = rows | "OpenImagesLabels" >> JoinOpenImagesLabels(opts.openimages_labels, opts.openimages_classes)
    if opts.cc3m_labels:
        rows = rows | "CC3MLabels" >> JoinCC3MLabels(opts.cc3m_labels)
    if opts.long_captions:
        rows = rows | "LongCaptions" >> JoinLongCaptions(opts.long_captions)
    return rows


def _options_snapshot(opts):
    keep = ("manifest", "timeout", "max_bytes", "max_pixels", "retries", "concurrency", "per_host",
            "allow_network", "max_distance", "dataset_priority", "cc12m_hashes", "demo", "resume", "retry_status")
    return {name: getattr(opts, name, None) for name in keep}


@contextlib.contextmanager
def demo_inputs(opts):
    """Serves the bundled sample on loopback and points the options at it."""
    server = sample_site.SampleWebServer(sample_site.demo_routes(DEMO_TIMEOUT)).start()
    try:
        with tempfile.TemporaryDirectory(prefix="ingest-demo-") as workdir:
            files = sample_site.render_templates(server, workdir)
            opts.manifest = [f"cc3m={files['cc3m.tsv']}", f"cc12m={files['cc12m.tsv']}",
                             f"openimages={files['openimages.csv']}", f"zero={files['zero.jsonl']}",
                             f"imagenet_captions={files['imagenet_captions.json']}"]
            opts.cc12m_hashes = files["cc12m_hashes.tsv"]
            opts.openimages_labels = [files["openimages-labels-machine.csv"], files["openimages-labels-human.csv"],
                                      files["machine_ann_2016_08-labels.csv"]]
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


def run(argv=None):
    options = PipelineOptions(argv)
    opts = options.view_as(IngestOptions)
    job_runner.apply_local_defaults(options, argv)
    if not opts.output:
        raise SystemExit("ingest: --output is required")
    if not opts.manifest and not opts.demo and not opts.resume:
        raise SystemExit("ingest: give at least one --manifest KIND=PATH, --resume, or --demo")
    started_at = time.time()
    if job_runner.one_local_process(options):
        # Arrow's default mimalloc pool keeps the pages of freed buffers: +60 MB of RSS measured
        # for finalising one 20K-row shard, against +30 MB with the system allocator, which
        # gives them back. On Dataflow the workers' own defaults stay.
        pyarrow.set_memory_pool(pyarrow.system_memory_pool())
    with demo_inputs(opts) if opts.demo else contextlib.nullcontext():
        pipeline = beam.Pipeline(options=options)
        with progress_line.LiveProgress(parse_manifest_args(opts.manifest), plain_interval=opts.progress_interval,
                                   enabled=opts.progress and job_runner.is_local(options)) as live:
            build_pipeline(pipeline, opts, started_at, live.directory,
                           one_process=job_runner.one_local_process(options))
            live.start()
            result = job_runner.wait_for(pipeline.run(), options)
    if job_runner.job_done(result):
        run_metrics.record_run_metrics(result, opts.output)
        if opts.html_report:
            try_write_report(opts.output)
    if job_runner.is_local(options):
        report(opts.output)
    return result


def report(out):
    summary = read_json(join_path(out, "summary.json"))
    print(f"\ningest: {summary['rows']} rows in {summary['timings']['wall_seconds']:.1f}s -> {out}")
    print(f"  images:  {join_path(out, 'images')}/*.parquet")
    print(f"  blobs:   {join_path(out, 'blobs')}/ ({summary['duplicates'].get('blobs', 0)} distinct images)")
    print(f"  summary: {join_path(out, 'summary.json')}")
    if FileSystems.exists(join_path(out, "report.html")):
        print(f"  report:  {join_path(out, 'report.html')}")
    print()
    print(job_runner.format_status_table(summary["counts"], schema.STATUSES))


def main(argv=None):
    job_runner.quiet_local_logs()
    try:
        run(argv if argv is not None else sys.argv[1:])
    except ValueError as exc:  # bad options and unmatched manifests: a message, not a traceback
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

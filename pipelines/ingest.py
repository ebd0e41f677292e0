"""Ingest: URL manifests -> fetched, verified, hashed, deduplicated rows; Parquet + blobs + summary.

    python -m pipelines.ingest --manifest cc3m=Train_GCC-training.tsv --output OUT [options]
    python -m pipelines.ingest --demo --output demo-out
"""
import argparse
import contextlib
import os
import sys
import tempfile
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import common, sample
from transforms import schema
from transforms.checksums import AttachExpectedHashes
from transforms.dedup import DEFAULT_PRIORITY, Dedup
from transforms.fetch import FetchImages
from transforms.hashing import HashImages
from transforms.manifests import ManifestParsers, ReadManifests
from transforms.sinks import CountBlobs, StatusCounts, StoreBlobs, WriteImageTable, WriteSummary, assign_blob_uri, \
    join_path, read_json

DEMO_TIMEOUT = 3.0


class IngestOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--manifest", action="append", default=[], metavar="KIND=PATH",
                            help="a manifest to ingest (repeatable); KIND is one of " + ", ".join(schema.DATASETS))
        common.add_argument_once(parser, "--output", help="output directory, local or gs://")
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
        common.add_network_arguments(parser)
        # dedup
        common.add_argument_once(parser, "--max-distance", type=int, default=None,
                                 help="pHash Hamming distance at or under which two images are near-duplicates")
        parser.add_argument("--dataset-priority", default=",".join(DEFAULT_PRIORITY),
                            help="which dataset's row is canonical when resolution ties")


def parse_manifest_args(values):
    manifests = []
    for value in values:
        kind, sep, path = value.partition("=")
        if not sep or not path:
            raise ValueError(f"--manifest takes KIND=PATH, got {value!r}")
        manifests.append((kind.strip(), path.strip()))
    return manifests


fetch_config = common.fetch_config  # kept importable from here


def build_pipeline(pipeline, opts, started_at):
    """Adds the ingest graph to `pipeline`; returns the final rows PCollection."""
    out = opts.output
    manifests = parse_manifest_args(opts.manifest)
    rows = pipeline | "ReadManifests" >> ReadManifests(manifests, ManifestParsers())
    if opts.cc12m_hashes:
        rows = rows | "PublishedHashes" >> AttachExpectedHashes(opts.cc12m_hashes)
    fetched = (
        rows
        | "Fetch" >> FetchImages(fetch_config(opts))
        | "Hash" >> HashImages(opts.max_pixels)
        | "BlobUri" >> beam.Map(assign_blob_uri, out)
        | "StoreBlobs" >> StoreBlobs()
    )
    deduped = fetched | "Dedup" >> Dedup(opts.max_distance, tuple(opts.dataset_priority.split(",")))
    final = deduped["rows"]
    written = final | "WriteImages" >> WriteImageTable(out)
    blob_count = final | "CountBlobs" >> CountBlobs()
    duplicates = (
        deduped["stats"]
        | "DupStats" >> beam.combiners.ToList()
        | "WithBlobs" >> beam.Map(lambda stats, blobs: dict(*(stats or [{}]), blobs=blobs),
                                  blobs=beam.pvalue.AsSingleton(blob_count))
    )
    _ = {
        "counts": final | "Counts" >> StatusCounts(),
        "duplicates": duplicates,
        "written": written,
    } | "WriteSummary" >> WriteSummary(out, started_at, "ingest", _options_snapshot(opts))
    return final


def _options_snapshot(opts):
    keep = ("manifest", "timeout", "max_bytes", "max_pixels", "retries", "concurrency", "per_host",
            "allow_network", "max_distance", "dataset_priority", "cc12m_hashes", "demo")
    return {name: getattr(opts, name, None) for name in keep}


@contextlib.contextmanager
def demo_inputs(opts):
    """Serves the bundled sample on loopback and points the options at it."""
    server = sample.SampleWebServer(sample.demo_routes(DEMO_TIMEOUT)).start()
    try:
        with tempfile.TemporaryDirectory(prefix="ingest-demo-") as workdir:
            files = sample.render_templates(server, workdir)
            opts.manifest = [f"cc3m={files['cc3m.tsv']}", f"cc12m={files['cc12m.tsv']}",
                             f"openimages={files['openimages.csv']}"]
            opts.cc12m_hashes = files["cc12m_hashes.tsv"]
            opts.allow_network = list(opts.allow_network) + ["127.0.0.1/32"]
            opts.timeout = min(opts.timeout, DEMO_TIMEOUT)
            print(f"demo: serving the bundled sample at {server.base}", flush=True)
            yield
    finally:
        server.stop()


def run(argv=None):
    options = PipelineOptions(argv)
    opts = options.view_as(IngestOptions)
    common.apply_local_defaults(options)
    if not opts.output:
        raise SystemExit("ingest: --output is required")
    if not opts.manifest and not opts.demo:
        raise SystemExit("ingest: give at least one --manifest KIND=PATH, or --demo")
    started_at = time.time()
    with demo_inputs(opts) if opts.demo else contextlib.nullcontext():
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, opts, started_at)
        result = pipeline.run()
        result.wait_until_finish()
    if common.is_local(options):
        report(opts.output)
    return result


def report(out):
    summary = read_json(join_path(out, "summary.json"))
    print(f"\ningest: {summary['rows']} rows in {summary['timings']['wall_seconds']:.1f}s -> {out}")
    print(f"  images:  {join_path(out, 'images')}/*.parquet")
    print(f"  blobs:   {join_path(out, 'blobs')}/ ({summary['duplicates'].get('blobs', 0)} distinct images)")
    print(f"  summary: {join_path(out, 'summary.json')}\n")
    print(common.format_status_table(summary["counts"], schema.STATUSES))


def main(argv=None):
    common.quiet_local_logs()
    try:
        run(argv if argv is not None else sys.argv[1:])
    except ValueError as exc:  # bad options and unmatched manifests: a message, not a traceback
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

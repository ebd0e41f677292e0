"""Re-cluster one or more ingest outputs together (shared CONTRACT.md):

    python -m pipelines.dedup --input OUT [--input OUT2 ...] --output OUT3 [--max-distance K]

Reads OUT*/images/*.parquet, writes OUT3/images/*.parquet (every input row, with cluster_id,
is_canonical and is_placeholder set anew), OUT3/duplicates/clusters-*.jsonl and OUT3/summary.json.
Inputs ingested at different times may hold the same key: the row with the newest fetched_at
is kept (rows without fetched_at count as oldest; a tie goes to the input listed last) and
summary.json reports how many rows were replaced ("replaced_rows"). Paths may be local or gs://.
Without --runner the job runs locally with one worker process per core
(pipelines.launch.job_runner.apply_local_defaults).
"""
import json
import logging
import os
import sys
import tempfile
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import job_runner
from transforms.clustering.clusters import WriteDuplicates
from transforms.clustering.table_dedup import CopyTables, DedupTables, ListTables, NewestRows
from transforms.io.table import RetireFiles, list_table_files


class DedupOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        # Not required=True: Beam parses every PipelineOptions subclass for every pipeline in
        # the process, so a required flag here would break unrelated jobs; run() checks them.
        parser.add_argument("--input", action="append", default=None,
                            help="an ingest output directory (OUT); repeatable, required")
        job_runner.add_argument_once(parser, "--output", help="output directory (OUT3), required")
        job_runner.add_dedup_arguments(parser)


class _WriteJson(beam.DoFn):
    def __init__(self, path):
        self._path = path

    def process(self, document):
        with FileSystems.create(self._path, mime_type="application/json") as f:
            f.write(json.dumps(document, indent=2, sort_keys=False, default=str).encode("utf-8"))
        yield self._path


def _summary(stats, replaced, inputs, output):
    return dict({"job": "dedup", "inputs": inputs, "output": output,
                 "replaced_rows": replaced}, **stats)


def build(pipeline, opts):
    """The job's graph on `pipeline`; returns the Dedup outputs."""
    options = pipeline.options
    # why: a local run groups its per-row records through files (the local runner holds a
    # shuffle in memory); Dataflow's shuffle is on disk already. Dedup removes it when done.
    spill = tempfile.mkdtemp(prefix="dedup-spill-") if job_runner.is_local(options) else None
    files = pipeline | "ListTables" >> ListTables(opts.input)
    # why: one row per key (newest fetched_at wins), decided on 40-byte key records, not rows
    newest = files | "Newest" >> NewestRows(None if spill is None else os.path.join(spill, "newest"))
    # why: rows stream from the files; only clustered rows cross a shuffle
    result = {"files": files, "skip": newest["skip"]} | "Dedup" >> DedupTables(job_runner.dedup_transform(
        opts, one_process=job_runner.one_local_process(options), spill_dir=spill), rows=False)
    # why: the table is copied file by file in Arrow batches with the cluster columns set (Beam's
    # WriteToParquet takes a side input, so a local run buffers its whole input in memory)
    previous_files = list_table_files(opts.output)
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    written = files | "WriteImages" >> CopyTables(opts.output, run_id, newest["skip"], result["cluster_columns"])
    _ = (written | "WrittenPaths" >> beam.Map(lambda w: w["path"])
         | "RetirePrevious" >> RetireFiles(previous_files))
    result["clusters"] | "WriteDuplicates" >> WriteDuplicates(opts.output)
    replaced = newest["replaced"] | "CountReplaced" >> beam.CombineGlobally(sum)
    (result["stats"]
     | "Summary" >> beam.Map(_summary, replaced=beam.pvalue.AsSingleton(replaced),
                             inputs=list(opts.input), output=opts.output)
     | "WriteSummary" >> beam.ParDo(_WriteJson(FileSystems.join(opts.output, "summary.json"))))
    return result


def pipeline_options(argv):
    return job_runner.apply_local_defaults(PipelineOptions(argv), argv, worker_processes=True)


def run(argv=None):
    options = pipeline_options(argv if argv is not None else sys.argv[1:])
    opts = options.view_as(DedupOptions)
    if not opts.input or not opts.output:
        raise SystemExit("pipelines.dedup: --input OUT (repeatable) and --output OUT3 are required")
    pipeline = beam.Pipeline(options=options)
    build(pipeline, opts)
    result = pipeline.run()
    result.wait_until_finish()
    return result


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    run()

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
import datetime
import json
import os
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import job_runner, preflight
from transforms import schema
from transforms.clustering.clusters import WriteDuplicates
from transforms.clustering.dedup_settings import DedupSettings
from transforms.errors import BadInput
from transforms.io.sinks import join_path, read_json


# Columns every input row needs: the grouping key, and what the canonical choice reads.
REQUIRED_COLUMNS = ("key", "dataset", "url", "status")


class DedupOptions(PipelineOptions):
    """The dedup job's own options: inputs, output, and the dedup group (DedupSettings)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        # Not required=True: Beam parses every PipelineOptions subclass for every pipeline in
        # the process, so a required flag here would break unrelated jobs; run() checks them.
        inputs = parser.add_argument_group("inputs")
        inputs.add_argument("--input", action="append", default=None, metavar="OUT",
                            help="an ingest output directory (OUT); repeatable, required")
        output = parser.add_argument_group("output")
        job_runner.add_argument_once(output, "--output", metavar="OUT3", help="output directory (OUT3), required")
        DedupSettings.add_arguments(parser)


JOB = job_runner.Job(
    usage="python -m pipelines.dedup --input OUT [--input OUT2 ...] --output OUT3 [options]",
    name="dedup", options=DedupOptions, worker_processes=True,
    description="Re-cluster one or more ingest outputs together: OUT3/images/*.parquet (every input row, "
                "cluster columns set anew), OUT3/duplicates/, OUT3/summary.json.")


def _newest_key(indexed_row):
    index, row = indexed_row
    fetched = row.get("fetched_at")
    if isinstance(fetched, datetime.datetime) and fetched.tzinfo is None:
        fetched = fetched.replace(tzinfo=datetime.timezone.utc)
    return (fetched is not None, fetched or datetime.datetime.min.replace(
        tzinfo=datetime.timezone.utc), index)


class _Newest(beam.DoFn):
    """(key, [(input index, row)]) -> the newest row; counts the others as replaced."""
    REPLACED = "replaced"

    def process(self, element):
        _key, versions = element
        versions = list(versions)
        yield max(versions, key=_newest_key)[1]
        for _ in versions[1:]:
            beam.metrics.Metrics.counter("dedup", "replaced_rows").inc()
            yield beam.pvalue.TaggedOutput(self.REPLACED, 1)


class ReadImages(beam.PTransform):
    """Every OUT/images/*.parquet of each input, one row per key (newest fetched_at wins)."""

    def __init__(self, inputs):
        super().__init__()
        self._inputs = list(inputs)

    def expand(self, pbegin):
        tagged = []
        for i, root in enumerate(self._inputs):
            pattern = FileSystems.join(root, "images", "*.parquet")
            tagged.append(
                pbegin
                | f"Read{i}" >> beam.io.ReadFromParquet(pattern)
                | f"Tag{i}" >> beam.Map(lambda row, i=i: (row["key"], (i, row))))
        return (
            tagged
            | "AllInputs" >> beam.Flatten()
            | "GroupByKey" >> beam.GroupByKey()
            | "Newest" >> beam.ParDo(_Newest()).with_outputs(_Newest.REPLACED, main="rows")
        )


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
    read = pipeline | "ReadImages" >> ReadImages(opts.input)
    result = read.rows | "Dedup" >> DedupSettings.from_options(opts).transform()
    (result["rows"]
     | "ToRecord" >> beam.Map(schema.to_parquet_record)
     | "WriteImages" >> beam.io.WriteToParquet(
         FileSystems.join(opts.output, "images", "part"), schema.IMAGE_SCHEMA,
         file_name_suffix=".parquet", record_batch_size=64))
    result["clusters"] | "WriteDuplicates" >> WriteDuplicates(opts.output)
    replaced = read[_Newest.REPLACED] | "CountReplaced" >> beam.combiners.Count.Globally()
    (result["stats"]
     | "Summary" >> beam.Map(_summary, replaced=beam.pvalue.AsSingleton(replaced),
                             inputs=list(opts.input), output=opts.output)
     | "WriteSummary" >> beam.ParDo(_WriteJson(FileSystems.join(opts.output, "summary.json"))))
    return result


def pipeline_options(argv):
    """PipelineOptions with the dedup job's local defaults (one worker process per core)."""
    return job_runner.apply_local_defaults(PipelineOptions(argv), argv, worker_processes=True)


def check_inputs(opts):
    """Before the pipeline: every --input is an ingest output whose Parquet footers read and hold
    the REQUIRED_COLUMNS; OUT3 can be written and is none of the inputs."""
    if not opts.input or not opts.output:
        raise BadInput("--input OUT (repeatable) and --output OUT3 are required")
    for root in opts.input:
        preflight.check_table("--input", root, REQUIRED_COLUMNS)
    DedupSettings.from_options(opts)
    norm = lambda path: path.rstrip("/") if "://" in path else os.path.abspath(path)  # noqa: E731
    if norm(opts.output) in {norm(root) for root in opts.input}:
        raise BadInput(f"--output {opts.output} is one of the inputs: the dedup job never writes over an input")
    preflight.check_output_dir(opts.output)


def summary_lines(out):
    """Prints the closing summary of a local run from OUT3/summary.json."""
    summary = read_json(join_path(out, "summary.json"))
    print(f"\ndedup: {summary.get('rows', '?')} rows, {summary.get('clusters', '?')} clusters,"
          f" {summary.get('replaced_rows', 0)} rows replaced by a newer version -> {out}")
    print(f"  images:     {join_path(out, 'images')}/*.parquet")
    print(f"  duplicates: {join_path(out, 'duplicates')}/")
    print(f"  summary:    {join_path(out, 'summary.json')}")


def run(argv=None):
    """The dedup job: parses argv, checks the inputs, runs and waits; returns the PipelineResult."""
    options, opts = JOB.parse(argv)
    check_inputs(opts)
    return JOB.execute(options, lambda pipeline: build(pipeline, opts), opts.output, summary=summary_lines)


def main(argv=None) -> int:
    """`python -m pipelines.dedup`: the exit status (0 done, 2 bad input, 1 environment, 130 Ctrl-C)."""
    return JOB.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

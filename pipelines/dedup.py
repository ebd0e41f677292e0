"""Re-cluster one or more ingest outputs together (shared CONTRACT.md):

    python -m pipelines.dedup --input OUT [--input OUT2 ...] --output OUT3 [--max-distance K]

Reads OUT*/images/*.parquet, writes OUT3/images/*.parquet (every input row, with cluster_id,
is_canonical and is_placeholder set anew), OUT3/duplicates/clusters-*.jsonl and OUT3/summary.json.
Inputs ingested at different times may hold the same key: the row with the newest fetched_at
is kept (rows without fetched_at count as oldest; a tie goes to the input listed last) and
summary.json reports how many rows were replaced ("replaced_rows"). Paths may be local or gs://.
OUT3's images/ and duplicates/ are replaced two-phase, the books (rows in = rows out + replaced)
are checked, and OUT3 is leased while the job writes (docs/integrity.md).
Without --runner the job runs locally with one worker process per core
(pipelines.launch.job_runner.apply_local_defaults).
"""
import datetime
import json
import os
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import job_runner
from transforms.clustering.clusters import WriteDuplicates
from transforms.errors import BooksUnbalanced
from transforms.io.table import (FinalizeTable, RetireFiles, WriteTableShards, list_duplicates_files,
                                 list_table_files, remove_stale_leftovers)
from pipelines.launch import preflight
from transforms.clustering.dedup_settings import DedupSettings
from transforms.errors import BadInput
from transforms.io.sinks import join_path, read_json


# Columns every input row needs: the grouping key, and what the canonical choice reads.
REQUIRED_COLUMNS = ("key", "dataset", "url", "status")

__all__ = ["DedupOptions", "ReadImages", "build", "pipeline_options", "run"]


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
        job_runner.add_argument_once(output, "--force-unlock", action="store_true",
                                     help="take OUT3's lease even though another run seems to hold it (only when"
                                          " that run is known to be dead)")
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
    """(key, [(input index, row)]) -> the newest row; counts the others as replaced.

    Only versions from different inputs replace each other. An input holding one key twice (an
    output of an earlier ingest whose keys collided) keeps all its rows: they are distinct
    records; each such key is counted on REPEATED for a warning.
    """
    REPLACED = "replaced"
    REPEATED = "repeated"

    def process(self, element):
        _key, versions = element
        versions = list(versions)
        winner = max(versions, key=_newest_key)[0]
        indices = [index for index, _ in versions]
        if len(set(indices)) < len(indices):
            yield beam.pvalue.TaggedOutput(self.REPEATED, 1)
        for index, row in versions:
            if index == winner:
                yield row
            else:
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
        all_rows = tagged | "AllInputs" >> beam.Flatten()
        # Why: the books' "in" side, rows read per input.
        self.rows_in = (
            all_rows
            | "InputOf" >> beam.Map(lambda item: item[1][0])
            | "CountPerInput" >> beam.combiners.Count.PerElement()
        )
        return (
            all_rows
            | "GroupByKey" >> beam.GroupByKey()
            | "Newest" >> beam.ParDo(_Newest()).with_outputs(_Newest.REPLACED, _Newest.REPEATED, main="rows")
        )


class _WriteJson(beam.DoFn):
    def __init__(self, path):
        self._path = path

    def process(self, document):
        with FileSystems.create(self._path, mime_type="application/json") as f:
            f.write(json.dumps(document, indent=2, sort_keys=False, default=str).encode("utf-8"))
        yield self._path


def _summary(stats, replaced, inputs, output, books, repeated=0, warnings=()):
    warnings = list(warnings)
    if repeated:
        warnings.append(f"{repeated} keys occur more than once within one input (an ingest output whose keys"
                        " collided): all their rows are kept")
    return dict({"job": "dedup", "inputs": inputs, "output": output,
                 "replaced_rows": replaced, "books": books, "warnings": warnings}, **stats)


def dedup_books(rows_in, written, replaced, inputs):
    """Rows read per input against rows written + rows replaced by a newer version of their key.

    Args:
        rows_in: [(input index, rows read)].
        written: FinalizeTable's counts, [{"path", "rows", ...}].
        replaced: rows replaced.
        inputs: the --input values, in order.

    Returns:
        {"inputs": [{"path", "rows"}], "rows_in", "rows_out", "replaced", "balanced"}.
    """
    per_input = dict(rows_in)
    total_in = sum(per_input.values())
    rows_out = sum(part["rows"] for part in written)
    return {"inputs": [{"path": path, "rows": per_input.get(i, 0)} for i, path in enumerate(inputs)],
            "rows_in": total_in, "rows_out": rows_out, "replaced": replaced,
            "balanced": total_in == rows_out + replaced}


def check_dedup_books(_, books):
    """Raises BooksUnbalanced unless rows in = rows out + replaced."""
    if not books["balanced"]:
        raise BooksUnbalanced(f"the books do not balance: {books['rows_in']} rows read from"
                              f" {', '.join(i['path'] for i in books['inputs'])}, {books['rows_out']} rows written"
                              f" to {books.get('output', 'OUT3')} + {books['replaced']} replaced")
    return books


def phash_warnings(inputs):
    """One warning per input whose table has no phash column (near duplicates cannot be found)."""
    warnings = []
    for root in inputs:
        files = list_table_files(root)
        if not files:
            continue
        with FileSystems.open(files[0]) as handle:
            names = pq.ParquetFile(handle).schema_arrow.names
        if "phash" not in names:
            warnings.append(f"{root}: the table has no phash column: its rows are matched by URL and sha256"
                            " only, never as near duplicates")
    return warnings


def build(pipeline, opts, run_id=None, warnings=()):
    """The job's graph on `pipeline`; returns the Dedup outputs.

    OUT3's images/ and duplicates/ are replaced two-phase, like the ingest's: this run's parts are
    written under a run-unique name, and the files OUT3 held at launch are deleted only after.
    """
    out = opts.output
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    previous_files = list_table_files(out)
    previous_duplicates = list_duplicates_files(out)
    reader = ReadImages(opts.input)
    read = pipeline | "ReadImages" >> reader
    result = read.rows | "Dedup" >> DedupSettings.from_options(opts).transform()
    shards = result["rows"] | "WriteShards" >> WriteTableShards(out, run_id)
    # Why: the rows already carry their cluster columns; phase 2 only moves them into images/.
    table = shards | "WriteImages" >> FinalizeTable(out, run_id, None, with_counts=True)
    _ = table["files"] | "RetirePrevious" >> RetireFiles(previous_files)
    duplicates_files = result["clusters"] | "WriteDuplicates" >> WriteDuplicates(out)
    _ = duplicates_files | "RetireDuplicates" >> RetireFiles(previous_duplicates)
    replaced = read[_Newest.REPLACED] | "CountReplaced" >> beam.combiners.Count.Globally()
    repeated = read[_Newest.REPEATED] | "CountRepeated" >> beam.combiners.Count.Globally()
    books = (
        pipeline
        | "Once" >> beam.Create([None])
        | "Books" >> beam.Map(lambda _, rows_in, written, replaced: dedup_books(rows_in, written, replaced,
                                                                              list(opts.input)),
                              rows_in=beam.pvalue.AsList(reader.rows_in),
                              written=beam.pvalue.AsList(table["counts"]),
                              replaced=beam.pvalue.AsSingleton(replaced))
    )
    summary = (
        result["stats"]
        | "Summary" >> beam.Map(_summary, replaced=beam.pvalue.AsSingleton(replaced),
                                inputs=list(opts.input), output=out, books=beam.pvalue.AsSingleton(books),
                                repeated=beam.pvalue.AsSingleton(repeated), warnings=list(warnings))
        | "WriteSummary" >> beam.ParDo(_WriteJson(FileSystems.join(out, "summary.json"))))
    _ = summary | "CheckBooks" >> beam.Map(check_dedup_books, books=beam.pvalue.AsSingleton(books))
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
    # A remote runner's workers cannot open this machine's files: refused before anything is read.
    job_runner.require_shared_paths(options, {"--input": opts.input, "--output": opts.output})
    check_inputs(opts)
    warnings = phash_warnings(opts.input)
    for warning in warnings:
        print(f"dedup: warning: {warning}", file=sys.stderr)
    # Why: one writer per OUT3; stale leftovers of failed runs are removed under the lease.
    with job_runner.leased_output(options, opts.output, "dedup", opts.force_unlock, clear=remove_stale_leftovers):
        return JOB.execute(options, lambda pipeline: build(pipeline, opts, warnings=warnings), opts.output,
                           summary=summary_lines)


def main(argv=None) -> int:
    """`python -m pipelines.dedup`: the exit status (0 done, 2 bad input, 1 environment, 130 Ctrl-C)."""
    return JOB.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""Re-cluster one or more ingest outputs together (shared CONTRACT.md):

    python -m pipelines.dedup --input OUT [--input OUT2 ...] --output OUT3 [--max-distance K]
        [--drop-dead REFRESH_OUT]

Reads OUT*/images/*.parquet, writes OUT3/images/*.parquet (every input row, with cluster_id,
is_canonical and is_placeholder set anew), OUT3/duplicates/clusters-*.jsonl and OUT3/summary.json.
Inputs ingested at different times may hold the same key: the row with the newest fetched_at
is kept (rows without fetched_at count as oldest; a tie goes to the input listed last) and
summary.json reports how many rows were replaced ("replaced_rows"). Paths may be local or gs://.
OUT3's images/ and duplicates/ are replaced two-phase, the books (rows in = rows out + replaced)
are checked, and OUT3 is leased while the job writes (docs/integrity.md).
--drop-dead REFRESH_OUT leaves out the rows a refresh night calls dead (same key and URL), clusters
the rest anew and lists in OUT3/dead_blobs.txt the blobs only they referenced (docs/refresh.md).
Without --runner the job runs locally in this one process (pipelines.launch.job_runner
.apply_local_defaults): one process needs x0.4 the memory and x0.6 the CPU of two worker
processes (docs/performance.md); `--direct_running_mode=multi_processing --direct_num_workers=N`
asks for N worker processes.
"""

import contextlib
import os
import sys
import time
import uuid

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import job_runner, output_checks, preflight, scratch
from pipelines.report.dedup_lines import print_dedup_lines
from transforms.clustering.clusters import WriteDuplicates
from transforms.clustering.dead_rows import COUNT_KINDS, DROPPED, DropDead, files_after
from transforms.clustering.dedup_books import (
    DEAD_BLOBS,
    WriteDedupSummary,
    check_dedup_books,
    dedup_books,
    dedup_summary,
    publish_dead_blobs,
    write_dead_blobs,
)
from transforms.clustering.dedup_settings import DedupSettings
from transforms.clustering.key_versions import NewestRows
from transforms.clustering.table_dedup import CopyTables, DedupTables, ListTables
from transforms.errors import BadInput
from transforms.io.blob_homes import blob_homes
from transforms.io.checked_parquet import open_table_file
from transforms.io.file_matches import path_identity
from transforms.io.sinks import join_path
from transforms.io.table import RetireFiles, list_duplicates_files, list_table_files, remove_stale_leftovers
from transforms.io.table_record import checked_table, footer_rows, recorded_table
from transforms.liveness.night_reader import read_published_night

# Columns every input row needs: the grouping key, and what the canonical choice reads.
REQUIRED_COLUMNS = ("key", "dataset", "url", "status")

__all__ = ["DedupOptions", "build", "pipeline_options", "run", "spill_directory", "table_rows"]


class DedupOptions(PipelineOptions):
    """The dedup job's own options: inputs, output, and the dedup group (DedupSettings)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        # Not required=True: Beam parses every PipelineOptions subclass for every pipeline in
        # the process, so a required flag here would break unrelated jobs; run() checks them.
        inputs = parser.add_argument_group("inputs")
        job_runner.add_argument_once(  # export has an --input too (a single OUT): see add_argument_once
            inputs,
            "--input",
            action="append",
            default=None,
            metavar="OUT",
            help="an ingest output directory (OUT); repeatable, required",
        )
        output = parser.add_argument_group("output")
        job_runner.add_argument_once(output, "--output", metavar="OUT3", help="output directory (OUT3), required")
        job_runner.add_argument_once(
            output,
            "--force-unlock",
            action="store_true",
            help="take OUT3's lease even though another run seems to hold it (only when that run is known to be dead)",
        )
        job_runner.add_argument_once(
            inputs,
            "--drop-dead",
            default=None,
            metavar="REFRESH_OUT",
            help="a refresh night's output: leave out the rows it calls dead (same key and URL), re-cluster the"
            " rest, and list in OUT3/dead_blobs.txt the blobs only dropped rows referenced (docs/refresh.md)",
        )
        DedupSettings.add_arguments(parser)


JOB = job_runner.Job(
    usage="python -m pipelines.dedup --input OUT [--input OUT2 ...] --output OUT3 [options]",
    name="dedup",
    options=DedupOptions,
    description="Re-cluster one or more ingest outputs together: OUT3/images/*.parquet (every input row, "
    "cluster columns set anew), OUT3/duplicates/, OUT3/summary.json.",
)


def phash_warnings(inputs, files_per_input):
    """One warning per input whose table has no phash column (near duplicates cannot be found).

    Args:
        inputs: the --input values.
        files_per_input: the files check_inputs checked, per input (not listed again: another
            run may be rewriting an input, docs/integrity.md).
    Returns:
        The warning lines.
    """
    warnings = []
    for root, files in zip(inputs, files_per_input, strict=True):
        if not files:
            continue
        with open_table_file(files[0]) as table:  # why: a file removed meanwhile is one line (InputChanged)
            names = table.schema_arrow.names
        if "phash" not in names:
            warnings.append(
                f"{root}: the table has no phash column: its rows are matched by URL and sha256"
                " only, never as near duplicates"
            )
    return warnings


def table_rows(files_per_input):
    """The rows of the inputs' tables, from their Parquet footers (no data page is read).

    Args:
        files_per_input: the files check_inputs checked, per input.
    Returns:
        The sum of the files' row counts.
    """
    paths = [path for files in files_per_input for path in files]
    counts = footer_rows(paths)
    return sum(counts[path] for path in paths)


SPILL_PREFIX = "dedup-spill-"


@contextlib.contextmanager
def spill_directory(options):
    """A local run's directory for dedup's on-disk shuffle (TMPDIR/dedup-spill-<pid>-*, see
    scratch.scratch_directory: removed however the run ends, and what a killed run left is swept).
    Yields None for a remote runner (its shuffle is on disk already).

    Args:
        options: the job's PipelineOptions.
    Yields:
        The directory's path, or None.
    """
    if not job_runner.is_local(options):
        yield None
        return
    with scratch.scratch_directory(SPILL_PREFIX) as path:
        yield path


def build(
    pipeline, opts, run_id=None, warnings=(), spill=None, expected_rows=None, guard=None, night=None, tables=None
):
    """The job's graph on `pipeline`; returns the DedupTables outputs.

    Rows stream from the input files in passes (transforms.clustering.table_dedup): no full row
    crosses a shuffle. OUT3's images/ and duplicates/ are replaced two-phase, like the ingest's:
    this run's files are written under a run-unique name (each first as a temporary, renamed once
    whole), and the files OUT3 held at launch are deleted only after.
    spill: a local run's spill directory (spill_directory; its owner removes it), None remote.
    expected_rows: the rows to be read (table_rows), for the near search's shard count.
    guard: the lease's LeaseGuard (leased_output), confirmed before each publish step.
    night: with --drop-dead, the night_reader.PublishedNight whose dead rows are left out.
    tables: check_inputs' [(files, which table)] per input: those files are read; None: listed.
    """
    out = opts.output
    # why: unique per run, so no file of this run can carry a name of the table it replaces
    run_id = run_id or f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    previous_files = list_table_files(out)
    previous_record = recorded_table(out, strict=False)[1]
    previous_duplicates = list_duplicates_files(out)
    files = pipeline | "ListTables" >> ListTables(opts.input, tables and [paths for paths, _ in tables])
    # why: one row per key (newest fetched_at wins), decided on 48-byte key records, not rows;
    # a local run groups its per-row records through files (the local runner holds a shuffle in
    # memory), Dataflow's shuffle is on disk already
    newest = files | "Newest" >> NewestRows(opts.input, None if spill is None else os.path.join(spill, "newest"))
    skip = newest["skip"]
    # why: an ingest output's rows name its blobs where it was written (moved since; relative before)
    homes = blob_homes(opts.input, tables)
    if night is not None:
        dead_spill = None if spill is None else os.path.join(spill, "dead")
        dead = {"files": files, "skip": skip} | "DropDead" >> DropDead(night.status_files, dead_spill, homes)
        # why: a dead row is left out like a replaced one: every pass skips it, so clusters are
        # found anew among the rows kept and a cluster's canonical row is elected among them
        skip = (skip, dead["skip"]) | "AllSkips" >> beam.Flatten()
        files = files_after(dead["skip"], files, "DropDead")
    dedup = DedupSettings.from_options(opts).transform(
        one_process=job_runner.one_local_process(pipeline.options), spill_dir=spill, expected_rows=expected_rows
    )
    # why: rows stream from the files; only clustered rows cross a shuffle
    result = {"files": files, "skip": skip} | "Dedup" >> DedupTables(dedup, rows=False)
    # why: the table is copied file by file in Arrow batches with the cluster columns set (Beam's
    # WriteToParquet takes a side input, so a local run buffers its whole input in memory)
    written = files | "WriteImages" >> CopyTables(out, run_id, skip, result["cluster_columns"], guard, homes)
    written_paths = written | "WrittenPaths" >> beam.Map(lambda w: w["path"])
    duplicates_files = result["clusters"] | "WriteDuplicates" >> WriteDuplicates(out)
    replaced = newest["replaced"] | "CountReplaced" >> beam.CombineGlobally(sum)
    repeated = newest["repeated"] | "CountRepeated" >> beam.CombineGlobally(sum)
    dropped, rolled_back = {}, written_paths
    if night is not None:
        counts = beam.pvalue.AsDict(dead["counts"])
        dropped["dropped_dead"] = beam.pvalue.AsSingleton(
            pipeline | "Dead" >> beam.Create([None]) | "DroppedDead" >> beam.Map(lambda _, c: c.get(DROPPED, 0), counts)
        )
        blobs_aside = dead["dead_blobs"] | "WriteDeadBlobs" >> beam.Map(
            lambda uris: write_dead_blobs(out, run_id, uris)
        )
        # why: a run whose books fail removes its dead_blobs.txt aside with its table files
        rolled_back = (written_paths, blobs_aside | "AsidePath" >> beam.Map(lambda b: b["path"])) | beam.Flatten()
    books = (
        pipeline
        | "Once" >> beam.Create([None])
        | "Books"
        >> beam.Map(
            lambda _, rows_in, written, replaced, **d: dedup_books(
                rows_in, written, replaced, list(opts.input), tables=tables and [table for _, table in tables], **d
            ),
            rows_in=beam.pvalue.AsList(newest["rows_in"] | "RowsPerInput" >> beam.CombinePerKey(sum)),
            written=beam.pvalue.AsList(written),
            replaced=beam.pvalue.AsSingleton(replaced),
            **dropped,
        )
    )
    applied = {}
    if night is not None:
        applied["drop_dead"] = beam.pvalue.AsSingleton(
            blobs_aside
            | "DropDeadRecord"
            >> beam.Map(
                lambda blobs, counts: {
                    "night": {
                        "refresh_out": night.refresh_out,
                        "night": night.night,
                        "status_files": len(night.status_files),
                    },
                    "counts": {kind: counts.get(kind, 0) for kind in COUNT_KINDS},
                    "dead_blobs": blobs,
                },
                counts,
            )
        )
    summary = (
        result["stats"]
        | "Summary"
        >> beam.Map(
            dedup_summary,
            replaced=beam.pvalue.AsSingleton(replaced),
            inputs=list(opts.input),
            output=out,
            books=beam.pvalue.AsSingleton(books),
            repeated=beam.pvalue.AsSingleton(repeated),
            warnings=list(warnings),
            written=beam.pvalue.AsList(written),
            previous=previous_record,
            **applied,
        )
        | "WriteSummary"
        >> beam.ParDo(
            WriteDedupSummary(FileSystems.join(out, "summary.json"), previous_files, guard),
            written=beam.pvalue.AsList(rolled_back),
        )
    )
    checked = summary | "CheckBooks" >> beam.Map(
        check_dedup_books,
        books=beam.pvalue.AsSingleton(books),
        written=beam.pvalue.AsList(rolled_back),
        previous=previous_files,
        output=out,
    )
    stale = list(previous_files)
    if night is not None:
        _ = blobs_aside | "PublishDeadBlobs" >> beam.Map(publish_dead_blobs, out, beam.pvalue.AsList(checked))
    elif FileSystems.exists(join_path(out, DEAD_BLOBS)):
        stale.append(join_path(out, DEAD_BLOBS))  # why: it lists the dead blobs of a table this run replaces
    # why: the previous table and clusters go only once the books balance (docs/integrity.md)
    _ = written_paths | "RetirePrevious" >> RetireFiles(stale, after=checked, guard=guard)
    _ = duplicates_files | "RetireDuplicates" >> RetireFiles(previous_duplicates, after=checked, guard=guard)
    return result


def pipeline_options(argv):
    """PipelineOptions with the dedup job's local defaults (the FnApi runner, in this one process).

    Args:
        argv: the command line.
    Returns:
        The PipelineOptions.
    """
    return job_runner.apply_local_defaults(PipelineOptions(argv))


def check_inputs(opts):
    """Before the pipeline: every --input is an ingest output whose Parquet footers read and hold
    the REQUIRED_COLUMNS; OUT3 can be written and is none of the inputs. Returns [(the files to
    read, which table they are)] per input (table_record.checked_table)."""
    if not opts.input or not opts.output:
        raise BadInput("--input OUT (repeatable) and --output OUT3 are required")
    tables = []
    for root in opts.input:
        files = preflight.check_table("--input", root, REQUIRED_COLUMNS)
        # why: a file copied into OUT/images would double its rows in OUT3 (docs/integrity.md)
        tables.append(checked_table("--input", root, files))
    DedupSettings.from_options(opts)
    for root in opts.input:
        # why: an OUT3 inside an input (IN/images/x, the helper's `--output B12/images`) is a second
        # table under the input's folder, which a reader of the folder (pyarrow, pandas) reads too;
        # an input inside OUT3 is in the folder the job publishes into
        if preflight.is_inside(opts.output, root) or preflight.is_inside(root, opts.output):
            what = (
                "is one of the inputs"
                if path_identity(opts.output) == path_identity(root)
                else f"overlaps the input {root}"
            )
            raise BadInput(f"--output {opts.output} {what}: the dedup job never writes over or inside an input")
    # Why: one table read twice makes every row the newer version of itself, so every row would be
    # replaced and none written (an empty table over OUT3's). Symlinks resolved, as the ingest does.
    seen: dict[str, str] = {}
    for root in opts.input:
        identity = path_identity(root)
        if identity in seen:
            raise BadInput(f"--input {root} is given twice (also as {seen[identity]}): give each ingest output once")
        seen[identity] = root
    # why: OUT3's summary.json would replace the night's, whose "written" names its verdicts
    if opts.drop_dead and (
        preflight.is_inside(opts.output, opts.drop_dead) or preflight.is_inside(opts.drop_dead, opts.output)
    ):
        raise BadInput(f"--output {opts.output} overlaps --drop-dead {opts.drop_dead}: give OUT3 a folder of its own")
    output_checks.check_output_dir(opts.output)
    return tables


def run(argv=None):
    """The dedup job: parses argv, checks the inputs, runs and waits; returns the PipelineResult."""
    options, opts = JOB.parse(argv)
    # A remote runner's workers cannot open this machine's files: refused before anything is read.
    shared = {"--input": opts.input, "--output": opts.output, "--drop-dead": opts.drop_dead}
    job_runner.require_shared_paths(options, shared)
    tables = check_inputs(opts)
    # why before the lease: a REFRESH_OUT that cannot be trusted is refused before OUT3 is touched
    night = read_published_night("--drop-dead", opts.drop_dead) if opts.drop_dead else None
    files_per_input = [files for files, _ in tables]
    warnings = phash_warnings(opts.input, files_per_input)
    for warning in warnings:
        print(f"dedup: warning: {warning}", file=sys.stderr)
    expected_rows = None
    if job_runner.one_local_process(options):
        # why: the near search's shards are sized from the rows (memory flat in the row count)
        expected_rows = table_rows(files_per_input)
        # Arrow's default pool keeps the pages of freed buffers (see the ingest's run()); on
        # Dataflow the workers' own defaults stay.
        pa.set_memory_pool(pa.system_memory_pool())
    # Why: one writer per OUT3; stale leftovers of failed runs are removed under the lease.
    with (
        job_runner.leased_output(
            options, opts.output, "dedup", opts.force_unlock, clear=remove_stale_leftovers
        ) as guard,
        spill_directory(options) as spill,
    ):
        return JOB.execute(
            options,
            lambda pipeline: build(
                pipeline,
                opts,
                warnings=warnings,
                spill=spill,
                expected_rows=expected_rows,
                guard=guard,
                night=night,
                tables=tables,
            ),
            opts.output,
            summary=print_dedup_lines,
        )


def main(argv=None) -> int:
    """`python -m pipelines.dedup`: the exit status (0 done, 2 bad input, 1 environment, 130 Ctrl-C)."""
    return JOB.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

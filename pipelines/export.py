"""Export an ingest or dedup output as training-ready shards (shared CONTRACT.md, docs/export.md):

    python -m pipelines.export --input OUT --output EXP --format webdataset|hf-parquet [--resize N]
        [--resize-mode keep_ratio|center_crop|border|no] [--include canonical|all] [--shard-size ROWS]
        [--encode-format jpg|webp|png] [--encode-quality Q] [--upscale]
        [--split NAME=FRACTION,NAME=FRACTION... [--split-seed S]]

Writes EXP/00000.tar, ... (WebDataset) or EXP/00000.parquet, ... (Hugging Face Parquet), with
--split EXP/NAME/00000.tar, ... per split, and EXP/summary.json (rows read, exported, skipped by
reason, the shards). Shards from an earlier export into EXP (of any layout) are removed once this
run's are final. Paths may be local or gs://. Exit status:
0 done; 2 bad input or options (one line); 1 the books do not balance or the environment failed.
"""

import dataclasses
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from pipelines.launch import job_runner, output_checks, preflight
from pipelines.report.export_lines import load_hint, print_report, report
from transforms.clustering.clusters import DEFAULT_DATASET_PRIORITY
from transforms.errors import BadInput, InputChanged
from transforms.export import cluster_fallback, export_books, selection, splits
from transforms.export.hf_parquet_shards import HfParquetShardDoFn
from transforms.export.resize import ENCODE_FORMATS, RESIZE_MODES, ResizeConfig
from transforms.export.shard_writer import AssignShards, publish_shard
from transforms.export.webdataset_shards import WebDatasetShardDoFn
from transforms.fetch.client import DEFAULT_USER_AGENT
from transforms.io import table
from transforms.io.file_matches import path_identity
from transforms.io.sinks import join_path
from transforms.io.table import ReadImageTable, RemoveDirectory, RetireFiles, list_orphan_shards, temporary_dir
from transforms.io.table_record import checked_table

__all__ = ["ExportConfig", "ExportOptions", "build_pipeline", "export_config", "load_hint", "main", "report", "run"]

FORMATS = {"webdataset": WebDatasetShardDoFn, "hf-parquet": HfParquetShardDoFn}
DEFAULT_SHARD_SIZE = 10_000  # img2dataset's number_sample_per_shard
# why: a shard's records are sorted in memory and its pictures read, resized and written by one
# worker: --shard-size 10**12 made one shard of every row (12M rows: ~12 GB of records on one
# worker, nothing in parallel, one ~1 TB tar)
MAX_SHARD_SIZE = 100_000


class ExportOptions(PipelineOptions):
    """The export's own options (docs/export.md)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        # Not required=True: Beam parses every PipelineOptions subclass for every pipeline in the
        # process; export_config() checks them and says what is missing in one line.
        inputs = parser.add_argument_group("inputs")
        job_runner.add_argument_once(inputs, "--input", help="an ingest or dedup output (OUT), required")
        output = parser.add_argument_group("output", "where the shards and summary go, and their form")
        job_runner.add_argument_once(output, "--output", help="output directory (EXP), required")
        job_runner.add_argument_once(
            output,
            "--force-unlock",
            action="store_true",
            help="take EXP's lease even though another run seems to hold it (only when that run is known to be dead)",
        )
        parser = output
        parser.add_argument(
            "--format", choices=sorted(FORMATS), help="webdataset (EXP/*.tar) or hf-parquet (EXP/*.parquet), required"
        )
        parser.add_argument(
            "--resize",
            type=int,
            default=None,
            metavar="N",
            help="target size in pixels (see --resize-mode); absent: original bytes",
        )
        parser.add_argument(
            "--resize-mode",
            choices=RESIZE_MODES,
            default=None,
            help="keep_ratio (smaller side = N), center_crop (N x N), border (N x N padded) or"
            " no (original bytes); default keep_ratio with --resize, no without",
        )
        parser.add_argument(
            "--upscale",
            action="store_true",
            help="also enlarge images smaller than N (by default an image is never upscaled)",
        )
        parser.add_argument(
            "--include",
            choices=selection.INCLUDE_CHOICES,
            default="canonical",
            help="canonical: the canonical row of each duplicate cluster; all: every ok row"
            " (placeholders are never exported)",
        )
        parser.add_argument(
            "--shard-size",
            type=int,
            default=DEFAULT_SHARD_SIZE,
            metavar="ROWS",
            help=f"samples per shard, 1-{MAX_SHARD_SIZE} (the last shard holds the rest; default {DEFAULT_SHARD_SIZE})",
        )
        parser.add_argument(
            "--encode-format",
            choices=ENCODE_FORMATS,
            default="jpg",
            help="format of resized images (original bytes are kept with no resize)",
        )
        parser.add_argument(
            "--encode-quality",
            type=int,
            default=None,
            metavar="Q",
            help="1-100 for jpg and webp (default 95), compression level 0-9 for png (default 6)",
        )
        parser.add_argument(
            "--split",
            default=None,
            metavar="NAME=FRACTION,...",
            help="held-out splits, e.g. train=0.98,validation=0.02: EXP/NAME/ each; a duplicate cluster's"
            " members all fall in one split",
        )
        parser.add_argument(
            "--split-seed",
            type=int,
            default=None,
            metavar="S",
            help="with --split: seed of the split assignment (default 0); the same seed gives the same splits",
        )


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What one export does, checked (export_config)."""

    input: str
    output: str
    export_format: str
    include: str
    shard_size: int
    resize: ResizeConfig
    # the order dedup chose each cluster's canonical row by (OUT/summary.json), the fallbacks' order
    dataset_priority: tuple[str, ...] = DEFAULT_DATASET_PRIORITY
    # --split: ((name, fraction), ...); () writes one set of shards, EXP/00000.tar, ...
    splits: tuple[tuple[str, float], ...] = ()
    split_seed: int = 0
    # which table of --input is read (table_record.checked_table), for summary.json and the books
    input_table: dict = dataclasses.field(default_factory=dict)


def export_config(opts: ExportOptions) -> ExportConfig:
    """The checked configuration of the options.

    Args:
        opts: the parsed ExportOptions.

    Returns:
        ExportConfig.

    Raises:
        BadInput: a required option is missing or a value is out of range.
    """
    missing = [
        flag
        for flag, value in (
            ("--input OUT", opts.input),
            ("--output EXP", opts.output),
            ("--format webdataset|hf-parquet", opts.format),
        )
        if not value
    ]
    if missing:
        raise BadInput(f"{' and '.join(missing)} required")
    if opts.shard_size is None or not 1 <= opts.shard_size <= MAX_SHARD_SIZE:
        raise BadInput(
            f"--shard-size must be between 1 and {MAX_SHARD_SIZE}, got {opts.shard_size}: one worker sorts,"
            " reads and writes a whole shard, so a larger one holds its records in memory and runs alone"
        )
    output_checks.refuse_pattern_characters("--output", opts.output)
    _check_output_apart(opts.input, opts.output)
    mode = opts.resize_mode or ("keep_ratio" if opts.resize is not None else "no")
    try:
        resize = ResizeConfig(
            size=opts.resize,
            mode=mode,
            encode_format=opts.encode_format,
            encode_quality=opts.encode_quality,
            upscale=bool(opts.upscale),
        )
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    chosen = splits.parse_splits(opts.split) if opts.split is not None else ()
    # why: a seed alone asks for a split the run would not make (before: exit 0, no split)
    if opts.split_seed is not None and not chosen:
        raise BadInput(
            f"--split-seed {opts.split_seed} without --split: give the splits too"
            " (e.g. --split train=0.98,validation=0.02)"
        )
    return ExportConfig(
        opts.input,
        opts.output,
        opts.format,
        opts.include,
        opts.shard_size,
        resize,
        splits=chosen,
        split_seed=opts.split_seed or 0,
    )


def _check_output_apart(input_dir: str, output_dir: str) -> None:
    """EXP is neither OUT nor inside OUT/images. Why: EXP/summary.json would replace OUT's own, and
    hf-parquet shards in OUT/images would become rows of the table every later job reads."""
    out = path_identity(input_dir)
    if path_identity(output_dir) == out or preflight.is_inside(output_dir, join_path(out, "images")):
        raise BadInput(f"--output {output_dir} must not be the --input directory {input_dir} nor inside its images/")


JOB = job_runner.Job(
    usage="python -m pipelines.export --input OUT --output EXP --format webdataset|hf-parquet [options]",
    name="export",
    options=ExportOptions,
    description="An ingest or dedup output as training-ready shards: EXP/*.tar (WebDataset) or EXP/*.parquet "
    "(Hugging Face), resized and deduplicated, and EXP/summary.json.",
    interrupted="EXP keeps its previous export (no summary.json: it was publishing); rerun the same command",
)


def stale_temporaries(output):
    """EXP/_tmp-* of earlier runs that were killed (held no lease since): removed at the end."""
    try:
        return sorted({path.rsplit("/", 1)[0] for path in list_orphan_shards(output)})
    except Exception:  # noqa: BLE001 (no EXP yet)
        return []


class _Select(beam.DoFn):
    """Row -> its export record, or its skip reason on the "skipped" output, or (a row of a
    cluster, with --include canonical) (cluster_id, member) on the "clustered" output."""

    SKIPPED = "skipped"
    CLUSTERED = "clustered"

    def __init__(self, include, dataset_priority=DEFAULT_DATASET_PRIORITY):
        self._include = include
        self._priority = tuple(dataset_priority)

    def process(self, row):
        reason = selection.skip_reason(row, self._include)
        if cluster_fallback.groups_by_cluster(row, reason, self._include):
            yield beam.pvalue.TaggedOutput(self.CLUSTERED, cluster_fallback.cluster_member(row, self._priority))
        elif reason is None:
            yield selection.export_record(row)
        else:
            yield beam.pvalue.TaggedOutput(self.SKIPPED, reason)


def build_pipeline(pipeline, config, files, stale, started_at, run_id, stale_temporaries=(), guard=None):
    """The export graph on `pipeline`; returns the PCollection of summary.json's path. `guard`: the
    lease's LeaseGuard (leased_output), confirmed before each publish step."""
    tmp_dir = temporary_dir(config.output, run_id)
    writer = FORMATS[config.export_format](config.output, tmp_dir, config.resize, input_dir=config.input)
    # why: the whole table, one row per manifest row; columns an older table lacks get defaults
    rows = pipeline | "ReadTable" >> ReadImageTable(files)
    # why: every row gets a verdict (selected or a skip reason), so that the books can balance
    judged = rows | "Select" >> beam.ParDo(_Select(config.include, config.dataset_priority)).with_outputs(
        _Select.SKIPPED, _Select.CLUSTERED, main="selected"
    )
    selected, skip_reasons = judged.selected, judged[_Select.SKIPPED]
    if config.include == "canonical":
        # why: a cluster's members meet in one place, so that one can stand in for a canonical row
        # whose blob is unreadable (cluster_fallback); rows in no cluster do not cross this shuffle
        clusters = judged[_Select.CLUSTERED] | "Clusters" >> cluster_fallback.ClusterRecords()
        selected = (selected, clusters["records"]) | "WithClusters" >> beam.Flatten()
        skip_reasons = (
            skip_reasons,
            clusters[cluster_fallback.ClusterRecords.SKIPPED],
        ) | "AllSkipped" >> beam.Flatten()
    # why: rows read, counted apart from the selection, is the left side of the books
    rows_read = rows | "CountRead" >> beam.combiners.Count.Globally()
    skipped = skip_reasons | "CountSkipped" >> beam.combiners.Count.PerElement()
    # why: deterministic shards (same input, same shards and sample keys), exact sizes; with
    # --split, each split on its own, a cluster's members all in one split (no leak)
    assign = (
        splits.SplitShards(config.splits, config.split_seed, config.shard_size)
        if config.splits
        else AssignShards(config.shard_size)
    )
    written = (
        selected
        | "AssignShards" >> assign
        # why: blobs are read and resized where the shard is written: image bytes never cross a shuffle
        | "WriteShards" >> beam.ParDo(writer)
    )
    # why: no shard reaches its final name before every shard is written and the books balance,
    # so an interrupted or failed run leaves EXP as the earlier export left it (not a mix of two)
    summary = (
        pipeline
        | "BooksOnce" >> beam.Create([None])
        | "CheckBooks"
        >> beam.Map(
            export_books.check_books,
            config=config,
            started_at=started_at,
            rows_read=beam.pvalue.AsSingleton(rows_read),
            skipped_counts=beam.pvalue.AsList(skipped),
            shards=beam.pvalue.AsList(written),
            tmp_dir=tmp_dir,
        )
    )
    # why: a publish cut between two renames must not leave the earlier summary over a mix of shards
    withdrawn = summary | "WithdrawEarlierSummary" >> beam.Map(
        export_books.withdraw_summary, config=config, tmp_dir=tmp_dir, guard=guard
    )
    shards = written | "PublishShards" >> beam.Map(
        publish_shard, books=beam.pvalue.AsSingleton(withdrawn), guard=guard, tmp_dir=tmp_dir
    )
    # why: an earlier export's shards would otherwise mix with this one's
    _ = (
        shards
        | "ShardPaths" >> beam.Map(lambda record: record["path"])
        | "RetireStale" >> RetireFiles(stale, guard=guard)
    )
    # why: moved into place last, once every shard is published (check_books wrote it aside)
    summary_path = summary | "WriteSummary" >> beam.Map(
        export_books.write_summary,
        config=config,
        tmp_dir=tmp_dir,
        published=beam.pvalue.AsList(shards),
        guard=guard,
    )
    # why: attempts of failed bundles, and runs killed earlier, leave orphans in temporary directories
    # only; removed once the summary is out of this run's
    _ = summary_path | "DropTemporary" >> RemoveDirectory(tmp_dir, *stale_temporaries)
    return summary_path


def _settle_user_agent(options):
    """Beam's --user_agent (used only to download jars) and the fetch jobs' --user-agent share the
    dest `user_agent`. In a process that imported a fetch job (deploy.render_spec renders every job
    in one), the merged parser reports Beam's None as a non-default value and DataflowRunner refuses
    a None display value. Export fetches nothing: give it the project's User-Agent, as the fetch
    jobs do."""
    setup = options.view_as(SetupOptions)
    if setup.user_agent is None:
        setup.user_agent = DEFAULT_USER_AGENT


def run(argv=None):
    """The export job: parses argv, checks the inputs, runs and waits (unless --no_wait_until_finish);
    returns the PipelineResult. Raises JobFailure subclasses (main() turns them into one line)."""
    options, opts = JOB.parse(argv)
    _settle_user_agent(options)
    config = export_config(opts)
    # A remote runner's workers cannot open this machine's files: refused before anything runs.
    job_runner.require_shared_paths(options, {"--input": config.input, "--output": config.output})
    splits.check_split_folders(config.output, config.splits)
    files = selection.check_table_files(config.input)
    # why: a file copied into OUT/images would double its rows in the shards (and their keys)
    # why read around the check: the priority must be that of the table checked, not of a table
    # another run published into OUT meanwhile (docs/integrity.md)
    priority = cluster_fallback.recorded_dataset_priority(config.input)
    files, input_table = checked_table("--input", config.input, files)
    if cluster_fallback.recorded_dataset_priority(config.input) != priority:
        raise InputChanged(f"--input {config.input}: its summary.json changed while it was read; rerun once it is done")
    config = dataclasses.replace(config, dataset_priority=priority, input_table=input_table)
    started_at = time.time()
    # Why: one writer per EXP (docs/integrity.md), held until the summary is written; failed runs'
    # temporaries are cleared under it first (left to the end, a full disk's half shard failed reruns).
    lease = job_runner.leased_output(options, config.output, "export", opts.force_unlock, table.remove_stale_leftovers)
    with lease as guard:
        return JOB.execute(
            options,
            lambda pipeline: build_pipeline(
                pipeline,
                config,
                files,
                splits.earlier_shards(config.output),
                started_at,
                uuid.uuid4().hex[:12],
                stale_temporaries(config.output),
                guard,
            ),
            config.output,
            summary=print_report,
        )


def main(argv=None) -> int:
    """`python -m pipelines.export`: the exit status (0 done, 2 bad input, 1 environment or books, 130 Ctrl-C)."""
    return JOB.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())

"""What every job shares: one entry point (`Job`: options, local defaults, run and wait, metrics,
report, the printed summary, the exit status), the local runner default, the output lease, the
remote-path check and the closing status table. The terminal side (one-line logs, Ctrl-C) is
`pipelines/launch/console.py`.

A job module (pipelines/<job>.py) defines one PipelineOptions subclass, a `JOB = Job(...)`, a
`run(argv) -> PipelineResult` built on `JOB.parse` and `JOB.execute`, and
`main(argv) -> int` = `JOB.main(run, argv)`; `if __name__ == "__main__": sys.exit(main())`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import textwrap
from collections.abc import Callable, Iterator

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

from pipelines.launch import arguments, console, failures, output_checks
from pipelines.launch.beam_introspection_memo import memoised_beam_introspection
from pipelines.launch.cached_options import CachedViewOptions
from pipelines.report import run_resources
from transforms.errors import BadInput
from transforms.io.lease_guard import LeaseGuard, guarded

BEAM_OPTIONS_POINTER = (
    "Beam pipeline options (--runner, --project, --region, --temp_location, --direct_num_workers, ...)\n"
    "are accepted too; see https://beam.apache.org/documentation/runners/dataflow/ and\n"
    "https://beam.apache.org/releases/pydoc/current/apache_beam.options.pipeline_options.html"
)
DEBUG_ENV = "BEAM_IMAGES_DEBUG"


__all__ = [
    "Job",
    "add_argument_once",
    "apply_local_defaults",
    "builds_template_only",
    "format_status_table",
    "is_local",
    "is_shared_path",
    "job_done",
    "leased_output",
    "one_local_process",
    "require_shared_paths",
    "wait_for",
    "waits_for_job",
]


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


def apply_local_defaults(options):
    """With no --runner, run locally through the FnApi runner, in this one process.

    DirectRunner itself first tries to download the Prism runner whenever the graph looks
    Prism-compatible, which hangs offline; so the engine is named directly. One process is the
    fastest local setup measured (`make bench`): the fetch runs on an event-loop thread and the
    decode and hashes on a thread pool (Pillow and hashlib release the GIL), so every core works
    without worker processes to start and rows to copy between them; for the dedup job it also
    needs x0.4 the memory (docs/performance.md). Pass --direct_running_mode=multi_processing
    --direct_num_workers=N for separate worker processes.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "FnApiRunner"
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


def is_shared_path(path):
    """A path every worker of a remote runner can open: a URL of a filesystem other than file://
    (gs://, s3://, ...), not a path on the launching machine."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.lower() not in ("", "file")


def require_shared_paths(options, paths):
    """With a remote runner, refuses at submission any path the workers could not open.

    A Dataflow worker is another machine: a local manifest, side file or output folder would be
    read (or written) by the launcher at most, and the job would fail on its workers after they
    started, or write where nobody looks. Local runs accept anything.

    Args:
        options: the job's PipelineOptions (its runner decides).
        paths: {flag as the user spells it: a path, a list of paths, or None}.
    Raises:
        BadInput: one line naming the first flag with a local path.
    """
    if is_local(options):
        return
    runner = options.view_as(StandardOptions).runner
    for flag, values in paths.items():
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if value and not is_shared_path(value):
                raise BadInput(
                    f"{flag} must be gs:// for a remote runner ({runner}), got {value}: "
                    f"its workers cannot read this machine's files"
                )


def one_local_process(options):
    """A local run whose bundles all run in this one process: nothing to gain from spreading rows."""
    direct = options.view_as(DirectOptions)
    return is_local(options) and (
        direct.direct_running_mode != "multi_processing" or (direct.direct_num_workers or 1) <= 1
    )


def format_status_table(counts, statuses):
    """{dataset: {status: n}} -> a fixed-width table with totals, statuses in contract order."""
    present = [s for s in statuses if any(s in per for per in counts.values())]
    datasets = sorted(counts)
    width = max([len("dataset"), len("total")] + [len(d) for d in datasets])
    cols = [max(len(s), 5) for s in present]
    lines = [
        "  ".join(
            ["dataset".ljust(width)] + [s.rjust(c) for s, c in zip(present, cols, strict=True)] + ["total".rjust(6)]
        )
    ]
    grand = {s: 0 for s in present}
    for dataset in datasets:
        per = counts[dataset]
        for s in present:
            grand[s] += per.get(s, 0)
        lines.append(
            "  ".join(
                [dataset.ljust(width)]
                + [str(per.get(s, 0)).rjust(c) for s, c in zip(present, cols, strict=True)]
                + [str(sum(per.values())).rjust(6)]
            )
        )
    lines.append(
        "  ".join(
            ["total".ljust(width)]
            + [str(grand[s]).rjust(c) for s, c in zip(present, cols, strict=True)]
            + [str(sum(grand.values())).rjust(6)]
        )
    )
    return "\n".join(lines)


def builds_template_only(options: PipelineOptions) -> bool:
    """--template_location: the runner writes a template and runs nothing, so there is no OUT to
    lease or clean, and the inputs are only samples."""
    return bool(options.view_as(GoogleCloudOptions).template_location)


def waits_for_job(options: PipelineOptions) -> bool:
    """The driver stays until the job ends (not a template build, not --no_wait_until_finish): only
    then may it clear what failed runs left in OUT, since no job it launched earlier still writes."""
    return not builds_template_only(options) and not options.view_as(StandardOptions).no_wait_until_finish


@contextlib.contextmanager
def leased_output(
    options: PipelineOptions,
    out: str,
    job: str,
    force_unlock: bool = False,
    clear: Callable[[str], object] | None = None,
) -> Iterator[LeaseGuard]:
    """One writer per output directory (docs/integrity.md): holds OUT's lease while the job writes;
    yields the LeaseGuard its publish steps confirm the lease with (a no-op one without a lease).

    A template build takes no lease. `clear(out)` (what failed or interrupted runs left) runs under
    the lease, only when this driver waits for its job (a launcher that returns at once cannot know
    that no job it started still writes there). Ctrl-C and SIGTERM release the lease, but a run that
    ends with parts in OUT/images and no summary.json leaves it, as a killed run does; one that fails
    having lost its lease says so. Another job's OUT is refused (output_checks).

    Args:
        options: the job's pipeline options.
        out: the output directory, local or gs://.
        job: the job's name, recorded in the lease.
        force_unlock: take the lease although another run seems to hold it.
        clear: removes stale leftovers of earlier runs from `out`.
    """
    if builds_template_only(options):
        yield LeaseGuard()
        return
    from transforms.io.lease import output_lease, release_lease
    from transforms.io.table_record import unfinished_table

    def unfinished() -> bool:
        # Why: a run stopped between publishing its table's parts and writing summary.json (Ctrl-C,
        # a failure) left parts nothing records; released, its lease no longer told readers the
        # table is unfinished (they read part of it, exit 0). Left, like a killed run's, it does;
        # the next run takes it over (its holder is gone).
        return waits and unfinished_table(out)

    waits = waits_for_job(options)
    taken: list = []  # the Holder, known before the lease is created (output_lease's `taking`)

    def release_unless_unfinished() -> None:  # why: Ctrl-C/SIGTERM exit past the lease's release
        if taken and not unfinished():  # (on gs:// it refused reruns until it expired, 15 min)
            release_lease(out, taken[0])

    with (
        console.cleanup_on_interrupt(release_unless_unfinished),
        output_lease(out, job, force_unlock=force_unlock, keep=unfinished, taking=taken.append) as holder,
    ):
        output_checks.check_output_of_job(out, job)  # under the lease: no run of that other job writes it
        if clear is not None and waits:
            clear(out)
        # why: a launcher that does not wait has released the lease when its job publishes
        with guarded(out, holder.token if holder and waits else "") as guard:
            yield guard


# ---- the job entry point --------------------------------------------------------------------------


class _OptionParser(argparse.ArgumentParser):
    """The job's own options alone: --help, and a check of their values before Beam sees them
    (argparse's error() would print the usage and a second line; here it is one BadInput)."""

    def error(self, message: str):
        raise BadInput(message)


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The last value of `flag` on a command line (`--flag=V` or `--flag V`), without parsing it all."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
        elif arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
    return value


@dataclasses.dataclass(frozen=True)
class Job:
    """One job's entry point: the shared way to parse, run, report and exit.

    name: the job's name, first word of every line it prints on failure ("ingest: ...").
    options: the job's PipelineOptions subclass (its _add_argparse_args adds the option groups).
    description: the first line of --help.
    interrupted: what the Ctrl-C (SIGTERM) line says after "<name>: interrupted (stopped (SIGTERM)); ".
    usage: the first line of --help (the command with its required options).
    """

    name: str
    options: type[PipelineOptions]
    description: str
    interrupted: str = "rerun the same command to start again"
    usage: str | None = None

    def help_parser(self) -> argparse.ArgumentParser:
        """The job's own options, grouped as the docs group them, and a pointer to Beam's."""
        parser = _OptionParser(
            prog=f"python -m pipelines.{self.name}",
            description=textwrap.fill(self.description, 100),
            usage=self.usage,
            epilog=BEAM_OPTIONS_POINTER,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.options._add_argparse_args(parser)  # type: ignore[arg-type]  # pylint: disable=protected-access
        developer = parser.add_argument_group("developer")
        developer.add_argument(
            "--debug",
            action="store_true",
            help=f"on failure, show the full traceback instead of one line (or {DEBUG_ENV}=1)",
        )
        return parser

    def parse(self, argv: list[str] | None = None) -> tuple[PipelineOptions, PipelineOptions]:
        """argv -> (the pipeline options with local defaults applied, the job's own view).

        Args:
            argv: the command line without the program name (default sys.argv[1:]).
        Returns:
            (PipelineOptions, view_as(self.options)); raises BadInput for a malformed value or an
            argument that is neither the job's own option nor a Beam pipeline option.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        # Why: Beam only logs what it cannot parse, so a mistyped option ran with its default and
        # exit 0. Malformed values and unknown arguments are one line each (pipelines/launch/arguments.py).
        arguments.check_known(self.help_parser(), argv)
        options = PipelineOptions(argv)
        apply_local_defaults(options)
        return options, options.view_as(self.options)

    def execute(
        self,
        options: PipelineOptions,
        build: Callable[[beam.Pipeline], object],
        output: str | None = None,
        summary: Callable[[str], None] | None = None,
        html_report: bool = False,
    ) -> PipelineResult:
        """Builds the graph, runs it and waits (unless --no_wait_until_finish), merges the run's Beam
        metrics into OUTPUT/summary.json, writes OUTPUT/report.html and prints the summary.

        Args:
            options: from parse().
            build: adds the job's steps to the pipeline it is given.
            output: the job's output directory (metrics and report go there; None: neither).
            summary: prints the closing summary of a local run from `output`.
            html_report: write OUTPUT/report.html (pipelines.report) once the run is done.
        Returns:
            The PipelineResult (not finished when the launcher did not wait).
        """
        # Why here: the run's cost (OUT/summary.json "resources") counts from the graph's construction.
        started = run_resources.ResourceClock.now()
        with memoised_beam_introspection():  # Beam inspects each DoFn ~8 times a run (the module)
            pipeline = beam.Pipeline(options=options.view_as(CachedViewOptions))
            build(pipeline)
            try:
                result = wait_for(pipeline.run(), options)
            except Exception as exc:
                failures.mark_pipeline_failure(exc)
                raise
        if job_done(result) and output is not None:
            from pipelines.report import run_metrics  # pipelines.report imports matplotlib: only when used

            run_metrics.record_run_metrics(result, output)
            if is_local(options):  # a Dataflow driver's own CPU time says nothing of the job's
                run_resources.record_run_resources(started, output)
            if html_report:
                from pipelines.report.html_report import try_write_report

                try_write_report(output)
        if summary is not None and output is not None and is_local(options):
            summary(output)
        return result

    def main(self, run: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
        """The job's command: --help, then run(argv) with every failure mapped to one line on stderr
        ("<job>: <what>") and an exit status: 0 done, 2 bad input or usage, 1 environment or books, 130
        interrupted (Ctrl-C), 143 stopped (SIGTERM). --debug (or BEAM_IMAGES_DEBUG=1) re-raises with the traceback.

        Args:
            run: the job's run(argv).
            argv: the command line without the program name (default sys.argv[1:]).
        Returns:
            The exit status.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        argv = [arg for arg in argv if arg != "--debug"]
        if "-h" in argv or "--help" in argv:  # Beam's own parser would print an empty usage line
            self.help_parser().print_help()
            return 0
        console.quiet_local_logs()
        with (
            console.stop_on_interrupt(*console.stop_lines(self.name, self.interrupted)),
            contextlib.nullcontext() if debug else console.quiet_errors(),
        ):
            try:
                run(argv)
            except BaseException as exc:  # noqa: BLE001 (every failure ends as one line)
                if debug:
                    raise
                status, line = failures.describe(exc, where=_flag_value(argv, "--output"))
                if status == failures.INTERRUPTED:
                    line = f"interrupted; {self.interrupted}"
                print(f"{self.name}: {line}", file=sys.stderr, flush=True)
                return status
        return 0

"""What every job shares: the local runner default, log noise, and the closing status table."""
import logging
import os

from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.runner import PipelineState


def apply_local_defaults(options):
    """With no --runner, run locally on every core through the FnApi runner.

    Plain DirectRunner first tries to download the Prism runner, which hangs offline; naming the
    running mode keeps it on the FnApi path.
    """
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = "DirectRunner"
        direct = options.view_as(DirectOptions)
        direct.direct_running_mode = "multi_processing"
        direct.direct_num_workers = direct.direct_num_workers or os.cpu_count() or 2
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

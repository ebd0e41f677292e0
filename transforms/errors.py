"""The failures a job reports as one line instead of a traceback (shared CONTRACT.md, exit status).

Raise these anywhere below a job, in the driver or inside a DoFn; the job runner
(`pipelines/launch/job_runner.py`) turns them into one line on stderr and the exit status:

  * `BadInput` (exit 2): the user's mistake, such as a missing manifest, an input that is not an
    ingest output, a corrupt Parquet file or a missing column. The message names the file.
  * `EnvironmentFailure` (exit 1): the machine or the storage failed, such as a full disk,
    permission denied or unreachable storage. The message names the path.
  * `BooksUnbalanced` (exit 1): the job's own count of rows in and rows out disagrees.
  * `InputChanged` (exit 1): an input changed while the job read it (another job rewrote its
    table meanwhile); a rerun once that job is done reads it whole.
"""

__all__ = ["BadInput", "BooksUnbalanced", "EnvironmentFailure", "InputChanged", "JobFailure", "removed_while_read"]


class JobFailure(Exception):
    """A failure the job reports in one line; `exit_status` is what the process exits with."""

    exit_status = 1


class BadInput(JobFailure, ValueError):
    """Bad input or usage: exit 2."""

    exit_status = 2


class EnvironmentFailure(JobFailure):
    """The environment failed (disk full, permission, storage): exit 1."""

    exit_status = 1


class BooksUnbalanced(JobFailure):
    """Rows in != rows out, counted by the job itself: exit 1."""

    exit_status = 1


class InputChanged(JobFailure):
    """An input was changed by another job while this one read it: exit 1 (rerun once it is done)."""

    exit_status = 1


def removed_while_read(path: str) -> InputChanged:
    """The one line for a table file that vanished between the job's listing and its read.

    Args:
        path: the file, as the job listed it.
    Returns:
        The InputChanged to raise.
    """
    return InputChanged(
        f"{path} was removed while this job read it (another job is rewriting that table?); rerun once it is done"
    )

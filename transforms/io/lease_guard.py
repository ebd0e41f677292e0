"""A run's check, before each irreversible step of publishing, that it still holds OUT's lease.

A run whose lease was taken over (`--force-unlock` by an operator who thought it dead, a gs://
lease that expired while its renewals failed) used to write on and publish its table over the
new holder's, both runs exiting 0 (docs/integrity.md, "One writer per OUT"). Each publish step (a
rename into OUT, the summary.json switch, the deletion of the previous table's files) first reads
OUT/_LEASE (one small read) and goes on only if it still names this run (its token); else it
removes what it names of its own and raises EnvironmentFailure (exit 1, one line). A lease removed
by hand (`rm OUT/_LEASE`) is lost as well: nothing then keeps a second run out of OUT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import EnvironmentFailure
from transforms.io.lease import Holder, lease_path
from transforms.io.sinks import delete_tree, publish_file

__all__ = ["LeaseGuard", "guarded", "publish_held"]


@dataclasses.dataclass(frozen=True)
class LeaseGuard:
    """OUT and the token this run wrote in OUT/_LEASE; picklable, so Beam's workers check it too.

    token "": no lease to check (a template build, a launcher that does not wait for its job,
    a file system that is not leased).
    """

    out: str = ""
    token: str = ""

    def holder_now(self) -> Holder | None:
        """Who OUT/_LEASE names now; None when there is none."""
        path = lease_path(self.out)
        try:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                return Holder.from_json(handle.read())
        except Exception:  # noqa: BLE001 (FileNotFoundError locally, Beam's own error on gs://)
            if FileSystems.exists(path):
                raise  # why: storage that fails is the environment, not a lost lease
            return None

    def confirm(self, discard: Iterable[str] = ()) -> None:
        """Returns if this run still holds OUT's lease; else deletes `discard` (this run's own files
        and glob patterns of them, never another run's) and raises.

        Args:
            discard: paths or patterns (`*`) of files this run wrote, or its folders (ending in `/`),
                removed when the lease is lost.
        Raises:
            EnvironmentFailure: the lease names another run, or is gone.
        """
        if not self.token:
            return
        holder = self.holder_now()
        if holder is not None and holder.token == self.token:
            return
        _remove(discard)
        raise EnvironmentFailure(self.lost_line(holder))

    def explain_failure(self) -> None:
        """For a run that failed: raises the lost lease's line if the lease is lost, as the cause.

        Why: the new holder sweeps the run's temporaries (`OUT/_tmp-<run>/`) as a dead run's, and
        the run then failed on a file that vanished ("unexpected RuntimeError: FileNotFoundError").
        A check that fails too (storage unreachable) leaves the run's own failure as it is.
        """
        if not self.token:
            return
        try:
            holder = self.holder_now()
        except Exception:  # noqa: BLE001 (the run's own failure is the one to report)
            return
        if holder is None or holder.token != self.token:
            raise EnvironmentFailure(self.lost_line(holder))

    def lost_line(self, holder: Holder | None) -> str:
        if holder is None:
            return (
                f"{self.out} lost its lease while this run ran ({lease_path(self.out)} is gone: taken over by a"
                " run that has ended since, or removed by hand); this run's table is not published"
            )
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(holder.started_at))
        return (
            f"{self.out} was taken over by another run ({holder.job}, pid {holder.pid}, host {holder.host},"
            f" started {started}) while this one ran; this run's table is not published"
        )


def _remove(discard: Iterable[str]) -> None:
    """Deletes the files named (patterns expanded), best effort: the one line is what matters."""
    paths: list[str] = []
    for entry in discard:
        if entry.endswith("/"):
            with contextlib.suppress(Exception):
                delete_tree(entry.rstrip("/"))
        elif any(char in entry for char in "*?["):
            paths += [m.path for r in FileSystems.match([entry]) for m in r.metadata_list]
        else:
            paths.append(entry)
    for path in paths:
        try:
            if FileSystems.exists(path):
                FileSystems.delete([path])
        except Exception:  # noqa: BLE001 (best effort: the next run sweeps what is left)
            pass


@contextlib.contextmanager
def guarded(out: str, token: str) -> Iterator[LeaseGuard]:
    """Yields the LeaseGuard of the run holding `out` with `token` ("": none to check); a failure in
    the block, the lease lost meanwhile, becomes the lost lease's line (LeaseGuard.explain_failure).

    Args:
        out: the output directory, local or gs://.
        token: the token this run wrote in OUT/_LEASE.
    Returns:
        A context manager yielding the LeaseGuard.
    """
    guard = LeaseGuard(out, token)
    try:
        yield guard
    except Exception:
        guard.explain_failure()  # why: a run taken over failed on what the new holder swept
        raise


def publish_held(guard: LeaseGuard | None, temporary: str, final: str, discard: Iterable[str] = ()) -> str:
    """sinks.publish_file once `guard` confirms the lease; lost, `temporary` and `discard` go.

    Args:
        guard: this run's LeaseGuard (None: nothing to check).
        temporary: the file written aside.
        final: its name in OUT.
        discard: more of this run's files to remove if the lease is lost (see LeaseGuard.confirm).
    Returns:
        `final`.
    """
    if guard is not None:
        guard.confirm([temporary, *discard])
    return publish_file(temporary, final)

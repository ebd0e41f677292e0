"""One writer per output directory: a run holds a lease on OUT while it writes there.

Locally the lease is OUT/_LEASE, created with O_CREAT|O_EXCL (one creator wins, atomically) and
holding the holder's PID, host, machine (boot and PID namespace), job and start time. On gs://
the lease is the object OUT/_LEASE, created with a does-not-exist precondition
(if_generation_match=0) and an expiry time, which its holder renews every `ttl / 3` seconds from a
daemon thread.

A lease is stale, and the next run breaks it, when its holder is seen dead from here: same host,
same boot and PID namespace, PID gone (a run killed with kill -9), local and gs:// alike; locally
also a lease of the same host from another boot or an older version whose PID is gone. On gs://
a lease past its expiry is stale too (a holder elsewhere stopped renewing it). A holder in another
PID namespace of this boot (another container with the same host name) is never judged dead.

A second run refuses at once with BadInput (exit 2), naming the holder; `--force-unlock` removes
a lease that is known to be dead (say a run on another machine that crashed). docs/integrity.md.
"""

import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable

from transforms.errors import BadInput, EnvironmentFailure

__all__ = ["DEFAULT_TTL_SECONDS", "LEASE_NAME", "Holder", "lease_path", "output_lease", "release_lease", "seen_alive"]

LEASE_NAME = "_LEASE"
DEFAULT_TTL_SECONDS = 15 * 60  # gs:// only: renewed every 5 minutes while the run lives


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lease."""

    token: str
    pid: int
    host: str
    job: str
    started_at: float
    expires_at: float = 0.0  # gs:// leases only; 0: no expiry (local leases, judged by the PID)
    machine: str = ""  # "<boot id>/<PID namespace>" (_this_machine); "" in leases of older versions

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at))
        return f"{self.job} (pid {self.pid} on {self.host}, started {started})"

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Holder":
        try:
            fields = json.loads(data.decode("utf-8"))
            return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields})
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            return cls(token="?", pid=0, host="?", job="unreadable lease", started_at=0.0)


def lease_path(out: str) -> str:
    return f"{out.rstrip('/')}/{LEASE_NAME}"


def _this_machine() -> str:
    """`<boot id>/<PID namespace inode>`: where a PID means one process ("" off Linux).

    Why both: containers share the host's boot id but not its PIDs, and a host name can be the
    same in two containers; after a restart the boot id changes and every earlier PID is dead.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def _dead_from_here(current: Holder, holder: Holder, remote: bool) -> bool:
    """Whether `current` (a lease found) is a run that `holder` (this run) sees has ended.

    Only a PID of this very boot and PID namespace is judged on gs://: two machines (or
    containers) of one host name share a bucket easily, and each other's PIDs mean nothing. A
    local OUT keeps the earlier rule for leases of another boot or an older version (same host,
    PID gone), so a lease left before a restart is still broken.
    """
    if current.host != holder.host:
        return False  # another machine: its PIDs mean nothing here
    boot, _, namespace = current.machine.partition("/")
    this_boot, _, this_namespace = holder.machine.partition("/")
    if boot and boot == this_boot:
        return namespace == this_namespace and not _pid_alive(current.pid)
    return not remote and not _pid_alive(current.pid)


def seen_alive(holder: Holder, remote: bool) -> bool:
    """Whether the run a lease names may still run, as a run taking the lease would judge it.

    Args:
        holder: who the lease names.
        remote: the lease is on gs:// (it expires; PIDs are judged on this machine only).
    Returns:
        False for a lease a new writer would break as stale (expired, or its PID gone here).
    """
    if remote and holder.expires_at <= time.time():
        return False
    here = Holder(token="", pid=os.getpid(), host=socket.gethostname(), job="", started_at=0.0, machine=_this_machine())
    return not _dead_from_here(holder, here, remote)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _refusal(out: str, holder: Holder) -> BadInput:
    return BadInput(
        f"{out} is being written by {holder.describe()}; wait for it to end, or if no such run is"
        f" alive, run again with --force-unlock"
    )


class _LocalLease:
    def __init__(self, out: str):
        self.out = out
        self.path = lease_path(out)

    def acquire(self, holder: Holder, force: bool) -> None:
        try:
            os.makedirs(self.out, exist_ok=True)
        except FileExistsError:
            raise BadInput(f"--output {self.out} is a file, not a directory") from None
        except PermissionError as exc:
            raise EnvironmentFailure(f"cannot create {self.out}: {exc.strerror}") from None
        if not os.path.isdir(self.out):
            raise BadInput(f"--output {self.out} is a file, not a directory")
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                current = self._read()
                if current is None:
                    continue  # released meanwhile
                if not (force or _dead_from_here(current, holder, remote=False)):
                    raise _refusal(self.out, current) from None
                self._break(current)
                continue
            except PermissionError as exc:
                raise EnvironmentFailure(f"cannot write in {self.out}: {exc.strerror}") from None
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(holder.to_json())
            except BaseException:
                # Why: an empty lease left by a write that failed (a full disk) read as a live
                # "unreadable lease" and refused every rerun until --force-unlock.
                with contextlib.suppress(OSError):
                    os.remove(self.path)
                raise
            return
        raise EnvironmentFailure(f"cannot take the lease {self.path}: it keeps changing")

    def _read(self):
        try:
            with open(self.path, "rb") as handle:
                return Holder.from_json(handle.read())
        except FileNotFoundError:
            return None

    def _break(self, current: Holder) -> None:
        # Renamed aside rather than deleted: of two runs breaking the same stale lease, one
        # rename succeeds and the other finds nothing to rename; both then race on O_EXCL.
        aside = f"{self.path}.broken-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        broken = self._read_file(aside)
        if broken.token != current.token:  # a fresh lease was taken meanwhile: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.remove(aside)
            raise _refusal(self.out, broken)
        os.remove(aside)

    @staticmethod
    def _read_file(path):
        with open(path, "rb") as handle:
            return Holder.from_json(handle.read())

    def renew(self, holder: Holder) -> bool:
        return True  # local leases do not expire

    def release(self, holder: Holder) -> None:
        current = self._read()
        if current is not None and current.token == holder.token:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)


class _GcsLease:
    def __init__(self, out: str):
        # Not `from google.cloud import storage`: checking the whole tree, mypy reports that the namespace
        # package google.cloud has no attribute `storage` (google-cloud-storage ships no type information).
        import google.cloud.storage as storage  # noqa: PLC0415 (only for gs:// outputs)
        from google.api_core import exceptions  # noqa: PLC0415

        self.out = out
        self._exceptions = exceptions
        bucket, _, prefix = out[len("gs://") :].partition("/")
        name = f"{prefix.rstrip('/')}/{LEASE_NAME}" if prefix.strip("/") else LEASE_NAME
        self._blob_name = name
        self._bucket = storage.Client().bucket(bucket)
        self._generation = None

    def acquire(self, holder: Holder, force: bool) -> None:
        for _ in range(3):
            existing = self._bucket.get_blob(self._blob_name)
            if existing is not None:
                current = Holder.from_json(existing.download_as_bytes())
                # Why the PID check here too: a local run writing to gs:// and killed with
                # kill -9 blocked every rerun from the same machine until its lease expired.
                live = current.expires_at > time.time() and not _dead_from_here(current, holder, remote=True)
                if not force and live:
                    raise _refusal(self.out, current)
                try:  # expired (or forced): remove exactly that generation
                    existing.delete(if_generation_match=existing.generation)
                except (self._exceptions.PreconditionFailed, self._exceptions.NotFound):
                    continue
            blob = self._bucket.blob(self._blob_name)
            try:
                blob.upload_from_string(holder.to_json(), content_type="application/json", if_generation_match=0)
            except self._exceptions.PreconditionFailed:
                continue  # another run created it first: read who
            self._generation = blob.generation
            return
        existing = self._bucket.get_blob(self._blob_name)
        if existing is not None:
            raise _refusal(self.out, Holder.from_json(existing.download_as_bytes()))
        raise EnvironmentFailure(f"cannot take the lease {lease_path(self.out)}: it keeps changing")

    def renew(self, holder: Holder) -> bool:
        blob = self._bucket.blob(self._blob_name)
        try:
            blob.upload_from_string(
                holder.to_json(), content_type="application/json", if_generation_match=self._generation
            )
        except (self._exceptions.PreconditionFailed, self._exceptions.NotFound):
            return False  # broken by --force-unlock elsewhere
        self._generation = blob.generation
        return True

    def release(self, holder: Holder) -> None:
        existing = self._bucket.get_blob(self._blob_name)
        if existing is None or Holder.from_json(existing.download_as_bytes()).token != holder.token:
            return
        with contextlib.suppress(self._exceptions.PreconditionFailed, self._exceptions.NotFound):
            existing.delete(if_generation_match=existing.generation)


def release_lease(out: str, holder: Holder) -> None:
    """Removes `out`'s lease if `holder` still holds it, as output_lease does on the way out.

    For a process that ends past output_lease's `finally` (the stop signals' handler's os._exit).
    """
    lease = _GcsLease(out) if out.startswith("gs://") else _LocalLease(out)
    lease.release(holder)


@contextlib.contextmanager
def output_lease(
    out: str,
    job: str,
    force_unlock: bool = False,
    ttl_seconds: float = DEFAULT_TTL_SECONDS,
    keep: Callable[[], bool] | None = None,
    taking: Callable[[Holder], None] | None = None,
):
    """Holds the lease on `out` for the `with` block; released on the way out, failure included,
    unless `keep()` says true then, or fails (the lease is left as a killed run's is).

    Args:
        out: the output directory, local or gs:// (created if missing, locally).
        job: the job's name, shown to a run refused by this lease.
        force_unlock: take the lease even if another run seems to hold it.
        ttl_seconds: gs:// only: how long the lease lives without renewal.
        keep: asked on the way out whether the lease must stay on `out`.
        taking: told the Holder before the lease is created, so that a stop signal's handler can
            release it (release_lease checks the token: a no-op if it was not created).

    Returns:
        A context manager yielding the Holder.

    Raises:
        BadInput: another live run holds the lease, or `out` is a file.
        EnvironmentFailure: the lease cannot be written (permissions).
    """
    if "://" in out and not out.startswith("gs://"):
        yield None  # other file systems: no lease (documented)
        return
    now = time.time()
    remote = out.startswith("gs://")
    holder = Holder(
        token=uuid.uuid4().hex,
        pid=os.getpid(),
        host=socket.gethostname(),
        job=job,
        started_at=now,
        expires_at=now + ttl_seconds if remote else 0.0,
        machine=_this_machine(),
    )
    if taking is not None:
        taking(holder)
    try:
        lease = _GcsLease(out) if remote else _LocalLease(out)
        lease.acquire(holder, force_unlock)
    except (BadInput, EnvironmentFailure):
        raise
    except Exception as exc:  # storage unreachable, no credentials: one line, exit 1
        if remote and type(exc).__name__ == "NotFound":
            # why: GCS answers 404 to creating an object only in a bucket that does not exist: a typo
            # in --output's bucket is the user's mistake (it was exit 1, "cannot take the lease").
            bucket = out[len("gs://") :].split("/", 1)[0]
            raise BadInput(
                f"{out}: no bucket {bucket} (or none this account can see); check the bucket's name"
            ) from None
        raise EnvironmentFailure(f"cannot take the lease {lease_path(out)}: {type(exc).__name__}: {exc}") from None
    stop = threading.Event()
    renewer = None
    if remote:

        def renew():
            current = holder
            while not stop.wait(ttl_seconds / 3):
                current = dataclasses.replace(current, expires_at=time.time() + ttl_seconds)
                try:
                    if not lease.renew(current):
                        return
                except Exception as exc:  # noqa: BLE001 (storage unreachable: tried again)
                    # why: a failure ended this thread (a traceback on stderr) and the lease then
                    # expired under a live run: the next run took it over, two writers on OUT.
                    print(
                        f"{job}: warning: could not renew the lease {lease_path(out)}"
                        f" ({type(exc).__name__}: {exc}); trying again in {ttl_seconds / 3:g} s",
                        file=sys.stderr,
                        flush=True,
                    )

        renewer = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        renewer.start()
    try:
        yield holder
    finally:
        stop.set()
        if renewer is not None:
            renewer.join(timeout=5)
        if not _asked(keep):
            lease.release(holder)


def _asked(keep: Callable[[], bool] | None) -> bool:
    """keep(); False without one, True when it fails (the lease is then kept, as a killed run's is)."""
    try:
        return keep is not None and bool(keep())
    except Exception:  # noqa: BLE001 (storage unreachable)
        # why: released, a half-published first table was left unmarked whenever the release got
        # through where keep() had not (a flaky store): its readers read part of it, exit 0.
        return True

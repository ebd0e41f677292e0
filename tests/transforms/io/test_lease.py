"""Whose lease is stale: a holder seen dead from here is broken at once, on gs:// too; a holder
this process cannot see (another PID namespace) never is (transforms/io/lease.py)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import local_or_gs
from tests.paths import REPO
from transforms.io import lease as lease_module

# Takes the lease on argv[1] and holds it until killed: a run that a kill -9 ends mid-way.
_HOLD_THE_LEASE = (
    "import sys, time\n"
    "from deploy.offline import anonymous_credentials\n"
    "from transforms.io.lease import output_lease\n"
    "with anonymous_credentials(), output_lease(sys.argv[1], 'ingest'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(300)\n"
)


def _dead_pid() -> int:
    """A PID that surely ran on this machine and has ended."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


def _this_machine() -> tuple[str, int]:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
        return handle.read().strip(), os.stat("/proc/self/ns/pid").st_ino


def _leave_lease(out, pid, machine):
    """OUT/_LEASE as a run of `machine` ("" = an older version's lease) would have left it."""
    os.makedirs(out)
    holder = {"token": "t", "pid": pid, "host": socket.gethostname(), "job": "ingest", "started_at": time.time()}
    if machine:
        holder["machine"] = machine
    with open(os.path.join(out, lease_module.LEASE_NAME), "w", encoding="utf-8") as handle:
        json.dump(holder, handle)


def test_a_gs_lease_of_a_run_killed_on_this_machine_is_taken_at_once(gcs_emulator):
    # Before: the killed run's lease refused every rerun for 15 minutes (its expiry) unless
    # --force-unlock, although its PID was visibly gone on the same machine.
    gcs_emulator.bucket("killed-lease")
    out = "gs://killed-lease/out"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_LEASE, out],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(ValueError, match=f"being written by ingest \\(pid {holder.pid} on "):
            with lease_module.output_lease(out, "rerun"):
                pass  # alive: refused
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    blob = gcs_emulator.client().bucket("killed-lease").get_blob("out/_LEASE")
    assert json.loads(blob.download_as_bytes())["expires_at"] > time.time() + 60  # not expired
    with lease_module.output_lease(out, "rerun") as rerun:
        assert rerun.job == "rerun"


def test_a_lease_from_another_pid_namespace_is_never_judged_dead(tmp_path):
    # Two containers with one host name (docker --hostname) writing one volume: the other one's
    # PIDs are not visible here. Before: its live run's lease was broken as "PID gone".
    boot, namespace = _this_machine()
    out = str(tmp_path / "out")
    _leave_lease(out, _dead_pid(), f"{boot}/{namespace + 1}")
    with pytest.raises(ValueError, match="being written by ingest"):
        with lease_module.output_lease(out, "rerun"):
            pass
    with lease_module.output_lease(out, "rerun", force_unlock=True) as rerun:
        assert rerun.job == "rerun"


def test_a_gs_lease_of_another_machine_of_the_same_name_waits_for_its_expiry(gcs_emulator, tmp_path):
    # Two machines named alike share a bucket easily: the other one's PIDs mean nothing here, so
    # its lease is judged by its expiry alone. Locally such a lease (another boot: most likely this
    # machine before a restart) is still broken when its PID is gone here, as before.
    _boot, namespace = _this_machine()
    gcs_emulator.bucket("other-machine")
    lease = dict(token="t", pid=_dead_pid(), host=socket.gethostname(), job="ingest", started_at=time.time())
    lease.update(expires_at=time.time() + 600, machine=f"another-boot/{namespace}")
    blob = gcs_emulator.client().bucket("other-machine").blob("out/_LEASE")
    blob.upload_from_string(json.dumps(lease))
    with pytest.raises(ValueError, match="being written by ingest"):
        with lease_module.output_lease("gs://other-machine/out", "rerun"):
            pass
    out = str(tmp_path / "out")
    _leave_lease(out, lease["pid"], lease["machine"])
    with lease_module.output_lease(out, "rerun") as rerun:
        assert rerun.job == "rerun"


@pytest.mark.parametrize("machine", ["", "same"], ids=["older-version-lease", "this-machine"])
def test_a_lease_whose_pid_is_gone_here_is_stale_and_a_live_one_is_not(tmp_path, machine):
    boot, namespace = _this_machine()
    machine = machine and f"{boot}/{namespace}"
    dead, alive = str(tmp_path / "dead"), str(tmp_path / "alive")
    _leave_lease(dead, _dead_pid(), machine)
    _leave_lease(alive, os.getpid(), machine)
    with lease_module.output_lease(dead, "rerun") as rerun:
        assert rerun.job == "rerun"
    with pytest.raises(ValueError, match="being written by ingest"):
        with lease_module.output_lease(alive, "rerun"):
            pass


def test_a_gs_lease_renewal_that_fails_is_tried_again_and_the_lease_stays_held(gcs_emulator, monkeypatch, capsys):
    # Before: one renewal failing (GCS unreachable past the client's own retries) ended the
    # renewal thread with a traceback on stderr; the lease then expired while the run still wrote,
    # and a second run (a scheduler's retry) took it over: two writers on one OUT.
    from google.api_core.exceptions import ServiceUnavailable

    gcs_emulator.bucket("renew-fails")
    out = "gs://renew-fails/out"
    failed = []
    renew = lease_module._GcsLease.renew

    def fails_once(self, holder):
        if not failed:
            failed.append(holder)
            raise ServiceUnavailable("storage unreachable")
        return renew(self, holder)

    monkeypatch.setattr(lease_module._GcsLease, "renew", fails_once)
    with lease_module.output_lease(out, "ingest", ttl_seconds=1.5):
        time.sleep(3)  # renewed every 0.5 s; unrenewed, the lease expired at 1.5 s
        with pytest.raises(ValueError, match="being written by ingest"):
            with lease_module.output_lease(out, "second"):
                pass
    assert failed
    err = capsys.readouterr().err
    assert "Traceback" not in err and "could not renew the lease" in err, err
    assert gcs_emulator.client().bucket("renew-fails").get_blob("out/_LEASE") is None  # released


def test_a_lease_is_kept_when_whether_to_keep_it_cannot_be_told(tmp_path):
    # keep() asks whether OUT holds an unfinished table (parts, no summary.json); it fails when the
    # storage does, at the end of a run that failed because the storage did. Before, the lease was
    # then released: a flaky store answering the release left a half-published first table
    # unmarked, and export, dedup and refresh read its parts, exit 0. Now it is kept, as a killed
    # run's is (the next run here takes it over at once; readers of a finished table ignore it).
    out = str(tmp_path / "out")

    def cannot_tell() -> bool:
        raise OSError("storage unreachable")

    with lease_module.output_lease(out, "ingest", keep=cannot_tell):
        pass
    assert os.path.exists(os.path.join(out, lease_module.LEASE_NAME))
    with lease_module.output_lease(out, "rerun", force_unlock=True, keep=lambda: False):  # this process holds it
        pass
    assert not os.path.exists(os.path.join(out, lease_module.LEASE_NAME))


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_guard_goes_on_while_its_run_holds_the_lease_and_stops_it_once_taken_over(tmp_path, request, where):
    # A run taken over (--force-unlock elsewhere) used to publish its table over the new holder's;
    # LeaseGuard.confirm, before each publish step, now stops it and removes only its own files.
    from apache_beam.io.filesystems import FileSystems

    from transforms.errors import EnvironmentFailure
    from transforms.io.lease_guard import LeaseGuard, guarded

    out = local_or_gs(where, tmp_path, request, "guarded", "out")
    mine, theirs = f"{out}/images/part-a-1.parquet", f"{out}/images/part-b-1.parquet"
    for path in (mine, theirs):
        with FileSystems.create(path) as handle:
            handle.write(b"rows")
    with lease_module.output_lease(out, "ingest") as first:
        guard = LeaseGuard(out, first.token)
        guard.confirm([mine])  # held: nothing happens
        assert FileSystems.exists(mine)
        with lease_module.output_lease(out, "ingest", force_unlock=True) as second:
            with pytest.raises(EnvironmentFailure, match=f"{out} was taken over by another run") as lost:
                guard.confirm([f"{out}/images/part-a-*.parquet"])
            assert f"(ingest, pid {second.pid}, host {second.host}, started " in str(lost.value)
            assert "this run's table is not published" in str(lost.value)
            assert not FileSystems.exists(mine) and FileSystems.exists(theirs)
            # a run that fails once taken over (on what the new holder swept) says so
            with pytest.raises(EnvironmentFailure, match="was taken over"):
                with guarded(out, first.token):
                    raise FileNotFoundError("the run's temporaries vanished")
            with pytest.raises(FileNotFoundError):  # the holder's own failures stay as they are
                with guarded(out, second.token):
                    raise FileNotFoundError("something else")
    # no lease at all (removed by hand, or the new holder ended): lost as well
    with pytest.raises(EnvironmentFailure, match="lost its lease while this run ran"):
        LeaseGuard(out, first.token).confirm()
    LeaseGuard(out, "").confirm()  # no lease taken (a template build, a launcher that does not wait)


@pytest.mark.parametrize("where", ["local", "gs"])
def test_an_unfinished_table_is_told_without_beam(where, tmp_path, request):
    """table_record.unfinished_table, which the stop signals' handler asks before it releases the
    lease, reads through os or the storage client: parts in images/ and no summary.json."""
    from transforms.io import table_record  # noqa: PLC0415

    out = local_or_gs(where, tmp_path, request, "unfinished-table", "out")

    def put(name):
        if out.startswith("gs://"):
            bucket, _, prefix = out[len("gs://") :].partition("/")
            request.getfixturevalue("gcs_emulator").client().bucket(bucket).blob(f"{prefix}/{name}").upload_from_string(
                b"x"
            )
        else:
            os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
            with open(os.path.join(out, name), "wb") as handle:
                handle.write(b"x")

    put("images/deeper/part-9.parquet")  # not a part of the table: only images/*.parquet are
    assert not table_record.unfinished_table(out)
    put("images/part-0.parquet")
    assert table_record.unfinished_table(out)
    put("summary.json")
    assert not table_record.unfinished_table(out)

"""A full disk for real: OUT on a small tmpfs, mounted in a private mount namespace
(`unshare -rm`: nothing leaks out; root or user namespaces needed, else the tests skip).

A second run into an OUT that holds a good first run, with the disk filled while it writes: exit 1,
one line naming no space left and OUT, the first run's table and summary.json whole and readable
by the next job (the table record checks out), the lease released, and a rerun after freeing the
space gives every row. Also a disk full before the run starts: the lease is not left behind.

The disk is filled by FILLER, a process in the same namespace that waits for the second run's
first finished table file in OUT/images (the run is then ~0.7 s from writing summary.json; for the
refresh, its first Parquet file anywhere under REFRESH_OUT) and keeps appending to a file until
killed, taking each page the run frees.
"""

import datetime
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines import dedup, ingest, refresh
from pipelines.demo.sample_site import Reply, jpeg
from tests.conftest import local_options
from tests.paths import REPO
from transforms.io.table import list_table_files
from transforms.io.table_record import check_recorded_table

JPEG = {"Content-Type": "image/jpeg"}

FILLER = """
import errno, os, sys, time
out, filler = sys.argv[1], sys.argv[2]
watched = os.path.join(out, sys.argv[3] if len(sys.argv) > 3 else "images")
def parts():
    return {os.path.join(d, n) for d, _, names in os.walk(watched) for n in names if n.endswith(".parquet")}
before = parts()
while not parts() - before:
    time.sleep(0.002)
fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
while True:
    try:
        os.write(fd, bytes(4096))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        time.sleep(0.0005)
"""


def _namespaces_allowed():
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = pytest.mark.skipif(
    not _namespaces_allowed(), reason="`unshare -rm true` fails here: no private mount namespace to mount a tmpfs in"
)


def in_small_disk(tmp_path, size, steps):
    """Runs the shell `steps` in a private mount namespace with a tmpfs of `size` at $DISK;
    $RUN NAME MODULE ARGS... runs `python -m MODULE ARGS` from the repository, its exit status,
    stdout and stderr kept in tmp_path/NAME.{rc,out,err}; $PY is this Python."""
    disk = tmp_path / "disk"
    disk.mkdir()
    (tmp_path / "filler.py").write_text(FILLER)
    script = f"""
set -u
mount -t tmpfs -o size={size} tmpfs "$DISK" || exit 97
run() {{ name=$1; shift; timeout 120 "$PY" -m "$@" >"$T/$name.out" 2>"$T/$name.err"; echo $? >"$T/$name.rc"; }}
RUN=run
{steps}
"""
    env = dict(os.environ, PYTHONPATH=REPO, DISK=str(disk), T=str(tmp_path), PY=sys.executable)
    env.pop("BEAM_IMAGES_DEBUG", None)
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return disk


def outcome(tmp_path, name):
    """(exit status, stderr) of the step NAME."""
    return int((tmp_path / f"{name}.rc").read_text()), (tmp_path / f"{name}.err").read_text()


def assert_one_line(status, stderr, expected, *fragments):
    lines = stderr.strip().splitlines()
    assert status == expected, stderr[-3000:]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]


def keys_of(out):
    """The keys of OUT's table, after the check every reader makes (table_record)."""
    files = check_recorded_table("--input", str(out), list_table_files(str(out)))
    return sorted(ds.dataset(files, format="parquet").to_table().column("key").to_pylist())


def first_run_in_process(job, tmp_path, **options):
    """The first run, into T/first, in this process: the scripts copy it onto the small disk.

    Why not a `python -m` on the disk as the runs after it: a start-up of ~3 s for a starting point
    (the runs the tests are about, the second and the rerun, still are commands on the small disk).
    """
    assert job.main(local_options(output=str(tmp_path / "first"), **options)) == 0


def assert_the_first_run_kept(tmp_path, out, rows):
    """The first run (in T/first) made `rows` keys; the second, out of space, exited 1 with
    one line naming `out`, released the lease and left summary.json and the keys of T/after as
    the first run wrote them (what export, dedup and refresh would read). Returns those keys."""
    first = keys_of(tmp_path / "first")
    assert len(first) == rows
    assert_one_line(*outcome(tmp_path, "second"), 1, "no space left on device", out)
    after = tmp_path / "after"
    assert not (after / "_LEASE").exists()
    assert (after / "summary.json").read_bytes() == (tmp_path / "first" / "summary.json").read_bytes()
    assert keys_of(after) == first
    return first


def test_disk_full_in_a_second_ingest_keeps_the_first_table(web, tmp_path):
    lines = []
    for n in range(5):
        web.routes[f"/p{n}.jpg"] = Reply(200, jpeg(n, size=(160, 120)), JPEG)
        lines.append(f"photo {n}\t{web.url(f'/p{n}.jpg')}")
    (tmp_path / "cc3m.tsv").write_text("\n".join(lines) + "\n")
    net = {"allow-network": "127.0.0.1/32", "no-progress": True, "no-report": True}
    first_run_in_process(ingest, tmp_path, manifest=f"cc3m={tmp_path}/cc3m.tsv", **net)
    command = (
        f'pipelines.ingest --manifest cc3m={tmp_path}/cc3m.tsv --output "$DISK/out" '
        "--allow-network 127.0.0.1/32 --no-progress --no-report"
    )
    disk = in_small_disk(
        tmp_path,
        "4m",
        f"""
cp -a "$T/first" "$DISK/out"
"$PY" "$T/filler.py" "$DISK/out" "$DISK/filler" & FILLING=$!
$RUN second {command}
kill $FILLING; wait $FILLING
cp -a "$DISK/out" "$T/after"
rm "$DISK/filler"
$RUN rerun {command}
cp -a "$DISK/out" "$T/rerun"
""",
    )
    first = assert_the_first_run_kept(tmp_path, disk / "out", rows=5)
    after = tmp_path / "after"
    assert sorted(os.listdir(after / "images")) == sorted(os.listdir(tmp_path / "first" / "images"))

    status, stderr = outcome(tmp_path, "rerun")
    assert status == 0, stderr[-3000:]
    assert keys_of(tmp_path / "rerun") == first
    assert set(ds.dataset(str(tmp_path / "rerun" / "images")).to_table().column("status").to_pylist()) == {"ok"}


def test_disk_full_in_a_second_dedup_keeps_the_first_table(tmp_path):
    from tests.dedup_helpers import row  # noqa: PLC0415
    from transforms import schema  # noqa: PLC0415

    rows = [row(f"cc3m:{n}", phash=f"{n:016x}", dhash=f"{n:016x}") for n in range(40)]
    (tmp_path / "in" / "images").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA),
        tmp_path / "in" / "images" / "part-0.parquet",
    )
    first_run_in_process(dedup, tmp_path, input=f"{tmp_path}/in")
    command = f'pipelines.dedup --input {tmp_path}/in --output "$DISK/out3"'
    disk = in_small_disk(
        tmp_path,
        "2m",
        f"""
cp -a "$T/first" "$DISK/out3"
"$PY" "$T/filler.py" "$DISK/out3" "$DISK/filler" & FILLING=$!
$RUN second {command}
kill $FILLING; wait $FILLING
cp -a "$DISK/out3" "$T/after"
""",
    )
    assert_the_first_run_kept(tmp_path, disk / "out3", rows=40)  # the ingest's test above reruns too


def test_a_disk_full_before_the_run_leaves_no_lease(tmp_path):
    """The lease is the first thing a job writes: with no room for it, exit 1, and no empty _LEASE
    that refuses the rerun as an "unreadable lease" until --force-unlock."""
    take = (
        '"$PY" -c "import sys; from transforms.io.lease import output_lease\n'
        "with output_lease(sys.argv[1], 'ingest'): print('held')\" \"$DISK/out\""
    )
    in_small_disk(
        tmp_path,
        "64k",
        f"""
mkdir "$DISK/out"
dd if=/dev/zero of="$DISK/filler" bs=4k 2>/dev/null
{take} >"$T/full.out" 2>"$T/full.err"; echo $? >"$T/full.rc"
ls -A "$DISK/out" >"$T/full.ls"
rm "$DISK/filler"
{take} >"$T/freed.out" 2>"$T/freed.err"; echo $? >"$T/freed.rc"
""",
    )
    status, stderr = outcome(tmp_path, "full")
    assert status == 1 and "No space left on device" in stderr, stderr[-3000:]
    assert (tmp_path / "full.ls").read_text().split() == []
    status, stderr = outcome(tmp_path, "freed")
    assert status == 0 and (tmp_path / "freed.out").read_text().strip() == "held", stderr[-3000:]


def tree_digest(root):
    """{relative path: sha256} of every file under `root`."""
    import hashlib  # noqa: PLC0415

    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_disk_full_in_a_refresh_rerun_keeps_the_first_night(web, tmp_path):
    """The same night again into the same REFRESH_OUT and HISTORY, the disk filled while it writes:
    exit 1 in one line, REFRESH_OUT and the complete history night byte for byte as the first run
    left them, nothing aside left; the rerun after freeing space replaces both. Before, the rerun
    cleared REFRESH_OUT and the night first: the verdicts the data team deletes rows on were gone."""
    lines = []
    for n in range(5):
        web.routes[f"/p{n}.jpg"] = Reply(200, jpeg(n, size=(160, 120)), JPEG)
        lines.append(f"photo {n}\t{web.url(f'/p{n}.jpg')}")
    (tmp_path / "cc3m.tsv").write_text("\n".join(lines) + "\n")
    snapshot = tmp_path / "snapshot"
    ingest.run(
        local_options(manifest=f"cc3m={tmp_path}/cc3m.tsv", output=str(snapshot), **{"allow-network": "127.0.0.1/32"})
    )
    # why today (UTC, after the ingest): a night before the snapshot was fetched is refused
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    night = {"night": today, "allow-network": "127.0.0.1/32"}
    first_run_in_process(refresh, tmp_path, snapshot=str(snapshot), history=str(tmp_path / "first-history"), **night)
    command = (
        f'pipelines.refresh --snapshot {snapshot} --output "$DISK/refresh" --history "$DISK/history"'
        f" --night {today} --allow-network 127.0.0.1/32"
    )
    disk = in_small_disk(
        tmp_path,
        "4m",
        f"""
cp -a "$T/first" "$DISK/refresh"; cp -a "$T/first-history" "$DISK/history"
"$PY" "$T/filler.py" "$DISK/refresh" "$DISK/filler" . & FILLING=$!
$RUN second {command}
kill $FILLING; wait $FILLING
cp -a "$DISK/refresh" "$T/after"; cp -a "$DISK/history" "$T/after-history"
rm "$DISK/filler"
$RUN rerun {command}
cp -a "$DISK/refresh" "$T/rerun"; cp -a "$DISK/history" "$T/rerun-history"
""",
    )
    first = tree_digest(tmp_path / "first")
    assert "summary.json" in first and len(ds.dataset(str(tmp_path / "first" / "status")).to_table()) == 5
    assert_one_line(*outcome(tmp_path, "second"), 1, "no space left on device")
    assert tree_digest(tmp_path / "after") == first  # no _LEASE, no _tmp-* left either
    assert tree_digest(tmp_path / "after-history") == tree_digest(tmp_path / "first-history")

    status, stderr = outcome(tmp_path, "rerun")
    assert status == 0, stderr[-3000:]
    rerun = tmp_path / "rerun"
    assert len(ds.dataset(str(rerun / "status")).to_table()) == 5
    assert not set(tree_digest(rerun)) & (set(first) - {"summary.json"})  # the first night's files retired
    night = tmp_path / "rerun-history" / today
    marker = json.loads((night / "_COMPLETE").read_text())
    assert sorted(os.listdir(night)) == sorted(["_COMPLETE", *marker["files"]]) and marker["rows"] == 5
    assert disk.exists()


def test_an_export_that_filled_the_disk_leaves_room_for_its_rerun(tmp_path):
    """An export out of space fails (exit 1, one line) with its shard half written in
    EXP/_tmp-<run>/. Before, only a run that got to its end removed such folders: the rerun, with
    the other files freed, found the disk still taken by the failed run's shard and failed the same
    way, every time, until the folder was deleted by hand. Now each export clears them first,
    holding the lease: the rerun exports every row, and no temporary folder is left."""
    from tests.pipelines.test_export_mishaps import write_out  # noqa: PLC0415

    write_out(str(tmp_path / "out"), 200)  # one shard of 200 samples: 0.7 MB of tar, on a 1 MB disk
    command = f'pipelines.export --input {tmp_path}/out --output "$DISK/exp" --format webdataset --shard-size 200'
    disk = in_small_disk(
        tmp_path,
        "1m",
        f"""
dd if=/dev/zero of="$DISK/filler" bs=4k count=150 2>/dev/null
$RUN full {command}
ls -A "$DISK/exp" >"$T/full.ls"
rm "$DISK/filler"
$RUN rerun {command}
ls -A "$DISK/exp" >"$T/rerun.ls"
cp "$DISK/exp/summary.json" "$T/rerun.json" || true
""",
    )
    assert_one_line(*outcome(tmp_path, "full"), 1, "no space left on device", disk / "exp")
    assert [name for name in (tmp_path / "full.ls").read_text().split() if not name.startswith("_tmp-")] == []
    status, stderr = outcome(tmp_path, "rerun")
    assert status == 0, stderr[-3000:]
    assert (tmp_path / "rerun.ls").read_text().split() == ["00000.tar", "summary.json"]
    summary = json.loads((tmp_path / "rerun.json").read_text())
    assert summary["exported"] == 200 and summary["books_balanced"]

"""Ordinary mishaps replayed end to end against the loopback server (docs/integrity.md).

Each case asserts what the books promise: rows in = rows out, every key once, every blob's
sha256 = its name, and for a refusal the exit status and the one line that says why.
"""

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from pipelines import dedup, export, ingest, refresh
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests import job_process
from tests.conftest import local_options
from tests.paths import REPO
from tests.table_readers import assert_readers_refuse
from transforms import schema
from transforms.io import lease as lease_module
from transforms.io import table as table_module
from transforms.io.checksums import merge_hash_entries
from transforms.io.readers import CompressedInputError, open_stream

LOOPBACK = "127.0.0.1/32"


# --- helpers ----------------------------------------------------------------------------------


def _serve(web, count, prefix="p", **reply):
    """`count` distinct JPEGs at /<prefix><n>.jpg; returns their URLs."""
    urls = []
    for n in range(count):
        web.routes[f"/{prefix}{n}.jpg"] = Reply(
            200, jpeg(hash((prefix, n)) % 10_000), {"Content-Type": "image/jpeg"}, **reply
        )
        urls.append(web.url(f"/{prefix}{n}.jpg"))
    return urls


def _cc3m_lines(urls, tag="photo"):
    return "".join(f"{tag} {n}\t{url}\n" for n, url in enumerate(urls))


def _table(out):
    files = table_module.list_table_files(out)
    assert files, f"no table in {out}"
    return pq.read_table(files).to_pylist()


def _summary(out):
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def _assert_whole(out, expected_rows):
    """Rows out = rows in, every key once, intact blobs, balanced books, nothing stale."""
    rows = _table(out)
    keys = [r["key"] for r in rows]
    assert len(rows) == expected_rows
    assert len(set(keys)) == len(keys), "a key occurs twice"
    for row in rows:
        if row["blob"]:
            with open(row["blob"], "rb") as handle:
                assert hashlib.sha256(handle.read()).hexdigest() == os.path.basename(row["blob"]).split(".")[0]
    books = _summary(out)["books"]
    assert books["balanced"] and books["rows_in"] == books["rows_out"] == expected_rows
    leftovers = [name for name in os.listdir(out) if name.startswith("_tmp-") or name == lease_module.LEASE_NAME]
    assert not leftovers, leftovers
    return rows


def _ingest(out, manifests, *extra, **options):
    args = local_options(
        manifest=manifests,
        output=out,
        **{"allow-network": LOOPBACK, "no-progress": True, "no-report": True, "retries": 0, **options},
    )
    return ingest.main(args + list(extra))


@pytest.fixture(scope="module")
def forty_ingested(tmp_path_factory):
    """(a CC3M manifest of 40 pictures on a loopback web, OUT of their ingest): one ingest for the
    module, read-only (a test copies OUT before a job runs on it: `_copy_of`). The web stays up:
    the table names its URLs."""
    # why: three tests each ingested 40 URLs (or 3 and 3) only to start from a whole ingest output
    folder = tmp_path_factory.mktemp("forty")
    with SampleWebServer() as web:
        manifest = folder / "cc3m.tsv"
        manifest.write_text(_cc3m_lines(_serve(web, 40, prefix="forty")))
        out = str(folder / "out")
        assert _ingest(out, f"cc3m={manifest}") == 0
        yield manifest, out


def _copy_of(forty_ingested, where):
    """A copy of forty_ingested's OUT at `where` (a str); returns it."""
    shutil.copytree(forty_ingested[1], where)
    return where


def _one_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


# --- truncated and corrupt compressed manifests ------------------------------------------------


def _gzip_of(text):
    return gzip.compress(text.encode("utf-8"), mtime=0)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.55, 0.8, 0.97])
def test_a_cut_gzip_is_refused_at_every_cut_point(tmp_path, fraction):
    text = "".join(f"caption {n}\thttp://127.0.0.2/{n}.jpg\n" for n in range(1, 4001))
    data = _gzip_of(text)
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(data[: int(len(data) * fraction)])
    lines = []
    with pytest.raises(CompressedInputError) as failure:
        with open_stream(str(path)) as stream:
            lines.extend(stream)
    assert str(path) in str(failure.value) and "end-of-stream" in str(failure.value)
    # every line handed out before the failure is whole: no half-line ever becomes a record
    assert all(line.endswith(b"\n") for line in lines)
    assert [line.decode() for line in lines] == text.splitlines(keepends=True)[: len(lines)]


def test_cut_bz2_xz_zst_and_corrupt_gzip_are_refused(tmp_path):
    import bz2
    import lzma

    import zstandard

    text = "".join(f"caption {n}\thttp://127.0.0.2/{n}.jpg\n" for n in range(1, 3001)).encode()
    cases = {
        "cut.tsv.bz2": bz2.compress(text)[:-40],
        "cut.tsv.xz": lzma.compress(text)[:-40],
        "cut.tsv.zst": zstandard.ZstdCompressor().compress(text)[:-40],
    }
    whole = _gzip_of(text.decode())
    cases["corrupt.tsv.gz"] = whole[:200] + bytes(64) + whole[264:]
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CompressedInputError, match=name):
            with open_stream(str(tmp_path / name)) as stream:
                for _ in stream:
                    pass


@pytest.mark.parametrize("line_end", ["\n", "\r"], ids=["lf", "cr-only"])
def test_truncated_gzip_manifest_fails_the_ingest_in_one_line_then_is_kept_on_request(web, tmp_path, capsys, line_end):
    # cr-only: a reader that gathered a whole 1 MiB read before splitting kept none of the lines
    # before the cut (the read raised and dropped what it held): --accept-truncated gave 0 rows.
    urls = _serve(web, 30)
    data = _gzip_of(_cc3m_lines(urls).replace("\n", line_end))
    manifest = tmp_path / "cc3m.tsv.gz"
    manifest.write_bytes(data[: len(data) * 2 // 3])
    with gzip.open(manifest, "rt", newline="") as handle:  # what a reader can get out of it: whole lines only
        readable = []
        with pytest.raises(EOFError):
            for line in handle:
                readable.append(line)
    whole = sum(1 for line in readable if line.endswith(line_end))
    assert 0 < whole < 30

    out = str(tmp_path / "out")
    assert _ingest(out, f"cc3m={manifest}") == 2
    line = _one_line(capsys)
    assert str(manifest) in line and f"after line {whole}" in line and "--accept-truncated" in line
    assert not os.path.exists(os.path.join(out, "images")) and not os.path.exists(os.path.join(out, "_LEASE"))

    assert _ingest(out, f"cc3m={manifest}", "--accept-truncated") == 0
    rows = _assert_whole(out, whole)
    assert all(r["status"] == schema.OK for r in rows)  # no half-line became an invalid_url row
    truncated = _summary(out)["books"]["truncated"]
    assert [(t["path"], t["last_line"], t["rows"]) for t in truncated] == [(str(manifest), whole, whole)]


def test_a_cut_gzip_side_file_fails_the_ingest_in_one_line(web, tmp_path, capsys):
    urls = _serve(web, 6)
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_cc3m_lines(urls))
    # CC3M labels for every row, gzipped, then cut: the rows past the cut would lose their labels.
    label_lines = "".join(f"caption {n}\t{url}\t/m/0{n}\tthing\t0.9\n" for n, url in enumerate(urls))
    labels = tmp_path / "labels.tsv.gz"
    data = _gzip_of(label_lines * 50)
    labels.write_bytes(data[: len(data) // 2])
    out = str(tmp_path / "out")
    assert _ingest(out, f"cc3m={manifest}", **{"cc3m-labels": str(labels)}) == 2
    line = _one_line(capsys)
    assert str(labels) in line and "cut short" in line
    assert not os.path.exists(os.path.join(out, "images"))


# --- keys: same-named files, one file under two names -------------------------------------------


def test_same_named_files_in_three_folders_keep_every_row_and_a_file_named_twice_is_read_once(web, tmp_path):
    out = str(tmp_path / "out")
    manifests = []
    for year in ("2023", "2024", "2025"):
        folder = tmp_path / "in" / year
        folder.mkdir(parents=True)
        (folder / "part-0.tsv").write_text(_cc3m_lines(_serve(web, 4, prefix=f"y{year}-")))
        manifests.append(f"cc3m={folder / 'part-0.tsv'}")
    # the 2024 file again, through `..` and through a symlink: read once
    manifests.append(f"cc3m={tmp_path / 'in' / '2023' / '..' / '2024' / 'part-0.tsv'}")
    os.symlink(tmp_path / "in" / "2025" / "part-0.tsv", tmp_path / "alias.tsv")
    manifests.append(f"cc3m={tmp_path / 'alias.tsv'}")
    # leftovers of a failed run, removed by this one
    for stale in (
        "_tmp-19700101T000000/spill/k/0.npy",
        "_tmp-19700101T000000/blobs/ab.jpg.tmp-1-2",
        "duplicates/beam-temp-clusters-0/x",
        "images/part-x.parquet.tmp-0",
        "duplicates/clusters-00003-of-00009.jsonl",
    ):
        os.makedirs(os.path.dirname(os.path.join(out, stale)), exist_ok=True)
        open(os.path.join(out, stale), "w").close()

    assert _ingest(out, manifests) == 0
    rows = _assert_whole(out, 12)
    assert sorted({r["key"].rsplit(":", 1)[0] for r in rows}) == [
        "cc3m:2023/part-0.tsv",
        "cc3m:2024/part-0.tsv",
        "cc3m:2025/part-0.tsv",
    ]
    assert all(r["status"] == schema.OK for r in rows)
    files = _summary(out)["books"]["files"]
    assert [(f["records"], f["rows"]) for f in files] == [(4, 4)] * 3
    assert not os.path.exists(os.path.join(out, "images", "part-x.parquet.tmp-0"))
    assert os.listdir(os.path.join(out, "duplicates")) == ["clusters-00000-of-00001.jsonl"]


# --- one writer per OUT ------------------------------------------------------------------------


def _start_ingest(args, **env_vars):
    return job_process.start("-m", "pipelines.ingest", *args, env=env_vars)


def _wait_for(path, process, seconds=120):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_run_on_a_busy_out_refuses_at_once_and_the_first_writes_a_whole_table(web, tmp_path, capsys):
    urls = _serve(web, 12, delay=0.4)  # slow enough that the first run still holds OUT
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_cc3m_lines(urls))
    out = str(tmp_path / "out")
    first = _start_ingest(
        [
            "--manifest",
            f"cc3m={manifest}",
            "--output",
            out,
            "--allow-network",
            LOOPBACK,
            "--no-progress",
            "--no-report",
            "--concurrency",
            "2",
            "--per-host",
            "2",
        ]
    )
    try:
        _wait_for(os.path.join(out, lease_module.LEASE_NAME), first)
        started = time.monotonic()
        assert _ingest(out, f"cc3m={manifest}") == 2
        assert time.monotonic() - started < 5
        line = _one_line(capsys)
        assert f"{out} is being written by ingest (pid {first.pid} on " in line and "--force-unlock" in line
        assert first.wait(timeout=120) == 0, first.communicate()
    finally:
        if first.poll() is None:
            first.kill()
    _assert_whole(out, 12)


def test_kill_9_leaves_a_stale_lease_that_the_next_resume_breaks(web, tmp_path):
    urls = _serve(web, 10)
    web.routes["/flaky.jpg"] = [Reply(503), Reply(200, jpeg(77), {"Content-Type": "image/jpeg"}, delay=30)]
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_cc3m_lines(urls + [web.url("/flaky.jpg")]))
    out = str(tmp_path / "out")
    assert _ingest(out, f"cc3m={manifest}") == 0  # 10 ok, the flaky one failed

    resumed = _start_ingest(
        [
            "--manifest",
            f"cc3m={manifest}",
            "--output",
            out,
            "--resume",
            "--allow-network",
            LOOPBACK,
            "--no-progress",
            "--no-report",
            "--timeout",
            "60",
        ]
    )
    try:
        deadline = time.monotonic() + 90
        while web.hits.get("/flaky.jpg", 0) < 2:  # the resume is fetching the flaky row again
            assert resumed.poll() is None, resumed.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(resumed.pid, signal.SIGKILL)
        resumed.wait()
    with open(os.path.join(out, lease_module.LEASE_NAME), encoding="utf-8") as handle:
        assert json.load(handle)["pid"] == resumed.pid  # left behind by the killed run

    # a kill -9 while summary.json was being written aside (sinks.write_json) leaves its temporary
    aside = os.path.join(out, "summary.json.tmp-0123abcd")
    with open(aside, "w", encoding="utf-8") as handle:
        handle.write('{"job": ')
    web.routes["/flaky.jpg"] = Reply(200, jpeg(77), {"Content-Type": "image/jpeg"})
    assert _ingest(out, f"cc3m={manifest}", "--resume") == 0
    assert not os.path.exists(aside)
    rows = _assert_whole(out, 11)
    assert all(r["status"] == schema.OK for r in rows)


def _first_run_of_forty(web, tmp_path):
    """A 40-line CC3M manifest served on loopback: (manifest, OUT, the ingest's arguments)."""
    urls = _serve(web, 40)
    (tmp_path / "in").mkdir()
    manifest = tmp_path / "in" / "cc3m.tsv"
    manifest.write_text(_cc3m_lines(urls))
    out = str(tmp_path / "out")
    return (
        manifest,
        out,
        ["--manifest", f"cc3m={manifest}", "--output", out, "--allow-network", LOOPBACK, "--no-progress"],
    )


def test_a_first_run_killed_while_publishing_its_table_is_refused_by_every_reader(web, tmp_path, capsys):
    """kill -9 of a first ingest once its first part is in images/ and before summary.json: before,
    export, dedup and refresh read the parts found there (with two workers, one of two: half the
    rows) and exited 0. OUT has no summary.json to check them against; its _LEASE says a run was
    writing it. Now every reader refuses in one line; the same command run again completes."""
    manifest, out, args = _first_run_of_forty(web, tmp_path)
    running = _start_ingest([*args, "--no-report"])
    try:
        deadline = time.monotonic() + 120
        while not table_module.list_table_files(out):  # images/*.parquet: published parts, not *.tmp-*
            assert running.poll() is None, running.communicate()
            assert time.monotonic() < deadline, "no part was published"
            time.sleep(0.005)
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.communicate()
    # the moment aimed at: a part published, the summary that records the table not yet written
    assert table_module.list_table_files(out) and not os.path.exists(os.path.join(out, "summary.json"))
    assert_readers_refuse(out, tmp_path, capsys, "no summary.json")

    assert _ingest(out, f"cc3m={manifest}") == 0
    _assert_whole(out, 40)


def test_a_first_run_interrupted_while_publishing_its_table_is_refused_by_every_reader(web, tmp_path, capsys):
    """Ctrl-C of a first ingest once its first part is in images/ and before summary.json: the moment
    of the kill -9 above, but Ctrl-C released OUT's lease on its way out, so nothing marked the table
    unfinished, and export, dedup and refresh read the parts found with exit 0 (25,000 rows in two
    parts of 20,000 and 5,000: 5,000 rows lost downstream). Now the lease stays on such an OUT;
    the same command run again takes it over and completes."""
    manifest, out, args = _first_run_of_forty(web, tmp_path)
    # the kill sweep's pause after each published rename: the Ctrl-C lands before summary.json
    pause = os.path.join(REPO, "scripts", "kill_sweep_pause")
    running = _start_ingest([*args, "--no-report"], PYTHONPATH=f"{pause}:{REPO}", KILL_SWEEP_PAUSE="5")
    try:
        deadline = time.monotonic() + 120
        while not table_module.list_table_files(out):
            assert running.poll() is None, running.communicate()
            assert time.monotonic() < deadline, "no part was published"
            time.sleep(0.005)
        running.send_signal(signal.SIGINT)
        _, stderr = running.communicate(timeout=30)
    finally:
        if running.poll() is None:
            os.killpg(running.pid, signal.SIGKILL)
            running.wait()
    assert running.returncode == 130, stderr
    assert table_module.list_table_files(out) and not os.path.exists(os.path.join(out, "summary.json"))
    assert_readers_refuse(out, tmp_path, capsys, "no summary.json")

    assert _ingest(out, f"cc3m={manifest}") == 0
    _assert_whole(out, 40)


def _interrupt_when_fetching(web, process, path):
    """SIGINT once `process` has asked for `path`; returns its stderr lines."""
    try:
        deadline = time.monotonic() + 120
        while web.hits.get(path, 0) < 1:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, f"{path} was never fetched"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr
    assert elapsed < 2.5, f"took {elapsed:.1f}s to stop"
    return stderr.strip().splitlines()


def test_a_cleanup_on_ctrl_c_that_hangs_does_not_hold_the_exit():
    script = (
        "import os, signal, time\n"
        "from pipelines.launch import console\n"
        "with console.stop_on_interrupt('job: interrupted'):\n"
        "    with console.cleanup_on_interrupt(lambda: time.sleep(60)):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(60)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (130, "job: interrupted\n")
    assert time.monotonic() - started < 10  # the cleanup's 1.5 s and Python's start, not 60 s


def test_ctrl_c_on_a_first_run_advises_a_command_that_works(web, tmp_path, capsys):
    # Before: "rerun with --resume to continue", and that --resume was refused (no table to resume).
    urls = _serve(web, 3)
    web.routes["/slow.jpg"] = Reply(200, jpeg(78), {"Content-Type": "image/jpeg"}, delay=60)
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_cc3m_lines(urls + [web.url("/slow.jpg")]))
    out = str(tmp_path / "out")
    command = ["--manifest", f"cc3m={manifest}", "--output", out, "--allow-network", LOOPBACK, "--no-progress"]
    (line,) = _interrupt_when_fetching(web, _start_ingest([*command, "--no-report", "--timeout", "90"]), "/slow.jpg")
    assert line.startswith("ingest: interrupted") and "--resume" not in line and "the same command" in line
    # --resume, after a Ctrl-C or a kill -9 of a first run, says which command works
    assert _ingest(out, f"cc3m={manifest}", "--resume") == 2
    assert "no table to resume" in (refused := _one_line(capsys)) and "without --resume" in refused
    web.routes["/slow.jpg"] = Reply(200, jpeg(78), {"Content-Type": "image/jpeg"})
    assert _ingest(out, f"cc3m={manifest}") == 0  # the same command
    _assert_whole(out, 4)


# what `python -m pipelines.ingest` does, with the emulator's anonymous credentials (an in-process
# patch that a subprocess needs too: else google.auth looks for a metadata server for ~25 s)
_INGEST_WITH_EMULATOR = (
    "import sys\n"
    "from deploy.offline import anonymous_credentials\n"
    "from pipelines import ingest\n"
    "with anonymous_credentials():\n"
    "    sys.exit(ingest.main(sys.argv[1:]))\n"
)


def test_ctrl_c_releases_the_lease_of_a_gs_output(web, gcs_emulator, tmp_path):
    # Before: the Ctrl-C handler exited at once and left gs://.../_LEASE, which refused every
    # rerun for up to 15 minutes (no PID to check on gs://) unless --force-unlock.
    gcs_emulator.bucket("ctrl-c-lease")
    out = "gs://ctrl-c-lease/out"
    urls = _serve(web, 2)
    web.routes["/slow.jpg"] = Reply(200, jpeg(79), {"Content-Type": "image/jpeg"}, delay=60)
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_cc3m_lines(urls + [web.url("/slow.jpg")]))
    command = ["--manifest", f"cc3m={manifest}", "--output", out, "--allow-network", LOOPBACK, "--no-progress"]
    process = job_process.start("-c", _INGEST_WITH_EMULATOR, *command, "--no-report", "--timeout", "90")
    bucket = gcs_emulator.client().bucket("ctrl-c-lease")
    started = time.monotonic()
    (line,) = _interrupt_when_fetching(web, process, "/slow.jpg")
    assert line.startswith("ingest: interrupted")
    assert bucket.get_blob("out/_LEASE") is None, "the lease was left behind"
    web.routes["/slow.jpg"] = Reply(200, jpeg(79), {"Content-Type": "image/jpeg"})
    assert _ingest(out, f"cc3m={manifest}") == 0  # not refused: nobody holds OUT
    assert time.monotonic() - started < 300


def test_a_live_lease_is_taken_only_with_force_unlock(tmp_path):
    out = str(tmp_path / "out")
    with lease_module.output_lease(out, "first"):
        with pytest.raises(ValueError, match="being written by first"):
            with lease_module.output_lease(out, "second"):
                pass
        with lease_module.output_lease(out, "second", force_unlock=True) as holder:
            assert holder.job == "second"
    assert not os.path.exists(os.path.join(out, lease_module.LEASE_NAME))


def test_gcs_lease_refuses_a_live_holder_and_is_released(gcs_emulator):
    # The emulator ignores if_generation_match, so only the read-first refusal and the release
    # are tested here; the precondition itself is GCS's (docs/integrity.md).
    gcs_emulator.bucket("lease-test")
    out = "gs://lease-test/out"
    with lease_module.output_lease(out, "first"):
        blob = gcs_emulator.client().bucket("lease-test").get_blob("out/_LEASE")
        assert json.loads(blob.download_as_bytes())["job"] == "first"
        with pytest.raises(ValueError, match="being written by first"):
            with lease_module.output_lease(out, "second"):
                pass
    assert gcs_emulator.client().bucket("lease-test").get_blob("out/_LEASE") is None
    with lease_module.output_lease(out, "expired", ttl_seconds=-1):  # already expired: the next run takes it
        with lease_module.output_lease(out, "next") as holder:
            assert holder.job == "next"


def test_gcs_lease_two_runs_that_both_saw_no_lease_cannot_both_take_it(gcs_emulator, monkeypatch):
    """The race the does-not-exist precondition is for: both runs read "no lease", both create
    one; GCS (and the emulator, deploy/offline.py) lets exactly one create succeed."""
    import threading

    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    gcs_emulator.bucket("lease-race")
    blob = gcs_emulator.client().bucket("lease-race").blob("probe")
    blob.upload_from_string(b"first", if_generation_match=0)
    with pytest.raises(PreconditionFailed):  # the emulator honours the precondition at all
        gcs_emulator.client().bucket("lease-race").blob("probe").upload_from_string(b"x", if_generation_match=0)

    both_looked = threading.Barrier(2, timeout=30)
    first_look = threading.local()
    get_blob = storage.Bucket.get_blob

    def racing_get_blob(self, name, *args, **kwargs):
        if name.endswith("_LEASE") and not getattr(first_look, "done", False):
            first_look.done = True
            both_looked.wait()  # each run's first look happens before either writes
            return None
        return get_blob(self, name, *args, **kwargs)

    monkeypatch.setattr(storage.Bucket, "get_blob", racing_get_blob)
    outcomes, holding = [], threading.Barrier(2, timeout=30)

    def run(job):
        try:
            with lease_module.output_lease("gs://lease-race/out", job):
                outcomes.append(("held", job))
                holding.wait()  # still held while the other run tries
        except ValueError as refused:
            outcomes.append(("refused", str(refused)))
            holding.wait()

    threads = [threading.Thread(target=run, args=(job,)) for job in ("night-a", "night-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(kind for kind, _ in outcomes) == ["held", "refused"], outcomes
    winner = next(job for kind, job in outcomes if kind == "held")
    assert f"being written by {winner}" in next(text for kind, text in outcomes if kind == "refused")


# --- empty input -------------------------------------------------------------------------------


def test_an_empty_manifest_is_an_empty_dataset_for_ingest_dedup_and_refresh(tmp_path, capsys):
    manifest = tmp_path / "empty.tsv"
    manifest.write_text("")
    out = str(tmp_path / "out")
    assert _ingest(out, f"cc3m={manifest}") == 0
    files = table_module.list_table_files(out)
    assert len(files) == 1 and pq.read_table(files[0]).schema.equals(schema.IMAGE_SCHEMA)
    assert pq.read_table(files[0]).num_rows == 0
    assert _summary(out)["books"] == {
        "files": [{"path": str(manifest), "records": 0, "rows": 0}],
        "rows_in": 0,
        "rows_out": 0,
        "balanced": True,
        "truncated": [],
        "distinct_keys": 0,
        "doubled_keys": 0,
        "doubled": [],
    }

    out3 = str(tmp_path / "out3")
    dedup.run(local_options(input=out, output=out3))
    assert pq.read_table(table_module.list_table_files(out3)).num_rows == 0
    assert _summary(out3)["books"]["balanced"]

    capsys.readouterr()
    assert refresh.main(local_options(snapshot=out, output=str(tmp_path / "refresh"))) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert printed == [f"refresh: nothing to check: {out} holds no rows"]


# --- a damaged table: a byte flipped inside a Parquet page ----------------------------------------


def _flip_bytes_in_column(path, column):
    """Flips 64 bytes in the middle of `column`'s pages: pyarrow alone reads other values back."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    middle = start + chunk.total_compressed_size // 2
    data = bytearray(open(path, "rb").read())
    for at in range(middle - 32, middle + 32):
        data[at] ^= 0x5A
    open(path, "wb").write(bytes(data))


def _flip_last_page_byte(path, column):
    """Flips the byte before the end of `column`'s chunk: inside its last page's data, whatever
    the page sizes."""
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
    data = bytearray(open(path, "rb").read())
    data[end - 2] ^= 0x5A
    open(path, "wb").write(bytes(data))


def test_a_damaged_page_in_a_table_fails_dedup_export_and_refresh_in_one_line(forty_ingested, tmp_path, capsys):
    from pipelines import export

    manifest, out = forty_ingested[0], _copy_of(forty_ingested, str(tmp_path / "out"))
    [part] = table_module.list_table_files(out)
    before = pq.read_table(part).column("sha256").to_pylist()
    _flip_bytes_in_column(part, "sha256")
    try:  # the damage is the silent kind: without the page checksums pyarrow reads other hashes
        assert pq.read_table(part).column("sha256").to_pylist() != before
    except OSError:
        pass  # or the page no longer decodes: then it was never silent
    capsys.readouterr()
    runs = {
        "dedup": lambda: dedup.main(local_options(input=out, output=str(tmp_path / "dedup"))),
        "export": lambda: export.main(local_options(input=out, output=str(tmp_path / "export"), format="webdataset")),
        "refresh": lambda: refresh.main(
            local_options(snapshot=out, output=str(tmp_path / "refresh"), **{"allow-network": LOOPBACK})
        ),
        "ingest --resume": lambda: _ingest(out, f"cc3m={manifest}", "--resume"),
    }
    for job, run in runs.items():
        assert run() == 2, job
        line = _one_line(capsys)
        assert part in line and "damaged Parquet file" in line, (job, line)


def test_a_damaged_history_night_fails_the_next_refresh_in_one_line(forty_ingested, tmp_path, capsys):
    """The history is what turns failures into "dead" (--dead-after nights in a row): a flipped
    byte in a night's page must not read as other statuses or streaks. The refresh's own tables
    (status, hosts, history) carry page checksums, and the next night verifies them."""
    from transforms.io.checked_parquet import DamagedTable, table_batches

    out, history = _copy_of(forty_ingested, str(tmp_path / "out")), str(tmp_path / "history")

    def night(day, output):
        return refresh.main(
            local_options(
                snapshot=out,
                output=str(tmp_path / output),
                history=history,
                night=f"2030-01-0{day}",
                **{"allow-network": LOOPBACK},
            )
        )

    assert night(1, "refresh1") == 0
    [status_part] = [str(p) for p in (tmp_path / "refresh1" / "status").glob("part-*.parquet")]
    [night_part] = [str(p) for p in (tmp_path / "history" / "2030-01-01").glob("part-*.parquet")]
    assert re.fullmatch(r"part-[0-9a-f]{12}-00000-of-00001\.parquet", os.path.basename(night_part)), night_part
    assert not [p for p in os.listdir(tmp_path / "refresh1" / "status") if not p.endswith(".parquet")]
    for part in (status_part, night_part):
        _flip_last_page_byte(part, "status")  # small files: the middle of a chunk may be a page header
        with pytest.raises(DamagedTable, match="CRC checksum verification failed"):  # a checksum, not luck
            list(table_batches(part))
    capsys.readouterr()
    assert night(2, "refresh2") == 2
    line = _one_line(capsys)
    assert night_part in line and "damaged Parquet file" in line, line


# --- dedup: two-phase replacement, books, missing phash -------------------------------------------


def test_dedup_rerun_replaces_old_shards_and_warns_of_a_table_without_phash(tmp_path, capsys):
    import pyarrow as pa

    rows = [
        schema.new_row(
            "cc3m",
            f"cc3m:{n}",
            f"http://127.0.0.2/{n}.jpg",
            status=schema.OK,
            sha256=f"{n:064x}",
            source_file="m.tsv",
            source_line=n,
        )
        for n in range(1, 9)
    ]
    slim = [{name: r[name] for name in ("dataset", "key", "url", "status", "sha256")} for r in rows]
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(slim), out / "images" / "part-0.parquet")  # no phash column
    out3 = tmp_path / "out3"
    (out3 / "images").mkdir(parents=True)
    (out3 / "duplicates").mkdir()
    # a previous dedup run's shards, of another shard count
    pq.write_table(
        pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows[:3]], schema=schema.IMAGE_SCHEMA),
        out3 / "images" / "part-00000-of-00005.parquet",
    )
    (out3 / "duplicates" / "clusters-00004-of-00005.jsonl").write_text("{}\n")

    dedup.run(local_options(input=str(out), output=str(out3)))
    err = capsys.readouterr().err
    assert f"dedup: warning: {out}: the table has no phash column" in err
    table = pq.read_table(table_module.list_table_files(str(out3))).to_pylist()
    assert sorted(r["key"] for r in table) == sorted(r["key"] for r in rows)  # 8 rows, each once
    assert not (out3 / "images" / "part-00000-of-00005.parquet").exists()
    assert not (out3 / "duplicates" / "clusters-00004-of-00005.jsonl").exists()
    summary = _summary(str(out3))
    assert summary["books"]["balanced"] and summary["books"]["rows_in"] == 8 == summary["books"]["rows_out"]
    assert len(summary["warnings"]) == 1 and "no phash column" in summary["warnings"][0]


# --- joins -----------------------------------------------------------------------------------


def test_labels_join_on_repeated_image_ids_and_conflicting_hash_entries_give_no_expected_hash(tmp_path):
    oi = tmp_path / "oi"
    for part, ids in (("a", ["000000000000000a", "000000000000000b"]), ("b", ["000000000000000a"])):
        (oi / part).mkdir(parents=True)
        (oi / part / "images.csv").write_text(
            "ImageID,OriginalURL\n" + "".join(f"{image_id},http://127.0.0.2/{image_id}.jpg\n" for image_id in ids)
        )
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "ImageID,Source,LabelName,Confidence\n000000000000000a,human,/m/cat,1\n000000000000000b,human,/m/dog,1\n"
    )
    cc12m = tmp_path / "cc12m.tsv"
    cc12m.write_text("http://127.0.0.2/x.jpg\tx\nhttp://127.0.0.2/y.jpg\ty\n")
    hashes = tmp_path / "hashes.tsv"
    sha_x1, sha_x2, sha_y = "1" * 64, "2" * 64, "3" * 64
    hashes.write_text(
        f"http://127.0.0.2/x.jpg\t{sha_x1}\nhttp://127.0.0.2/y.jpg\t{sha_y}\n"
        f"http://127.0.0.2/x.jpg\t{sha_x2}\nhttp://127.0.0.2/y.jpg\t{sha_y}\n"
    )
    out = str(tmp_path / "out")
    assert (
        _ingest(
            out,
            [f"openimages={oi}/*/images.csv", f"cc12m={cc12m}"],
            **{"openimages-labels": str(labels), "cc12m-hashes": str(hashes)},
        )
        == 0
    )
    rows = {r["key"]: r for r in _assert_whole(out, 5)}
    repeat = "openimages:000000000000000a@b/images.csv:2"
    assert set(rows) == {"openimages:000000000000000a", repeat, "openimages:000000000000000b", "cc12m:1", "cc12m:2"}
    assert [label["id"] for label in rows[repeat]["labels"]] == ["/m/cat"]
    assert [label["id"] for label in rows["openimages:000000000000000a"]["labels"]] == ["/m/cat"]
    assert rows["cc12m:1"]["expected_sha256"] is None  # two entries disagree: no expected hash
    assert rows["cc12m:2"]["expected_sha256"] == sha_y  # two entries agree
    assert _summary(out)["hash_list"]["conflicting_urls"] == 1
    entries = [(sha_x1, None), (sha_x2, "a" * 32)]
    assert merge_hash_entries(entries) == merge_hash_entries(entries[::-1]) == ((None, None), True)
    assert merge_hash_entries([(sha_y, None), (None, "b" * 32)]) == ((sha_y, "b" * 32), False)


# --- the books check itself ----------------------------------------------------------------------


def test_a_lost_row_fails_the_run_with_the_books_in_one_line(web, tmp_path, capsys, monkeypatch):
    urls = _serve(web, 6)
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_cc3m_lines(urls))
    original = table_module.WriteShardsDoFn.process

    def lose_one(self, row):
        if row["key"] != "cc3m:4":
            yield from original(self, row)

    monkeypatch.setattr(table_module.WriteShardsDoFn, "process", lose_one)
    out = str(tmp_path / "out")
    assert _ingest(out, f"cc3m={manifest}") == 1
    line = _one_line(capsys)
    assert f"the books do not balance: {manifest}: 6 records read, 5 rows written" in line
    assert not _summary(out)["books"]["balanced"]


def _zero_lines(records):
    return "".join(
        json.dumps({"ImageKey": key, "ImageUrl": url, "Title": f"t{n}"}) + "\n" for n, (key, url) in enumerate(records)
    )


def test_a_doubled_key_fails_the_run_naming_the_key_and_keeps_the_previous_table(web, tmp_path, capsys, monkeypatch):
    """Rows in = rows out held with two rows of one key (nothing counted distinct keys): exit 0,
    and dedup, refresh and --resume then lost or merged one. The books now count the keys."""
    urls = _serve(web, 4, prefix="z")
    manifest = tmp_path / "zero.jsonl"
    manifest.write_text(_zero_lines([("k1", urls[0]), ("k2", urls[1]), ("k1", urls[2]), ("k3", urls[3])]))
    out = str(tmp_path / "out")
    assert _ingest(out, f"zero={manifest}") == 0
    _assert_whole(out, 4)
    books = _summary(out)["books"]
    assert (books["distinct_keys"], books["doubled_keys"], books["doubled"]) == (4, 0, [])
    images = os.path.join(out, "images")
    before = {name: open(os.path.join(images, name), "rb").read() for name in os.listdir(images)}
    capsys.readouterr()

    from transforms.io import manifests

    # a bug that doubles a key: the repeated ImageKey's later record keeps the plain key
    monkeypatch.setattr(manifests, "_rename_repeat", lambda row, *args: row)
    assert _ingest(out, f"zero={manifest}") == 1
    line = _one_line(capsys)
    assert (
        f"the books do not balance: key zero:k1 is held by 2 rows ({manifest} line 1; {manifest} line 3);"
        " 1 doubled key, 4 rows written with 3 distinct keys" in line
    ), line
    books = _summary(out)["books"]
    assert not books["balanced"] and books["rows_in"] == books["rows_out"] == 4
    assert books["doubled"] == [{"key": "zero:k1", "rows": 2, "where": [f"{manifest} line 1", f"{manifest} line 3"]}]
    # as any run whose books fail: its parts are removed, the previous table stays whole
    assert {name: open(os.path.join(images, name), "rb").read() for name in os.listdir(images)} == before


def test_a_native_key_that_reads_as_a_rename_keeps_every_key_distinct(web, tmp_path):
    """Zero z.jsonl repeats ImageKey 1 (its line 2 renamed zero:1@z.jsonl:2) and a.jsonl has the
    ImageKey `1@z.jsonl:2` itself: before, two rows held zero:1@z.jsonl:2, exit 0."""
    urls = _serve(web, 3, prefix="r")
    (tmp_path / "a.jsonl").write_text(_zero_lines([("1@z.jsonl:2", urls[0])]))
    (tmp_path / "z.jsonl").write_text(_zero_lines([("1", urls[1]), ("1", urls[2])]))
    out = str(tmp_path / "out")
    assert _ingest(out, f"zero={tmp_path}/*.jsonl") == 0
    rows = {r["key"]: r["url"] for r in _assert_whole(out, 3)}
    # the native ImageKey keeps its key; the rename that met it takes #2
    assert rows == {"zero:1@z.jsonl:2": urls[0], "zero:1": urls[1], "zero:1@z.jsonl:2#2": urls[2]}
    assert _summary(out)["books"]["distinct_keys"] == 3


def test_dedup_and_refresh_refuse_an_output_another_run_holds(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    row = schema.new_row("cc3m", "cc3m:1", "http://127.0.0.2/1.jpg", status=schema.OK, sha256="1" * 64, phash="0" * 16)
    pq.write_table(pa_table([row]), out / "images" / "part-0.parquet")
    out3, refresh_out = str(tmp_path / "out3"), str(tmp_path / "refresh")
    with lease_module.output_lease(out3, "ingest"), lease_module.output_lease(refresh_out, "refresh"):
        with pytest.raises(ValueError, match=f"{out3} is being written by ingest"):
            dedup.run(local_options(input=str(out), output=out3))
        capsys.readouterr()
        assert refresh.main(local_options(snapshot=str(out), output=refresh_out)) == 2
        assert f"{refresh_out} is being written by refresh" in _one_line(capsys)


def _files_of(folder):
    """{relative path: bytes} of every file under `folder`."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                found[os.path.relpath(os.path.join(root, name), folder)] = handle.read()
    return found


def test_an_output_of_another_job_is_refused_as_output(forty_ingested, tmp_path, capsys):
    """A tired operator's mix-ups: `dedup --input A --output B` meant `--input A --input B`, an
    export or a refresh into an ingest output, an ingest into an export. Before, each ran, exit 0:
    the dedup replaced B's table with A's rows, the export's and the refresh's summary.json replaced
    B's (its books and table record: every later reader of B read it unchecked). Now: exit 2, one
    line naming the folder and the job whose output it holds, B as it was."""
    # A and B: two ingest outputs, each a copy of the module's (the refusals read B's summary.json)
    manifest_b = forty_ingested[0]
    a, b = _copy_of(forty_ingested, str(tmp_path / "a")), _copy_of(forty_ingested, str(tmp_path / "b"))
    exp = str(tmp_path / "exp")
    before = _files_of(b)
    capsys.readouterr()

    assert dedup.main(local_options(input=a, output=b)) == 2
    assert f"--output {b} holds an ingest output" in _one_line(capsys)
    assert export.main(local_options(input=a, output=b, format="webdataset")) == 2
    assert f"--output {b} holds an ingest output" in _one_line(capsys)
    assert refresh.main(local_options(snapshot=a, output=b, **{"allow-network": LOOPBACK})) == 2
    assert f"--output {b} holds an ingest output" in _one_line(capsys)
    assert _files_of(b) == before

    assert export.main(local_options(input=a, output=exp, format="webdataset")) == 0
    capsys.readouterr()
    assert _ingest(exp, f"cc3m={manifest_b}") == 2
    assert f"--output {exp} holds an export output" in _one_line(capsys)
    assert _ingest(b, f"cc3m={manifest_b}") == 0  # its own job's rerun is not refused


def pa_table(rows):
    import pyarrow as pa

    return pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA)


def test_resume_refuses_an_old_output_that_holds_a_key_twice(tmp_path, capsys):
    """An output of an earlier version whose keys collided (two folders' part-0.tsv both keyed
    cc3m:part-0.tsv:1). Before, --resume kept both old rows and fetched the record anew: the key
    three times in the table, exit 0. Now refused before a fetch, exit 2, OUT as it was."""
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    old = [
        schema.new_row(
            "cc3m",
            "cc3m:part-0.tsv:1",
            f"http://127.0.0.2/{year}.jpg",
            status=schema.OK,
            source_file=f"/in/{year}/part-0.tsv",
        )
        for year in (2024, 2025)
    ]
    pq.write_table(pa_table(old), out / "images" / "part-0.parquet")
    before = (out / "images" / "part-0.parquet").read_bytes()
    manifest = tmp_path / "part-0.tsv"
    manifest.write_text("photo\thttp://127.0.0.2/2024.jpg\n")
    # two files of one folder: keys cc3m:part-0.tsv:1 and cc3m:x.tsv:1
    (tmp_path / "x.tsv").write_text("photo\thttp://127.0.0.2/x.jpg\n")
    assert _ingest(str(out), [f"cc3m={manifest}", f"cc3m={tmp_path / 'x.tsv'}"], "--resume") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        "ingest: --resume: OUT holds cc3m:part-0.tsv:1 2 times (/in/2024/part-0.tsv, /in/2025/part-0.tsv):"
        " an output of an earlier version whose keys collided; which record each row is cannot be told."
        " Ingest the manifests into a new --output"
    ), line
    assert (
        os.listdir(out / "images") == ["part-0.parquet"] and (out / "images" / "part-0.parquet").read_bytes() == before
    )

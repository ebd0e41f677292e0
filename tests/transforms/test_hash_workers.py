"""transforms.hash_workers: the worker processes give verify_and_hash's answers, and a worker that
dies loses no row (a real crash: a sitecustomize on the workers' PYTHONPATH makes one body kill its
process, or a worker is killed from outside mid-run)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.demo.sample_site import encode, jpeg, picture, pixel_bomb_png
from tests.paths import REPO
from transforms import schema
from transforms.errors import EnvironmentFailure
from transforms.hash_workers import HashWorkers
from transforms.hashing import HashDoFn, HashImages
from transforms.image_checks import DEFAULT_MAX_PIXELS, VIEWS, verify_and_hash

KILLER = b"\xff\xd8\xff kill the worker that reads this"


def fetched(n, body, **fields):
    row = schema.new_row("cc3m", f"cc3m:{n}", f"http://x/{n}.jpg", status=schema.OK, **fields)
    row["_body"] = body
    return row


def bodies():
    """Pictures, and the bodies that fail each check: not an image, a bomb, a cut JPEG, a wrong hash."""
    good = [jpeg(seed, (300 + 40 * seed, 200)) for seed in range(10)] + [encode(picture(3), "PNG")]
    return good + [b"<html>no</html>", pixel_bomb_png(), jpeg(11)[:300]]


def expected(rows, views=VIEWS):
    return [verify_and_hash(dict(r), DEFAULT_MAX_PIXELS, True, views) for r in rows]


def without_body(row):
    return {k: v for k, v in row.items() if k != "_body"}


def test_workers_answer_what_verify_and_hash_answers():
    rows = [fetched(n, b) for n, b in enumerate(bodies())] + [fetched(99, jpeg(1), expected_sha256="0" * 64)]
    pool = HashWorkers(2, DEFAULT_MAX_PIXELS, True, VIEWS)
    try:
        answers = [pool.submit(r) for r in rows]
        got = [dict(r, **f.result(timeout=60)) for r, f in zip(rows, answers, strict=True)]
    finally:
        pool.close()
    assert [without_body(r) for r in got] == [without_body(r) for r in expected(rows)]
    statuses = {r["status"] for r in got}
    assert {schema.OK, schema.NOT_IMAGE, schema.DECODE_ERROR, schema.HASH_MISMATCH} <= statuses


@pytest.mark.parametrize("processes", [2, 0])
def test_the_beam_stage_gives_the_same_rows_with_processes_or_threads(processes):
    rows = [fetched(n, b) for n, b in enumerate(bodies())]
    want = [without_body(r) for r in expected(rows)]
    with TestPipeline() as p:
        out = p | beam.Create(rows) | HashImages(processes=processes) | beam.Map(without_body)
        assert_that(out, equal_to(want))


def test_a_hash_stage_left_to_its_default_starts_one_process_in_the_suite_and_one_per_core_as_a_job():
    # why: tests/conftest.py's one_hash_process keeps the suite's in-process ingests to one worker
    # each (~0.6 CPU s less a run); a `python -m` job keeps one per core
    assert HashDoFn()._processes == 1 and HashDoFn(processes=2)._processes == 2
    code = "import os; from transforms.hashing import default_processes; print(default_processes(), os.cpu_count())"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    default, cores = done.stdout.split()
    assert default == cores


@pytest.fixture
def crashing_workers(tmp_path, monkeypatch):
    """Workers that die (os._exit) on the KILLER body: a sitecustomize ahead of them on PYTHONPATH."""
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            import os
            import transforms.image_checks as checks
            real = checks.verify_and_hash
            def verify_and_hash(row, *args):
                if row.get("_body") == {KILLER!r}:
                    os._exit(3)
                return real(row, *args)
            checks.verify_and_hash = verify_and_hash
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))


def test_a_body_that_kills_its_worker_twice_is_a_decode_error_and_no_row_is_lost(crashing_workers):
    good = [fetched(n, jpeg(n)) for n in range(12)]
    rows = good[:5] + [fetched(50, KILLER)] + good[5:]
    pool = HashWorkers(2, DEFAULT_MAX_PIXELS, True, ())
    try:
        got = [dict(r, **pool.submit(r).result(timeout=60)) for r in rows]
    finally:
        pool.close()
    killed = got[5]
    assert killed["status"] == schema.DECODE_ERROR
    assert "decoder crashed" in killed["error"] and "exit status 3" in killed["error"]
    assert killed["size_bytes"] == len(KILLER) and killed["sha256"]
    want = expected(good, views=())
    assert [without_body(r) for r in got[:5] + got[6:]] == [without_body(r) for r in want]


def test_a_worker_killed_from_outside_is_replaced_and_its_bodies_are_hashed_again():
    rows = [fetched(n, jpeg(n, (900, 700))) for n in range(40)]
    pool = HashWorkers(1, DEFAULT_MAX_PIXELS, True, VIEWS)
    try:
        answers = [pool.submit(r) for r in rows]
        answers[0].result(timeout=60)
        victim = pool._workers[0]._process
        os.kill(victim.pid, signal.SIGKILL)
        got = [dict(r, **f.result(timeout=60)) for r, f in zip(rows, answers, strict=True)]
        assert pool._workers[0]._process.pid != victim.pid
    finally:
        pool.close()
    assert [without_body(r) for r in got] == [without_body(r) for r in expected(rows)]
    assert victim.poll() is not None


def test_workers_that_cannot_start_fail_the_job_instead_of_blaming_the_files(tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text("import os\nos._exit(7)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    pool = HashWorkers(2, DEFAULT_MAX_PIXELS, True, ())
    try:
        answers = [pool.submit(fetched(n, jpeg(n))) for n in range(6)]
        for answer in answers:
            with pytest.raises(EnvironmentFailure, match="exited with status 7 before it was ready"):
                answer.result(timeout=60)
    finally:
        pool.close()


def test_workers_exit_when_the_beam_process_is_killed():
    """kill -9 of the Beam process alone (an OOM kill), its workers ready and waiting for work: they
    see their input end and exit."""
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from transforms.hash_workers import HashWorkers; "
            "from transforms import schema; "
            "pool = HashWorkers(2, 1000, True, ()); "
            "[pool.submit({'status': schema.OK, '_body': b'x'}).result() for _ in range(4)]; "
            "print(*[w._process.pid for w in pool._workers], flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, f"hash workers {workers} outlived their Beam process"
        time.sleep(0.1)


def _alive(pid):
    """True while pid runs (a zombie, exited but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_ctrl_c_while_the_workers_start_prints_nothing_from_them():
    """Ctrl-C reaches the whole process group, workers included, maybe while they still import:
    they are born with SIGINT blocked, so only the Beam process answers it (here: a handler that
    does nothing; not SIG_IGN, which the workers would inherit)."""
    code = (
        "import os, signal, time; signal.signal(signal.SIGINT, lambda *_: None); "
        "from transforms import schema; from transforms.hash_workers import HashWorkers; "
        "pool = HashWorkers(2, 1000, True, ()); time.sleep(0.2); os.killpg(0, signal.SIGINT); "
        "print(pool.submit({'status': schema.OK, '_body': b'x'}).result()['status'], flush=True); pool.close()"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        start_new_session=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.decode().split() == [schema.NOT_IMAGE]
    assert b"KeyboardInterrupt" not in run.stderr and b"Traceback" not in run.stderr, run.stderr.decode()


def test_the_beam_process_leaves_scipy_to_the_workers():
    """scipy (the pHash's DCT) costs ~0.25 s to import; the ingest's Beam process hashes nothing when
    the workers do, so a job's start does not pay for it (image_checks imports it at first use)."""
    probe = "import sys, pipelines.ingest, pipelines.refresh; print(sorted(m for m in sys.modules if 'scipy' in m))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_a_worker_without_scipy_fails_the_job_before_any_body_is_blamed(tmp_path, monkeypatch):
    """scipy is imported lazily by image_checks, but a worker loads it before it says it is ready: a
    broken install is the environment's failure (exit 1), not a decode_error on the first body."""
    (tmp_path / "sitecustomize.py").write_text(
        textwrap.dedent(
            """
            import sys
            class NoScipy:
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] == "scipy":
                        raise ImportError("scipy is broken here")
            sys.meta_path.insert(0, NoScipy())
            """
        )
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    pool = HashWorkers(1, DEFAULT_MAX_PIXELS, True, ())
    try:
        answer = pool.submit(fetched(0, jpeg(0)))
        with pytest.raises(EnvironmentFailure, match="before it was ready"):
            answer.result(timeout=60)
    finally:
        pool.close()

"""The standalone job end to end: Parquet in, Parquet + duplicates + summary.json out."""

import datetime
import glob
import json
import os
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import dedup as job
from tests.dedup_helpers import row
from tests.paths import REPO
from transforms import schema
from transforms.errors import BadInput
from transforms.io.table import list_table_files

UTC = datetime.timezone.utc


def _write_out(root, rows, name="part-0.parquet"):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    table = pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA)
    pq.write_table(table, os.path.join(root, "images", name))


def _stamp(r, day, **extra):
    r["fetched_at"] = datetime.datetime(2024, 1, day, tzinfo=UTC)
    r["caption"] = f"seen on day {day}"
    r["labels"] = [{"id": "/m/01", "name": "cat", "confidence": 1.0, "source": "human"}]
    r.update(extra)
    return r


def _inputs(tmp_path):
    ph, dh = "0f0f0f0f0f0f0f0f", "1234123412341234"
    out1 = [  # ingested in January
        _stamp(row("cc3m:1", "cc3m", url="http://a.example/1.jpg", phash=ph, dhash=dh), 1),
        _stamp(row("cc3m:2", "cc3m", url="http://a.example/2.jpg", status="timeout"), 1),
        _stamp(row("cc3m:3", "cc3m", phash="ffffffff00000000", dhash="0101010101010101"), 1),
    ]
    out2 = [  # a later run: CC12M, plus a re-fetch of cc3m:2 that now worked
        _stamp(row("cc12m:1", "cc12m", url="https://A.example/1.jpg", phash=ph, dhash=dh, width=640, height=480), 5),
        _stamp(row("cc12m:2", "cc12m", phash="0f0f0f0f0f0f0f0e", dhash=dh), 5),
        _stamp(
            row("cc3m:2", "cc3m", url="http://a.example/2.jpg", phash="aaaaaaaaaaaaaaaa", dhash="5555555555555555"), 9
        ),
    ]
    _write_out(str(tmp_path / "out1"), out1)
    _write_out(str(tmp_path / "out2"), out2[:2], "part-0.parquet")
    _write_out(str(tmp_path / "out2"), out2[2:], "part-1.parquet")
    return [str(tmp_path / "out1"), str(tmp_path / "out2")]


def _check(out3):
    table = pq.read_table(glob.glob(os.path.join(out3, "images", "*.parquet")))
    assert table.schema.equals(schema.IMAGE_SCHEMA)
    rows = {r["key"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["cc12m:1", "cc12m:2", "cc3m:1", "cc3m:2", "cc3m:3"]
    assert rows["cc3m:2"]["status"] == "ok"  # the newer fetch replaced the older one
    assert rows["cc3m:2"]["fetched_at"] == datetime.datetime(2024, 1, 9, tzinfo=UTC)
    cid = rows["cc3m:1"]["cluster_id"]
    assert cid is not None and rows["cc12m:1"]["cluster_id"] == rows["cc12m:2"]["cluster_id"] == cid
    assert [k for k, r in rows.items() if r["is_canonical"] and r["cluster_id"]] == ["cc12m:1"]
    assert rows["cc3m:3"]["cluster_id"] is None and rows["cc3m:3"]["is_canonical"] is True
    assert rows["cc3m:2"]["cluster_id"] is None
    assert rows["cc12m:1"]["labels"][0]["name"] == "cat"  # other columns pass through
    assert rows["cc12m:1"]["caption"] == "seen on day 5"

    lines = []
    for path in glob.glob(os.path.join(out3, "duplicates", "clusters-*.jsonl")):
        lines += [json.loads(line) for line in open(path) if line.strip()]
    assert len(lines) == 1 and lines[0]["cluster_id"] == cid and lines[0]["size"] == 3
    assert {m["key"]: m["match"] for m in lines[0]["members"]} == {
        "cc12m:1": "canonical",
        "cc3m:1": "url",
        "cc12m:2": "near",
    }

    summary = json.load(open(os.path.join(out3, "summary.json")))
    assert summary["rows"] == 5 and summary["replaced_rows"] == 1
    assert summary["clusters"] == 1 and summary["duplicated_rows"] == 3
    assert summary["across_datasets"] == {"cc3m|cc12m": {"clusters": 1, "rows": 3}}
    assert summary["within_dataset"] == {"cc12m": {"clusters": 1, "rows": 2}}


@pytest.fixture(scope="module")
def deduped(tmp_path_factory):
    """(the two inputs of _inputs, OUT3 of their dedup): one run for the module, read-only (a test
    copies OUT3 with _out3_copy before a job writes to it)."""
    # why: three tests ran this same dedup (~3 s) before what each checks
    folder = tmp_path_factory.mktemp("deduped")
    inputs = _inputs(folder)
    out3 = str(folder / "out3")
    job.run(["--input", inputs[0], "--input", inputs[1], "--output", out3, "--runner", "FnApiRunner"])
    return inputs, out3


def _out3_copy(deduped, tmp_path):
    """(the inputs, this test's copy of the module's OUT3)."""
    inputs, out3 = deduped
    copy = str(tmp_path / "out3")
    shutil.copytree(out3, copy)
    return inputs, copy


def test_job_end_to_end(deduped):
    inputs, out3 = deduped
    _check(out3)
    # from the footers: the near search's shards follow it
    assert job.table_rows([list_table_files(i) for i in inputs]) == 6
    summary = json.load(open(os.path.join(out3, "summary.json")))
    assert summary["config"]["near_search"]["shard_bits"] == 0


def test_job_command_line_default_local_runner(tmp_path):
    """`python -m pipelines.dedup` as a user runs it: the local runner in one process (x0.4 the
    memory of two worker processes, docs/performance.md); worker processes only when asked."""
    from pipelines.launch import job_runner

    inputs = _inputs(tmp_path)
    out3 = str(tmp_path / "out3")
    options = job.pipeline_options(["--input", "x", "--output", "y"])
    assert options.get_all_options()["runner"] == "FnApiRunner"
    assert options.get_all_options()["direct_running_mode"] == "in_memory"
    assert options.get_all_options()["direct_num_workers"] == 1
    assert job_runner.one_local_process(options)
    more = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    options = job.pipeline_options(["--input", "x", "--output", "y", *more])
    assert options.get_all_options()["direct_running_mode"] == "multi_processing"
    assert options.get_all_options()["direct_num_workers"] == 2
    assert not job_runner.one_local_process(options)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.dedup",
            "--input",
            inputs[0],
            "--input",
            inputs[1],
            "--output",
            out3,
            "--max-distance",
            "8",
        ],
        check=True,
        timeout=300,
        cwd=REPO,
        capture_output=True,
    )
    _check(out3)


def test_job_requires_input_and_output_without_breaking_other_pipelines():
    import pytest
    from apache_beam.options.pipeline_options import PipelineOptions

    with pytest.raises(BadInput, match="--input"):
        job.run(["--output", "somewhere", "--runner", "FnApiRunner"])
    # DedupOptions is registered process-wide: another job's options must still parse
    assert PipelineOptions(["--runner", "FnApiRunner"]).view_as(job.DedupOptions).input is None


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_CONNECTS = []  # (active flag, addresses) for the audit hook below; hooks cannot be removed


def _audit(event, args):
    if event == "socket.connect" and _CONNECTS and _CONNECTS[0] is True:
        _CONNECTS.append(args[1])


sys.addaudithook(_audit)


def test_job_on_gcs_emulator(tmp_path, monkeypatch):
    """gs:// in and out, against gcp-storage-emulator on loopback with anonymous credentials;
    every socket the test opens goes to loopback."""
    import google.auth
    from apache_beam.internal.gcp import auth as beam_auth
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("NO_GCE_CHECK", "true")
        monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "test-project"))
        monkeypatch.setattr(beam_auth._Credentials, "_credentials_init", False)
        client = storage.Client(project="test-project", credentials=AnonymousCredentials())
        bucket = client.create_bucket("dedup-test")
        local = _inputs(tmp_path)
        for i, root in enumerate(local):
            for path in glob.glob(os.path.join(root, "images", "*.parquet")):
                name = f"out{i + 1}/images/{os.path.basename(path)}"
                bucket.blob(name).upload_from_filename(path)
        _CONNECTS[:] = [True]
        try:
            job.run(
                [
                    "--input",
                    "gs://dedup-test/out1",
                    "--input",
                    "gs://dedup-test/out2",
                    "--output",
                    "gs://dedup-test/out3",
                    "--runner",
                    "FnApiRunner",
                    "--project",
                    "test-project",
                ]
            )
        finally:
            addresses, _CONNECTS[:] = _CONNECTS[1:], []
        hosts = {a[0] if isinstance(a, tuple) else str(a) for a in addresses}
        assert hosts and all(h.startswith("127.") or h in ("localhost", "::1") or h.startswith("/") for h in hosts), (
            hosts
        )
        out3 = tmp_path / "downloaded"
        names = sorted(b.name for b in client.list_blobs("dedup-test", prefix="out3/"))
        assert "out3/summary.json" in names
        assert any(n.startswith("out3/images/") and n.endswith(".parquet") for n in names)
        assert any(n.startswith("out3/duplicates/clusters-") for n in names)
        for name in names:
            target = out3 / name[len("out3/") :]
            target.parent.mkdir(parents=True, exist_ok=True)
            bucket.blob(name).download_to_filename(str(target))
        _check(str(out3))
    finally:
        server.stop()


def _scratch(tmp_path, monkeypatch):
    """A TMPDIR of the test's own, so that only this test's spill directories are looked at."""
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def test_spill_directory_removed_when_the_job_fails(tmp_path, monkeypatch):
    """A bundle fails after the key records went to the spill directory: the job fails, and the
    directory is gone."""
    import pytest

    from transforms.clustering import clusters

    scratch = _scratch(tmp_path, monkeypatch)
    inputs = _inputs(tmp_path)
    spilled = []

    def fail(self, element):
        spilled.extend(str(p) for p in scratch.glob("dedup-spill-*/*"))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(clusters._KeyShard, "process", fail)
    with pytest.raises(Exception, match="disk on fire"):
        job.run(
            ["--input", inputs[0], "--input", inputs[1], "--output", str(tmp_path / "out3"), "--runner", "FnApiRunner"]
        )
    assert spilled  # there was something to remove
    assert not list(scratch.iterdir())


def test_spill_directory_removed_on_ctrl_c_and_sigterm(tmp_path):
    """`python -m pipelines.dedup` interrupted while it runs (Ctrl-C ends the process at once,
    past any finally; SIGTERM too, exit 143): its spill directory is removed all the same."""
    import signal
    import time

    inputs = _inputs(tmp_path)
    for signum, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        scratch = tmp_path / f"scratch-{signum}"
        scratch.mkdir()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipelines.dedup",
                "--input",
                inputs[0],
                "--input",
                inputs[1],
                "--output",
                str(tmp_path / f"out-{signum}"),
            ],
            cwd=REPO,
            env=dict(os.environ, TMPDIR=str(scratch)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while not list(scratch.glob("dedup-spill-*")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list(scratch.glob("dedup-spill-*")), "the job never made its spill directory"
        proc.send_signal(signum)
        assert proc.wait(timeout=120) == status
        assert not list(scratch.glob("dedup-spill-*"))


def test_spill_directory_sweeps_what_killed_runs_left(tmp_path, monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions

    scratch = _scratch(tmp_path, monkeypatch)
    dead = scratch / "dedup-spill-999999999-abc"  # above any pid: that run is over
    alive = scratch / f"dedup-spill-{os.getpid()}-def"  # a run still going: kept
    other = scratch / "dedup-spill-xyz"  # not named after a process: not ours to judge
    for folder in (dead, alive, other):
        (folder / "keys").mkdir(parents=True)
    with job.spill_directory(PipelineOptions(["--runner", "FnApiRunner"])) as path:
        assert os.path.isdir(path) and os.path.basename(path).startswith(f"dedup-spill-{os.getpid()}-")
        assert not dead.exists() and alive.exists() and other.exists()
    assert not os.path.exists(path)
    with job.spill_directory(PipelineOptions(["--runner", "DataflowRunner"])) as path:
        assert path is None


def test_job_matches_through_picture_views(tmp_path):
    """The job reads the view columns (issue 16: it read only the plain hashes, so its view search
    saw no picture): a mirrored copy, whose plain pHash is its original's mirror view, joins it;
    with --views none it stays alone."""
    ph, dh = "0123456789abcdef", "1111222233334444"
    original = _stamp(row("cc3m:o", "cc3m", phash="f0e1d2c3b4a59687", dhash="7777888899990000"), 1)
    original.update(phash_mirror=ph, dhash_mirror=dh)
    mirrored = _stamp(row("cc12m:m", "cc12m", phash=ph, dhash=dh), 2)
    mirrored.update(phash_crop="5a5a5a5a5a5a5a5a", dhash_crop="a5a5")  # only pictures with views are searched
    other = _stamp(row("cc12m:x", "cc12m", phash="00ff00ff00ff00ff", dhash="abababababababab"), 2)
    other.update(phash_mirror="ff00ff00ff00ff00", dhash_mirror="baba")
    _write_out(str(tmp_path / "in"), [original, mirrored, other])
    for views, joined in ((None, True), ("none", False)):
        out = str(tmp_path / f"out-{views}")
        more = [] if views is None else ["--views", views]
        job.run(["--input", str(tmp_path / "in"), "--output", out, "--runner", "FnApiRunner", *more])
        table = pq.read_table(os.path.join(out, "images"), columns=["key", "cluster_id"]).to_pylist()
        cids = {r["key"]: r["cluster_id"] for r in table}
        assert (cids["cc3m:o"] is not None and cids["cc3m:o"] == cids["cc12m:m"]) is joined
        assert cids["cc12m:x"] is None
        summary = json.load(open(os.path.join(out, "summary.json")))
        assert summary["view_pairs"] == ({"mirror": 1} if joined else {})


def test_one_input_given_twice_is_refused_and_out3_keeps_its_table(deduped, tmp_path, capsys):
    """`--input out1 --input out1/` (a tired operator's repeated line, a symlink): every row would be
    its own newer version and be replaced; the run wrote an empty table over OUT3's, then failed
    its books (exit 1). It is the user's mistake: exit 2, one line, nothing touched."""
    inputs, out3 = _out3_copy(deduped, tmp_path)
    before = sorted(os.listdir(os.path.join(out3, "images")))
    os.symlink(inputs[0], str(tmp_path / "link"))
    for again in (inputs[0] + "/", str(tmp_path / "link")):
        argv = ["--input", inputs[0], "--input", inputs[1], "--input", again, "--output", out3]
        assert job.main([*argv, "--runner", "FnApiRunner"]) == 2
        err = capsys.readouterr().err
        assert "given twice" in err and "Traceback" not in err, err
        assert sorted(os.listdir(os.path.join(out3, "images"))) == before
    _check(out3)


def test_an_output_inside_an_input_or_around_one_is_refused(deduped, tmp_path, capsys):
    """`--output IN/images` was accepted: OUT3's table written inside an input's table folder,
    which pyarrow or pandas reading IN/images then read with IN's own rows (each row twice). Now
    OUT3 inside an input, or an input inside OUT3, is exit 2, one line, nothing written."""
    copies = [shutil.copytree(path, str(tmp_path / f"in{n}")) for n, path in enumerate(deduped[0])]
    before = {path: sorted(os.listdir(os.path.join(path, "images"))) for path in copies}
    for out3, inputs in (
        (os.path.join(copies[1], "images"), copies),
        (os.path.join(copies[0], "dedup"), copies),
        (str(tmp_path), copies),  # both inputs lie inside OUT3
    ):
        argv = [a for path in inputs for a in ("--input", path)] + ["--output", out3]
        assert job.main([*argv, "--runner", "FnApiRunner"]) == 2, out3
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "overlaps the input" in err[0], err
    assert {path: sorted(os.listdir(os.path.join(path, "images"))) for path in copies} == before
    assert not os.path.exists(os.path.join(copies[0], "dedup"))


def test_slices_of_one_manifest_ingested_apart_are_refused_not_replaced(deduped, tmp_path, capsys):
    """CC3M keys are line numbers: a researcher who ingests lines 1-3 and lines 4-6 of a manifest
    as two slices gets cc3m:1..3 in both. Deduplicating the two took each of the second slice's
    rows for a newer version of the first's: 3 distinct images dropped as "replaced", exit 0. A
    key whose rows have different URLs is another record, not a version: exit 2, one line,
    OUT3 keeps its table. A re-fetch (same key, same URL) is still a newer version."""
    _, out3 = _out3_copy(deduped, tmp_path)
    before = sorted(os.listdir(os.path.join(out3, "images")))
    first = [_stamp(row(f"cc3m:{i}", "cc3m", url=f"http://a.example/slice1/{i}.jpg"), 1) for i in (1, 2, 3)]
    second = [_stamp(row(f"cc3m:{i}", "cc3m", url=f"http://a.example/slice2/{i}.jpg"), 2) for i in (1, 2, 3)]
    second[0]["url"] = first[0]["url"]  # cc3m:1 re-fetched: a version; cc3m:2 and 3 collide
    _write_out(str(tmp_path / "slice1"), first)
    _write_out(str(tmp_path / "slice2"), second)
    argv = ["--input", str(tmp_path / "slice1"), "--input", str(tmp_path / "slice2"), "--output", out3]
    assert job.main([*argv, "--runner", "FnApiRunner"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "hold 2 keys" in err and "different URLs" in err and str(tmp_path / "slice2") in err, err
    assert sorted(os.listdir(os.path.join(out3, "images"))) == before
    _check(out3)

    second[1]["url"], second[2]["url"] = first[1]["url"], first[2]["url"]  # re-fetches of the same rows
    _write_out(str(tmp_path / "slice2"), second)
    job.run([*argv, "--runner", "FnApiRunner"])
    rows = pq.read_table(glob.glob(os.path.join(out3, "images", "*.parquet"))).to_pylist()
    assert sorted((r["key"], r["caption"]) for r in rows) == [(f"cc3m:{i}", "seen on day 2") for i in (1, 2, 3)]


def test_a_newer_failed_fetch_does_not_replace_a_picture(tmp_path):
    """A re-ingest in which a URL hit a 503, a timeout or a 404 held the newest version of its key:
    dedup of the two outputs kept that failure and dropped the picture the first ingest held, and
    the export lost it, exit 0. A version with a picture wins now, the newest of those; a key
    without one keeps its newest failure. Whether a URL is dead is the refresh's call."""
    first = [
        _stamp(row("cc3m:1", "cc3m", url="http://a.example/1.jpg", phash="0f0f0f0f0f0f0f0f", dhash="1"), 1),
        _stamp(row("cc3m:2", "cc3m", url="http://a.example/2.jpg", phash="f0f0f0f0f0f0f0f0", dhash="2"), 1),
        _stamp(row("oi:x", "openimages", url="http://a.example/x.jpg", phash="00ff00ff00ff00ff", dhash="3"), 1),
        _stamp(row("cc3m:3", "cc3m", url="http://a.example/3.jpg", status="timeout"), 1),
    ]
    second = [
        _stamp(row("cc3m:1", "cc3m", url="http://a.example/1.jpg", status="http_error"), 9),
        _stamp(row("cc3m:2", "cc3m", url="http://a.example/2.jpg", status="timeout"), 9),
        _stamp(row("oi:x", "openimages", url="http://b.example/x.jpg", phash="ff00ff00ff00ff00", dhash="4"), 9),
        _stamp(row("cc3m:3", "cc3m", url="http://a.example/3.jpg", status="http_error"), 9),
    ]
    _write_out(str(tmp_path / "jan"), first)
    _write_out(str(tmp_path / "feb"), second)
    out3 = str(tmp_path / "out3")
    argv = ["--input", str(tmp_path / "jan"), "--input", str(tmp_path / "feb"), "--output", out3]
    assert job.main([*argv, "--runner", "FnApiRunner"]) == 0
    rows = {r["key"]: r for r in pq.read_table(glob.glob(os.path.join(out3, "images", "*.parquet"))).to_pylist()}
    kept = {key: (r["status"], r["fetched_at"].day, r["url"]) for key, r in rows.items()}
    assert kept == {
        "cc3m:1": ("ok", 1, "http://a.example/1.jpg"),  # the picture, not the newer 404
        "cc3m:2": ("ok", 1, "http://a.example/2.jpg"),  # the picture, not the newer timeout
        "oi:x": ("ok", 9, "http://b.example/x.jpg"),  # two pictures: the newer (it moved)
        "cc3m:3": ("http_error", 9, "http://a.example/3.jpg"),  # no picture: the newest
    }
    with open(os.path.join(out3, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["rows"] == 4 and summary["replaced_rows"] == 4

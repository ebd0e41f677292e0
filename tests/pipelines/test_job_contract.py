"""The job contract, from the command line as a user runs it: `python -m pipelines.<job> ...`.

Every bad input: exit 2 and exactly one stderr line naming the file, column or option, no
traceback. The environment (read-only or forbidden output, full disk): exit 1, one line naming the
path. --help lists each job's option groups; --debug keeps the traceback; Ctrl-C stops a running
ingest within 2 s with one line (exit 130), leaves no worker process, and --resume afterwards
completes the table. Also: failures.describe unwraps what the FnApi runner makes of a DoFn's
exception (in this process and in a worker process).
"""

import concurrent.futures
import contextlib
import datetime
import errno
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import ingest
from pipelines.demo.sample_site import Reply, jpeg
from pipelines.launch import console, failures
from tests import job_process
from tests.job_process import NOBODY, job
from tests.paths import REPO
from transforms import schema
from transforms.errors import BadInput, BooksUnbalanced

JPEG = {"Content-Type": "image/jpeg"}


def assert_one_line(done, status, *fragments):
    """Exit `status`, exactly one line on stderr holding every fragment, no traceback."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == status, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]
    return lines[0]


def write_table(path, columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({c: pa.array(["x"], pa.string()) for c in columns}), path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files for the bad-input cases: nothing here is ever fetched (every check fails first)."""
    root = tmp_path_factory.mktemp("contract")
    (root / "m.tsv").write_text("hello\thttp://127.0.0.2/x.jpg\n")
    (root / "adir").mkdir()
    (root / "afile").write_text("not a directory\n")
    (root / "corrupt" / "images").mkdir(parents=True)
    (root / "corrupt" / "images" / "part-0.parquet").write_bytes(b"PAR1 this is not a parquet file")
    write_table(root / "keyonly" / "images" / "part-0.parquet", ["key"])
    write_table(root / "table" / "images" / "part-0.parquet", ["key", "dataset", "url", "status"])
    fetched = {c: pa.array(["x"], pa.string()) for c in ("key", "dataset", "url", "status")}
    fetched["fetched_at"] = pa.array([datetime.datetime(2026, 11, 20, 23, 30)], pa.timestamp("us", tz="UTC"))
    (root / "fetched" / "images").mkdir(parents=True)
    pq.write_table(pa.table(fetched), root / "fetched" / "images" / "part-0.parquet")
    (root / "empty-out").mkdir()
    write_table(root / "ingested" / "images" / "part-0.parquet", ["key", "dataset", "url", "status"])
    (root / "ingested" / "summary.json").write_text('{"job": "ingest", "rows": 1}')
    return root


# (job, arguments ({t} = the inputs folder), exit status, fragments of the one line)
BAD_INPUT = {
    "ingest-missing-manifest": (
        "ingest",
        ["--manifest", "cc3m={t}/nope.tsv", "--output", "{t}/o"],
        2,
        ["--manifest", "{t}/nope.tsv", "no file matches"],
    ),
    "ingest-directory-manifest": (
        "ingest",
        ["--manifest", "cc3m={t}/adir", "--output", "{t}/o"],
        2,
        ["{t}/adir", "is a directory"],
    ),
    "ingest-glob-matching-nothing": (
        "ingest",
        ["--manifest", "cc3m={t}/*.nothing", "--output", "{t}/o"],
        2,
        ["no file matches {t}/*.nothing"],
    ),
    "ingest-output-is-a-file": (
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/afile"],
        2,
        ["--output {t}/afile", "existing file"],
    ),
    "ingest-unknown-kind": ("ingest", ["--manifest", "laion={t}/m.tsv", "--output", "{t}/o"], 2, ["'laion'", "cc3m"]),
    "ingest-not-a-number": (
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--timeout", "soon"],
        2,
        ["--timeout", "'soon'"],
    ),
    "ingest-out-of-range": (
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--concurrency", "0"],
        2,
        ["--concurrency must be above 0"],
    ),
    "ingest-too-many-retries": (  # the backoff doubles: --retries 100 waited ~2^99 s on a 503, no end
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--retries", "100"],
        2,
        ["--retries must be at most 10, got 100", "min for one URL"],
    ),
    "ingest-timeout-nan": (  # nan passed "above 0": every row a timeout, exit 0
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--timeout", "nan"],
        2,
        ["--timeout must be a finite number, got nan"],
    ),
    "refresh-max-distance-too-wide": (  # 64: every picture at a URL the snapshot's, a replaced photo alive
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--max-distance", "13"],
        2,
        ["--max-distance must be between 0 and 12, got 13", "alive, never changed"],
    ),
    "ingest-too-many-hash-processes": (  # 1000 processes started at once: out of memory
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--hash-processes", "1000"],
        2,
        ["--hash-processes must be at most 64, got 1000"],
    ),
    "ingest-timeout-in-milliseconds": (  # 30000 s: a silent server held its URL 8 hours
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--timeout", "30000"],
        2,
        ["--timeout must be at most 3600 seconds, got 30000"],
    ),
    "refresh-host-cooldown-too-long": (
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--host-cooldown", "864000"],
        2,
        ["--host-cooldown must be at most 86400 seconds, got 864000"],
    ),
    "refresh-timeout-infinite": (  # inf: no deadline, one silent server held the night forever
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--timeout", "inf"],
        2,
        ["--timeout must be a finite number, got inf"],
    ),
    "ingest-not-a-network": (
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--allow-network", "10.0.0.0/33"],
        2,
        ["--allow-network", "'10.0.0.0/33'"],
    ),
    "ingest-negative-hash-processes": (
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--hash-processes", "-1"],
        2,
        ["--hash-processes must be at least 0"],
    ),
    "ingest-beam-option": (
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--direct_num_workers=many"],
        2,
        ["--direct_num_workers", "'many'"],
    ),
    "ingest-missing-side-file": (
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--cc12m-hashes", "{t}/hashes.tsv"],
        2,
        ["--cc12m-hashes", "{t}/hashes.tsv"],
    ),
    "ingest-nothing-to-do": ("ingest", ["--output", "{t}/o"], 2, ["--manifest"]),
    "ingest-resume-without-table": (
        "ingest",
        ["--resume", "--output", "{t}/empty-out"],
        2,
        ["no table to resume", "{t}/empty-out/images"],
    ),
    "dedup-missing-input": ("dedup", ["--input", "{t}/nope", "--output", "{t}/o3"], 2, ["--input {t}/nope"]),
    "dedup-not-an-ingest-output": (
        "dedup",
        ["--input", "{t}/adir", "--output", "{t}/o3"],
        2,
        ["{t}/adir is not an ingest output", "images/*.parquet"],
    ),
    "dedup-corrupt-parquet": (
        "dedup",
        ["--input", "{t}/corrupt", "--output", "{t}/o3"],
        2,
        ["{t}/corrupt/images/part-0.parquet", "not a readable Parquet file"],
    ),
    "dedup-missing-columns": (
        "dedup",
        ["--input", "{t}/keyonly", "--output", "{t}/o3"],
        2,
        ["{t}/keyonly/images/part-0.parquet", "dataset, url, status"],
    ),
    "dedup-output-is-a-file": (
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/afile"],
        2,
        ["--output {t}/afile", "existing file"],
    ),
    "dedup-output-is-an-input": (
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/table"],
        2,
        ["--output {t}/table", "one of the inputs"],
    ),
    "dedup-bad-distance": (
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--max-distance", "99"],
        2,
        ["--max-distance", "99"],
    ),
    "dedup-unknown-view": (
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--views", "mirror,upside_down"],
        2,
        ["--views", "upside_down"],
    ),
    "dedup-bad-view-distance": (
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--view-max-distance", "65"],
        2,
        ["--view-max-distance", "65"],
    ),
    # Dedup values that passed the range checks but wrecked the run (docs/duplicates.md, "Option values"):
    "dedup-distance-64": (  # was "max_distance must be in [0, 64)" from the near search, no flag named
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--max-distance", "64"],
        2,
        ["--max-distance must be between 0 and 12, got 64", "match by chance"],
    ),
    "dedup-distance-too-wide": (  # was exit 0: with -1 below, one cluster of all 35 demo pictures
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--max-distance", "40", "--dhash-max-distance", "-1"],
        2,
        ["--max-distance must be between 0 and 12, got 40"],
    ),
    "dedup-view-distance-too-wide": (  # 64 did not finish 54 demo rows in 150 s
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--view-max-distance", "9"],
        2,
        ["--view-max-distance must be between 0 and 8, got 9"],
    ),
    "dedup-dhash-distance-out-of-range": (  # 100 was accepted: no confirmation at all
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--dhash-max-distance", "100"],
        2,
        ["--dhash-max-distance must be between 0 and 64, or -1", "100"],
    ),
    "ingest-placeholder-min-urls-1": (  # every picture a placeholder: export skipped them all, exit 0
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--placeholder-min-urls", "1"],
        2,
        ["--placeholder-min-urls must be 0 (the rule off) or at least 3, got 1"],
    ),
    "dedup-cc-rounds-too-many": (  # 200 was "unexpected RecursionError", exit 1
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--cc-rounds", "200"],
        2,
        ["--cc-rounds must be between 0 and 30, got 200"],
    ),
    "dedup-shard-bits-too-many": (  # 16: each query copied to 137 shards a band, x12 the shuffle
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--shard-bits", "16"],
        2,
        ["--shard-bits must be between 0 and 8, got 16"],
    ),
    "dedup-priority-typo": (  # cc3n was ignored: CC3M ranked last instead of first, exit 0
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3", "--dataset-priority", "cc3n,cc12m"],
        2,
        ["--dataset-priority", "unknown dataset cc3n", "cc3m"],
    ),
    "ingest-empty-views": (  # --views "" (an unset variable) silently turned every view off
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--views="],
        2,
        ["argument --views: an empty value", "leave --views out"],  # pipelines/launch/arguments.py
    ),
    "ingest-empty-hash-list": (  # --cc12m-hashes "$HASHES" unset: ingested without the list, exit 0
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o", "--cc12m-hashes", ""],
        2,
        ["argument --cc12m-hashes: an empty value", "leave --cc12m-hashes out"],
    ),
    "refresh-empty-history": (  # --history= : a night judged without the earlier nights, exit 0
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--history="],
        2,
        ["argument --history: an empty value"],
    ),
    "dedup-no-output": ("dedup", ["--input", "{t}/table"], 2, ["--output"]),
    "refresh-not-an-ingest-output": (
        "refresh",
        ["--snapshot", "{t}/adir", "--output", "{t}/r"],
        2,
        ["--snapshot {t}/adir", "images/*.parquet"],
    ),
    "refresh-corrupt-parquet": (
        "refresh",
        ["--snapshot", "{t}/corrupt", "--output", "{t}/r"],
        2,
        ["{t}/corrupt/images/part-0.parquet", "not a readable Parquet file"],
    ),
    "refresh-missing-columns": (
        "refresh",
        ["--snapshot", "{t}/keyonly", "--output", "{t}/r"],
        2,
        ["{t}/keyonly/images/part-0.parquet", "url, status"],
    ),
    "refresh-not-a-network": (
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--allow-network", "loopback"],
        2,
        ["--allow-network", "'loopback'"],
    ),
    "refresh-output-inside-history": (  # --output H/{night}: each run failed "vanished", exit 1
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/h/{{night}}", "--history", "{t}/h", "--night", "2030-01-01"],
        2,
        ["--output {t}/h/2030-01-01", "inside --history {t}/h"],
    ),
    "refresh-night-in-the-future": (  # sorted after every real night of the history, exit 0
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--history", "{t}/h", "--night", "2099-01-01"],
        2,
        ["--night 2099-01-01 is more than a day after today"],
    ),
    "refresh-dead-after-0": (  # was run as 1 while summary.json recorded 0, exit 0
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--dead-after", "0"],
        2,
        ["--dead-after must be at least 1"],
    ),
    "refresh-host-dead-after-0": (
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--host-dead-after", "0"],
        2,
        ["--host-dead-after must be at least 1"],
    ),
    "refresh-placeholder-min-urls-1": (  # every URL redirected to another picture a placeholder: dead
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--placeholder-min-urls", "1"],
        2,
        ["--placeholder-min-urls must be 0 (the rule off) or at least 2"],
    ),
    "refresh-night-before-the-snapshot": (  # judged before its rows were fetched: 19 dead of the demo, exit 0
        "refresh",
        ["--snapshot", "{t}/fetched", "--output", "{t}/r", "--night", "2026-11-01"],
        2,
        ["--night 2026-11-01 is before --snapshot {t}/fetched was fetched", "2026-11-20"],
    ),
    "refresh-output-is-an-ingest-output": (  # its summary.json was replaced by the refresh's, exit 0
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/ingested"],
        2,
        ["--output {t}/ingested", "ingest"],
    ),
    "refresh-history-is-a-file": (  # was "unexpected RuntimeError: NotADirectoryError", exit 1
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--history", "{t}/m.tsv"],
        2,
        ["--history {t}/m.tsv", "file, not a directory"],
    ),
    "refresh-max-distance-out-of-range": (  # -1 called every re-encoded picture changed, behind exit 0
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r", "--max-distance", "-1"],
        2,
        ["--max-distance", "between 0 and 12", "-1"],
    ),
    "refresh-no-output": ("refresh", ["--snapshot", "{t}/table"], 2, ["--output"]),
    # a folder name Beam's FileSystems.match reads as a pattern: every job failed in its run, exit 1
    "ingest-output-with-brackets": (
        "ingest",
        ["--manifest", "cc3m={t}/m.tsv", "--output", "{t}/o [v2]"],
        2,
        ["--output {t}/o [v2]", "[ ]", "read as a pattern"],
    ),
    "dedup-output-with-a-star": (
        "dedup",
        ["--input", "{t}/table", "--output", "{t}/o3*"],
        2,
        ["--output {t}/o3*", "read as a pattern"],
    ),
    "refresh-output-with-brackets": (
        "refresh",
        ["--snapshot", "{t}/table", "--output", "{t}/r [v2]"],
        2,
        ["--output {t}/r [v2]", "read as a pattern"],
    ),
    "export-output-with-brackets": (
        "export",
        ["--input", "{t}/table", "--output", "{t}/e [v2]", "--format", "webdataset"],
        2,
        ["--output {t}/e [v2]", "read as a pattern"],
    ),
    "export-huge-shard-size": (  # one shard of every row: sorted in one worker's memory, nothing in parallel
        "export",
        ["--input", "{t}/table", "--output", "{t}/e", "--format", "webdataset", "--shard-size", "1000000000000"],
        2,
        ["--shard-size must be between 1 and 100000, got 1000000000000"],
    ),
    "export-upscale-over-the-pixel-limit": (  # every picture at least N x N: all skipped too_large, exit 0
        "export",
        ["--input", "{t}/table", "--output", "{t}/e", "--format", "webdataset", "--resize", "100000", "--upscale"],
        2,
        ["--resize 100000 --resize-mode keep_ratio --upscale", "pixel limit"],
    ),
}


# A case per job also runs as `python -m` (the imports take seconds of CPU each: the rest call the
# same main() in this process, which is all `python -m pipelines.<job>` does after its imports).
AS_SUBPROCESS = (
    "ingest-missing-manifest",
    "dedup-corrupt-parquet",
    "refresh-missing-columns",
    "refresh-night-in-the-future",  # with the real date (the tests' refresh_today is in this process)
    "ingest-empty-hash-list",  # the empty value as a shell passes it
)


def run_main(name, args, capsys):
    """main(args) of pipelines.<name> in this process, as CompletedProcess (stderr captured)."""
    module = importlib.import_module(f"pipelines.{name}")
    capsys.readouterr()
    status = module.main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, captured.out, captured.err)


@pytest.fixture(scope="module")
def subprocess_runs(inputs):
    """The AS_SUBPROCESS cases, run at once."""

    def one(case):
        name, args, _status, _fragments = BAD_INPUT[case]
        return case, job(name, *(a.format(t=inputs) for a in args))

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(one, AS_SUBPROCESS))


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(case, inputs, capsys):
    name, args, status, fragments = BAD_INPUT[case]
    done = run_main(name, [a.format(t=inputs) for a in args], capsys)
    assert_one_line(done, status, *(f.format(t=inputs) for f in fragments))


@pytest.mark.parametrize("case", AS_SUBPROCESS)
def test_bad_input_from_the_command_line(case, inputs, subprocess_runs):
    _name, _args, status, fragments = BAD_INPUT[case]
    assert_one_line(subprocess_runs[case], status, *(f.format(t=inputs) for f in fragments))


def test_nothing_is_written_for_bad_input(inputs, capsys):
    for case in BAD_INPUT:
        name, args, _status, _fragments = BAD_INPUT[case]
        run_main(name, [a.format(t=inputs) for a in args], capsys)
    # The checks run before anything is created: no OUT for a run that was refused over its inputs.
    assert not (inputs / "o").exists() and not (inputs / "o3").exists() and not (inputs / "r").exists()
    assert (inputs / "ingested" / "summary.json").read_text() == '{"job": "ingest", "rows": 1}'
    assert sorted(os.listdir(inputs / "ingested")) == ["images", "summary.json"]
    assert not [name for name in os.listdir(inputs) if any(c in name for c in "*?[]")]


HELP = [
    (
        "ingest",
        ["inputs:", "output:", "network:", "dedup:", "progress and report:", "developer:"],
        [
            "--manifest KIND=PATH",
            "--cc12m-hashes",
            "--resume",
            "--timeout",
            "--allow-network",
            "--max-distance",
            "--placeholder-min-urls",
            "--no-progress",
            "--no-report",
            "--debug",
        ],
        "default 8",
    ),
    (
        "dedup",
        ["inputs:", "output:", "dedup:", "developer:"],
        ["--input", "--output", "--max-distance", "--dataset-priority", "--debug"],
        "default 8",
    ),
    (
        "refresh",
        ["inputs:", "output:", "verdicts:", "network:", "developer:"],
        ["--snapshot", "--history", "--night", "--dead-after", "--max-distance", "--timeout", "--debug"],
        "default 6",
    ),
]


def check_help(name, text, groups, options, distance):
    assert text.startswith(f"usage: python -m pipelines.{name} ")
    for heading in groups:
        assert f"\n{heading}\n" in text, heading
    for option in options:
        assert option in text, option
    # Each job says its own default distance (dedup groups pictures; refresh recognises one).
    assert distance in text.split("--max-distance", 1)[1].split("\n  --", 1)[0]
    # Beam's own options are pointed to, not dumped.
    assert "Beam pipeline options (--runner, --project, --region" in text
    assert "beam.apache.org" in text
    assert "--dataflow_endpoint" not in text and "--sdk_container_image" not in text


@pytest.mark.parametrize("name, groups, options, distance", HELP)
def test_help_lists_the_jobs_own_options_by_group(name, groups, options, distance, capsys):
    done = run_main(name, ["--help"], capsys)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    check_help(name, done.stdout, groups, options, distance)


def test_help_from_the_command_line():
    done = job("ingest", "--help")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    check_help(*HELP[0][:1], done.stdout, *HELP[0][1:])


def test_debug_keeps_the_traceback(inputs):
    from pipelines import dedup

    with pytest.raises(BadInput, match="not a readable Parquet file"):
        dedup.main(["--input", str(inputs / "corrupt"), "--output", str(inputs / "o-debug"), "--debug"])
    done = job(
        "ingest",
        "--manifest",
        f"cc3m={inputs}/nope.tsv",
        "--output",
        inputs / "o-debug",
        env={"BEAM_IMAGES_DEBUG": "1"},
    )
    assert done.returncode == 1 and "Traceback (most recent call last)" in done.stderr
    assert "transforms.errors.BadInput" in done.stderr


# ---- the environment ---------------------------------------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(where, options):
    """A small tmpfs at `where` (root only); skips the test where mounting is not allowed."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_read_only_output_is_exit_1_naming_the_path(inputs, tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        done = job("ingest", "--manifest", f"cc3m={inputs}/m.tsv", "--output", ro / "out")
        assert_one_line(done, 1, "read-only file system", ro / "out")


@pytest.fixture
def world_dir():
    """A folder another user can reach (pytest's own tmp folders are private to root)."""
    path = tempfile.mkdtemp(prefix="job-contract-")
    os.chmod(path, 0o755)
    yield path
    subprocess.run(["rm", "-rf", path])


def nobody_can_run_python():
    """Root reads and writes anything: a permission test runs the job as nobody, where it can."""
    try:
        subprocess.run(
            [sys.executable, "-c", "0"], preexec_fn=lambda: os.setuid(NOBODY), check=True, capture_output=True
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def test_forbidden_output_is_exit_1_naming_the_path(world_dir):
    manifest = os.path.join(world_dir, "m.tsv")
    with open(manifest, "w") as handle:
        handle.write("hello\thttp://127.0.0.2/x.jpg\n")
    locked = os.path.join(world_dir, "locked")
    os.mkdir(locked)
    output = os.path.join(locked, "out")
    if os.geteuid() != 0 or nobody_can_run_python():
        os.chmod(locked, 0o555)
        done = job("ingest", "--manifest", f"cc3m={manifest}", "--output", output, as_nobody=os.geteuid() == 0)
        assert_one_line(done, 1, "permission denied", output)
        return
    # Root, and this Python cannot run as another user: an immutable folder refuses even root.
    if subprocess.run(["chattr", "+i", locked], capture_output=True).returncode != 0:
        pytest.skip("root, no other user can run this Python, and chattr +i is not supported here")
    try:
        done = job("ingest", "--manifest", f"cc3m={manifest}", "--output", output)
    finally:
        subprocess.run(["chattr", "-i", locked], capture_output=True)
    assert_one_line(done, 1, "operation not permitted", output)


def test_unreadable_manifest_is_exit_1_the_environment(world_dir):
    """A manifest that is there but refused is the environment failing (CONTRACT: permission is
    exit 1), as the tables' readers say it; it was exit 2, a usage error."""
    if os.geteuid() == 0 and not nobody_can_run_python():
        pytest.skip("root reads any file, and this Python cannot run as another user here")
    manifest = os.path.join(world_dir, "m.tsv")
    with open(manifest, "w") as handle:
        handle.write("hello\thttp://127.0.0.2/x.jpg\n")
    os.chmod(manifest, 0o000)
    done = job(
        "ingest",
        "--manifest",
        f"cc3m={manifest}",
        "--output",
        os.path.join(world_dir, "out"),
        as_nobody=os.geteuid() == 0,
    )
    assert_one_line(done, 1, "cannot read", manifest)


def test_a_manifest_in_a_folder_that_cannot_be_searched_is_exit_1_cannot_read_not_no_such_file(world_dir):
    folder = os.path.join(world_dir, "locked")
    os.mkdir(folder)
    manifest = os.path.join(folder, "m.tsv")
    with open(manifest, "w") as handle:
        handle.write("hello\thttp://127.0.0.2/x.jpg\n")
    args = ["--manifest", f"cc3m={manifest}", "--output", os.path.join(world_dir, "out")]
    if os.geteuid() != 0:
        os.chmod(folder, 0o000)
        done = job("ingest", *args)
    else:
        # Root searches any folder; in a user namespace of its own it is refused one owned by an
        # unmapped user, as any other user is.
        os.chown(folder, 12345, 12345)
        os.chmod(folder, 0o000)
        command = ["unshare", "-r", sys.executable, "-m", "pipelines.ingest", *args]
        env = {k: v for k, v in os.environ.items() if k != "BEAM_IMAGES_DEBUG"}
        try:
            done = subprocess.run(
                command, cwd=REPO, env=dict(env, PYTHONPATH=REPO), capture_output=True, text=True, timeout=240
            )
        except OSError:
            pytest.skip("root, and no unshare here")
        if "unshare:" in done.stderr:
            pytest.skip(f"root, and no user namespace here ({done.stderr.strip()})")
    # Before: "no file matches PATH (no such file)", of a file that is there; then exit 2.
    assert_one_line(done, 1, "cannot read", manifest, "Permission denied")


def test_an_imagenet_root_that_cannot_be_searched_is_exit_1_not_a_row_error_each(tmp_path):
    """Before: every ImageNet-Captions row under a refused --imagenet-root was `connection_error`
    ("cannot read ... Permission denied"), exit 0: a whole dataset of row errors for one chmod."""
    root = tmp_path / "train"
    (root / "n01440764").mkdir(parents=True)
    (root / "n01440764" / "f.JPEG").write_bytes(jpeg(1))
    manifest = tmp_path / "imagenet_captions.json"
    manifest.write_text(json.dumps({"filename": "f.JPEG", "wnid": "n01440764", "title": "fish"}) + "\n")
    os.chmod(root, 0o000)
    try:
        if not job_process.file_modes_bind(str(root / "n01440764")):
            pytest.skip("root here cannot be made to obey file modes (no capability to drop)")
        done = job(
            "ingest",
            "--manifest",
            f"imagenet_captions={manifest}",
            "--imagenet-root",
            root,
            "--output",
            tmp_path / "out",
            obey_file_modes=True,
        )
    finally:
        os.chmod(root, 0o755)
    assert_one_line(done, 1, "--imagenet-root", "cannot read", str(root), "Permission denied")
    assert not (tmp_path / "out" / "images").exists()


def test_full_disk_is_exit_1_naming_the_output(web, tmp_path):
    lines = []
    for n in range(8):
        web.routes[f"/big{n}.jpg"] = Reply(200, jpeg(n, size=(800, 600)), JPEG)  # ~25 KB each
        lines.append(f"photo {n}\t{web.url(f'/big{n}.jpg')}")
    (tmp_path / "cc3m.tsv").write_text("\n".join(lines) + "\n")
    with mounted_tmpfs(tmp_path / "small", "size=96k") as small:
        done = job(
            "ingest",
            "--manifest",
            f"cc3m={tmp_path}/cc3m.tsv",
            "--output",
            small / "out",
            "--allow-network",
            "127.0.0.1/32",
            "--no-progress",
            "--no-report",
        )
        assert_one_line(done, 1, "no space left on device", small / "out")


def test_full_disk_in_a_worker_process_is_one_line_too(tmp_path):
    """The dedup job runs worker processes, which print a failing bundle's traceback to the stderr
    they inherit: the job keeps them off the terminal and says what happened in one line."""
    from tests.dedup_helpers import random_hash, row

    rng = random.Random(7)
    rows = [row(f"cc3m:{n}", phash=random_hash(rng), dhash=random_hash(rng)) for n in range(300)]
    for r in rows:
        r["caption"] = "a caption long enough to fill a small disk " * 4
    (tmp_path / "in" / "images").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA),
        tmp_path / "in" / "images" / "part-0.parquet",
    )
    with mounted_tmpfs(tmp_path / "small", "size=12k") as small:
        done = job("dedup", "--input", tmp_path / "in", "--output", small / "out3", "--direct_num_workers=1")
        assert_one_line(done, 1, "no space left on device", small / "out3")


# ---- Ctrl-C -------------------------------------------------------------------------------------


def keys_of(out):
    return sorted(ds.dataset(os.path.join(out, "images"), format="parquet").to_table().column("key").to_pylist())


def test_ctrl_c_stops_at_once_with_one_line_and_resume_completes(web, tmp_path):
    lines = []
    for n in range(6):
        web.routes[f"/ok{n}.jpg"] = Reply(200, jpeg(n), JPEG)
        lines.append(f"photo {n}\t{web.url(f'/ok{n}.jpg')}")
    web.routes["/later.jpg"] = Reply(404, b"")
    lines.append(f"later\t{web.url('/later.jpg')}")
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    common = [
        "--output",
        str(out),
        "--allow-network",
        "127.0.0.1/32",
        "--no-progress",
        "--no-report",
        "--timeout",
        "120",
        "--retries",
        "0",
    ]
    # why in process: this first run is the starting point; the runs the test is about are commands
    assert ingest.main(["--manifest", f"cc3m={manifest}", *common]) == 0
    first = keys_of(out)
    assert len(first) == 7

    # The resume fetches /later.jpg again, which now hangs: interrupt it while it waits.
    web.routes["/later.jpg"] = Reply(200, jpeg(9), JPEG, delay=60)
    environment = dict(os.environ, PYTHONPATH=REPO)
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.ingest", "--resume", "--manifest", f"cc3m={manifest}", *common],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while web.hits.get("/later.jpg", 0) < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert web.hits.get("/later.jpg", 0) >= 2, "the resume never fetched /later.jpg"
        children = console.descendants(process.pid)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert elapsed < 2.0, f"took {elapsed:.1f}s to stop"
    assert process.returncode == 130
    assert "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("ingest: interrupted") and "--resume" in line
    time.sleep(0.5)
    assert job_process.left_running(children) == []
    assert keys_of(out) == first  # the last finished table is still whole

    web.routes["/later.jpg"] = Reply(200, jpeg(9), JPEG)
    done = job("ingest", "--resume", "--manifest", f"cc3m={manifest}", *common)
    assert done.returncode == 0, done.stderr[-3000:]
    assert keys_of(out) == first
    statuses = ds.dataset(os.path.join(out, "images"), format="parquet").to_table().column("status").to_pylist()
    assert statuses == ["ok"] * 7


# ---- what the runner makes of a DoFn's exception -------------------------------------------------


def _fail(kind, path):
    def fail(_element):
        if kind == "bad":
            raise BadInput(f"{path}: line 3 is not a row")
        if kind == "books":
            raise BooksUnbalanced(f"{path}: 3 records read, 2 rows written")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    return fail


@pytest.mark.parametrize("mode", ["in_process", "multi_processing"])
def test_describe_unwraps_what_the_runner_raises(mode, tmp_path):
    args = ["--runner=FnApiRunner"]
    if mode == "multi_processing":
        args += ["--direct_running_mode=multi_processing", "--direct_num_workers=1"]
    kinds = ["bad", "nospace"] if mode == "in_process" else ["books"]
    for kind in kinds:
        path = str(tmp_path / f"{kind}.tsv")
        with pytest.raises(Exception) as raised:
            with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
                _ = pipeline | beam.Create([1]) | "Fail" >> beam.Map(_fail(kind, path))
        if mode == "multi_processing":  # the worker's traceback as the text of a RuntimeError
            assert type(raised.value) is RuntimeError and "Traceback" in str(raised.value)
        status, line = failures.describe(raised.value)
        expected = {
            "bad": (2, f"{path}: line 3 is not a row"),
            "books": (1, f"{path}: 3 records read, 2 rows written"),
            "nospace": (1, f"no space left on device: {path}"),
        }[kind]
        assert (status, line) == expected


def test_describe_classifies_driver_errors():
    assert failures.describe(ValueError("--night must be YYYY-MM-DD"))[0] == 2
    pipeline_bug = ValueError("bad row")
    failures.mark_pipeline_failure(pipeline_bug)
    status, line = failures.describe(pipeline_bug)
    assert status == 1 and "unexpected ValueError" in line and "--debug" in line
    assert failures.describe(PermissionError(errno.EACCES, "Permission denied", "/x/y")) == (
        1,
        "permission denied: /x/y",
    )
    assert failures.describe(KeyboardInterrupt())[0] == 130
    assert failures.describe(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))[0] == 1


def test_a_listing_that_fails_is_the_environment_not_a_missing_file(monkeypatch):
    from apache_beam.io.filesystem import BeamIOError
    from google.api_core.exceptions import RetryError

    from pipelines.launch import preflight
    from transforms.errors import EnvironmentFailure

    def unreachable(patterns):
        raise BeamIOError("Match operation failed", {patterns[0]: RetryError("Timeout of 120.0s exceeded", None)})

    monkeypatch.setattr(preflight.FileSystems, "match", unreachable)
    with pytest.raises(EnvironmentFailure) as raised:
        preflight.check_input_files("--manifest cc3m=gs://b/m.tsv", "gs://b/m.tsv")
    assert failures.describe(raised.value) == (
        1,
        "storage unreachable: cannot list gs://b/m.tsv (RetryError: Timeout of 120.0s exceeded, last exception: None)",
    )


@pytest.mark.parametrize(
    "order",
    [
        "ingest dedup refresh export",
        "export dedup ingest refresh",
        "refresh export ingest dedup",
        "dedup export refresh ingest",
    ],
)
def test_every_jobs_options_register_together_in_any_import_order(order):
    """Beam parses every imported PipelineOptions subclass into one parser, in import order: a flag
    two jobs share (--input of dedup and export, --output, ...) must not conflict whichever comes
    first (a process importing export before dedup could not run any job)."""
    import argparse

    classes = {
        "ingest": "IngestOptions",
        "dedup": "DedupOptions",
        "refresh": "RefreshOptions",
        "export": "ExportOptions",
    }
    parser = argparse.ArgumentParser()
    for name in order.split():
        module = importlib.import_module(f"pipelines.{name}")
        getattr(module, classes[name])._add_argparse_args(parser)
    parser.parse_known_args(["--input", "a", "--output", "b"])

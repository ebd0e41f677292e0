"""A mistyped option is a usage error in every job, and Beam's own options still pass.

Beam only logs "Discarding unparseable args" for what it cannot parse: `dedup --max-distnace 4`
ran with the default distance and `refresh --dead-afer 5` with the default --dead-after 2, exit 0.
Now (pipelines/launch/arguments.py) an argument that is neither the job's own option nor a Beam
pipeline option is exit 2 and one line naming it, with the option meant. End to end here: each job
as `python -m`, on a real ingest output served from loopback, with a typo (refused, nothing
written, no lease) and with Beam options of several option classes (accepted, the run completes).
"""

import concurrent.futures
import json
import os

import pytest

from pipelines import dedup, export, ingest, refresh
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.job_process import job
from transforms.errors import BadInput

pytestmark = pytest.mark.timeout(300)

JPEG = {"Content-Type": "image/jpeg"}
NET = ["--allow-network", "127.0.0.1/32"]


def beam_options(tmp):
    """Legitimate Beam options of four option classes (DirectOptions, DebugOptions,
    GoogleCloudOptions, WorkerOptions): none may be refused, and none changes a local run."""
    return [
        "--direct_num_workers=1",
        "--experiments=x",
        "--experiments",
        "y",
        f"--temp_location={tmp}/beam-temp",
        "--number_of_worker_harness_threads=2",
    ]


def tree(path):
    """{relative path: (size, mtime)} of everything under `path` (the lease file included)."""
    found = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            found[os.path.relpath(full, path)] = (os.path.getsize(full), os.stat(full).st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An ingest output made with Beam options on the command line (the first 'still pass' case),
    and the web server that served it, still up for the refresh."""
    tmp = tmp_path_factory.mktemp("options")
    routes = {f"/{n}.jpg": Reply(200, jpeg(n, (120, 90)), JPEG) for n in range(4)}
    with SampleWebServer(routes) as web:
        (tmp / "m.tsv").write_text("".join(f"caption {n}\t{web.url(f'/{n}.jpg')}\n" for n in range(4)))
        out = tmp / "out"
        done = job("ingest", "--manifest", f"cc3m={tmp / 'm.tsv'}", "--output", out, *NET, *beam_options(tmp))
        assert done.returncode == 0, done.stderr[-3000:]
        yield tmp, out, done


# job -> (arguments with {t} = tmp, {o} = the ingest output; the typo; the line's fragments)
TYPOS = {
    "ingest": (["--manifest", "cc3m={t}/m.tsv", *NET, "--retires", "0"], "--retires", "--retries"),
    "dedup": (["--input", "{o}", "--max-distnace", "4"], "--max-distnace", "--max-distance"),
    "refresh": (["--snapshot", "{o}", *NET, "--dead-afer", "5"], "--dead-afer", "--dead-after"),
    "export": (["--input", "{o}", "--format", "webdataset", "--shard-sise=16"], "--shard-sise", "--shard-size"),
}


def test_a_typo_is_exit_2_in_one_line_and_writes_nothing(world):
    tmp, out, _ = world
    before = tree(out)
    targets = {}
    for name in TYPOS:
        targets[name] = tmp / f"typo-{name}"
        targets[name].mkdir()
        (targets[name] / "keep.txt").write_text("an earlier file\n")

    def one(name):
        args, _, _ = TYPOS[name]
        argv = [a.format(t=tmp, o=out) for a in args] + ["--output", targets[name]]
        return name, job(name, *argv)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(pool.map(one, TYPOS))
    for name, done in runs.items():
        _, typo, meant = TYPOS[name]
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, f"{name}: exit {done.returncode}\n{done.stderr[-3000:]}"
        assert lines == [f"{name}: unknown option {typo} (did you mean {meant}?)"], done.stderr[-3000:]
        assert sorted(os.listdir(targets[name])) == ["keep.txt"], name  # no table, no _LEASE
    assert tree(out) == before  # the inputs untouched too


def test_beam_options_pass_in_every_job(world):
    tmp, out, ingested = world
    assert "Unparseable" not in ingested.stderr and "Discarding" not in ingested.stderr
    with open(out / "summary.json") as handle:
        assert json.load(handle)["rows"] == 4
    runs = {
        "dedup": ["--input", out, "--output", tmp / "o3"],
        "refresh": ["--snapshot", out, "--output", tmp / "r", *NET],
        "export": ["--input", out, "--output", tmp / "exp", "--format", "webdataset"],
    }
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(pool.map(lambda n: (n, job(n, *runs[n], *beam_options(tmp))), runs))
    for name, run in done.items():
        assert run.returncode == 0, f"{name}: {run.stderr[-3000:]}"
        assert "Unparseable" not in run.stderr and "Discarding" not in run.stderr, run.stderr[-3000:]
    assert os.path.exists(tmp / "o3" / "summary.json") and os.path.exists(tmp / "r" / "summary.json")
    assert os.path.exists(tmp / "exp" / "summary.json")


# ---- how arguments are read (the parser alone: no run) ---------------------------------------------

BASE = ["--input", "in", "--output", "out"]


def refused(argv, parse=dedup.JOB.parse):
    with pytest.raises(BadInput) as failure:
        parse(BASE + argv)
    return str(failure.value)


def test_each_spelling_of_an_unknown_option_is_named():
    assert refused(["--max-distnace=4"]) == "unknown option --max-distnace (did you mean --max-distance?)"
    # The template parameter spelling is not the command line's: said, not guessed.
    assert refused(["--max_distance", "4"]) == "unknown option --max_distance (did you mean --max-distance?)"
    assert refused(["--runer=DataflowRunner"]) == "unknown option --runer (did you mean --runner?)"
    assert refused(["-x"]) == "unknown option -x"
    assert refused(["--zzzz"]) == "unknown option --zzzz"  # nothing close: no guess


def test_abbreviations_are_refused_as_beam_refuses_them():
    # Beam's own parser has allow_abbrev=False: an abbreviation would be dropped there silently.
    assert refused(["--max-dist", "4"]) == "unknown option --max-dist (did you mean --max-distance?)"
    assert refused(["--dataset-prio", "cc3m"]).startswith("unknown option --dataset-prio")


def test_a_stray_value_is_refused():
    assert refused(["4"]).startswith("unexpected argument '4'")
    assert refused(["--", "--max-distance", "4"]).startswith("unexpected argument '--'")


def test_another_jobs_option_is_refused_though_registered_in_this_process():
    # This process imported all four jobs, so Beam's own parser knows --dead-after here; a
    # `python -m pipelines.dedup` would not: the check must not depend on what was imported.
    assert refused(["--dead-after", "5"]) == "unknown option --dead-after"
    assert refused(["--snapshot", "s"], parse=export.JOB.parse) == "unknown option --snapshot"


def test_a_value_that_looks_like_an_option():
    # After an option that takes a value, "--max-distance" is not taken as that value...
    assert refused(["--views", "--max-distance", "4"]) == "argument --views: expected one argument"
    # ... unless spelt as one argument; a negative number is a value.
    _, opts = dedup.JOB.parse(BASE + ["--dataset-priority=--odd", "--max-distance", "-1"])
    assert (opts.dataset_priority, opts.max_distance) == ("--odd", -1)


# job -> (a command line it accepts, a single-value option of its own, two values for it as parsed)
TWICE = {
    "ingest": (["--manifest", "cc3m=m.tsv", "--output", "o"], "--output", "o", "elsewhere"),
    "dedup": (BASE, "--max-distance", 4, 8),
    "refresh": (["--snapshot", "s", "--output", "o"], "--dead-after", 2, 5),
    "export": (["--input", "i", "--output", "o"], "--format", "webdataset", "hf-parquet"),
}
JOBS = {"ingest": ingest, "dedup": dedup, "refresh": refresh, "export": export}


@pytest.mark.parametrize("name", sorted(TWICE))
def test_a_single_value_option_given_twice_with_two_values_is_refused(name):
    """`--output A ... --output B` (a long command line edited in a scheduler) ran with the last value,
    exit 0: the first OUT silently not written, or dedup at another distance than the one read first."""
    base, flag, first, second = TWICE[name]
    for argv in ([flag, str(first), flag, str(second)], [f"{flag}={first}", f"{flag}={second}"]):
        with pytest.raises(BadInput) as failure:
            JOBS[name].JOB.parse(base + argv)
        assert str(failure.value) == f"argument {flag}: given twice, {first!r} and then {second!r}: give it once"


# job -> (a command line it accepts, options of its own that take a text value)
EMPTY = {
    "ingest": (TWICE["ingest"][0], ["--cc12m-hashes", "--cc3m-labels", "--openimages-labels", "--retry-status"]),
    "dedup": (BASE, ["--drop-dead", "--dataset-priority"]),
    "refresh": (TWICE["refresh"][0], ["--history"]),
    "export": (TWICE["export"][0], ["--split"]),
}


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_an_empty_value_is_refused(name):
    """`--cc12m-hashes "$HASHES"` with the variable unset ran without the hash list (no hash_mismatch
    verdict), `--history ""` a nightly refresh without its history, `--drop-dead ""` dedup keeping the
    dead rows, `--split ""` an export without its split: exit 0 each, the option silently off."""
    base, flags = EMPTY[name]
    for flag in flags:
        for argv in ([flag, ""], [f"{flag}="], [f"{flag}=  "]):
            with pytest.raises(BadInput) as failure:
                JOBS[name].JOB.parse(base + argv)
            assert str(failure.value) == (
                f"argument {flag}: an empty value (a shell variable unset?): give one, or leave {flag} out"
            ), argv


def test_a_path_beginning_with_a_tilde_is_refused():
    """`--output=~/out` (the shell expands ~ only at a word's start, not after `=`): the ingest wrote
    into a folder named `~` in the working directory, exit 0, its summary naming `~/out`; a refresh
    `--history=~/h` started another history in each working directory it ran from."""
    with pytest.raises(BadInput) as failure:
        dedup.JOB.parse(["--input", "in", "--output=~/out3"])
    assert str(failure.value) == (
        "argument --output: '~/out3' begins with ~, which the shell expands only at the start of a word"
        " (not after --output=): give it as $HOME/out3"
    )
    with pytest.raises(BadInput) as failure:
        refresh.JOB.parse(["--snapshot", "s", "--output", "o", "--history=~night/h"])
    assert str(failure.value).startswith("argument --history: '~night/h' begins with ~")


def test_an_option_given_twice_with_one_value_passes_and_repeatables_keep_all():
    _, opts = dedup.JOB.parse(BASE + ["--max-distance", "5", "--max-distance=05"])  # one value, two spellings
    assert opts.max_distance == 5
    _, opts = dedup.JOB.parse(["--input", "a", "--input=b", "--output", "o"])
    assert opts.input == ["a", "b"]
    _, opts = ingest.JOB.parse(["--manifest=cc3m=a", "--manifest=cc3m=b", "--output", "o", *NET, *NET])
    assert opts.manifest == ["cc3m=a", "cc3m=b"]
    # Beam's own options keep Beam's rule (the last wins; `append` ones keep all): launchers add theirs
    options, _ = dedup.JOB.parse(BASE + ["--experiments=a", "--experiments=b", "--region=x", "--region=y"])
    assert options.get_all_options()["experiments"] == ["a", "b"]
    assert options.get_all_options()["region"] == "y"


def test_an_output_given_twice_writes_nothing_anywhere(world):
    """End to end, as the operator runs it: exit 2, one line, neither OUT written, no lease."""
    tmp, out, _ = world
    first, second = tmp / "twice-a", tmp / "twice-b"
    done = job("dedup", "--input", out, "--output", first, "--output", second)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        f"dedup: argument --output: given twice, {str(first)!r} and then {str(second)!r}: give it once"
    ]
    assert not first.exists() and not second.exists()


@pytest.mark.parametrize("parse", [ingest.JOB.parse, dedup.JOB.parse, refresh.JOB.parse, export.JOB.parse])
def test_options_of_every_beam_option_class_pass(parse):
    argv = [
        "--runner=DataflowRunner",  # StandardOptions
        "--project=p",  # GoogleCloudOptions
        "--region",
        "europe-west4",
        "--temp_location=gs://b/tmp",
        "--sdk_container_image=img",  # WorkerOptions
        "--max_num_workers=3",
        "--no_use_public_ips",
        "--experiments=a",  # DebugOptions
        "--setup_file=./setup.py",  # SetupOptions
        "--direct_num_workers=1",  # DirectOptions
        "--job_endpoint=localhost:1",  # PortableOptions
        "--environment_type=EXTERNAL",
        "--no_wait_until_finish",
        "--debug",  # the jobs' own, also when run() is called directly
    ]
    options, _ = parse(["--output=gs://b/o"] + argv)
    assert options.get_all_options()["max_num_workers"] == 3


def test_a_malformed_beam_value_is_still_one_line():
    assert refused(["--direct_num_workers=many"]) == "argument --direct_num_workers: invalid int value: 'many'"

"""Shared fixtures: a real loopback web server and helpers to run pipelines locally."""

import datetime
import os
from unittest import mock

import pytest

os.environ.setdefault("NO_GCE_CHECK", "true")

from pipelines.demo.sample_site import SampleWebServer  # noqa: E402
from pipelines.launch.beam_introspection_memo import memoised_beam_introspection  # noqa: E402
from tests.gcs_emulator import gcs_emulator  # noqa: E402,F401  (a fixture for every test module)
from transforms import hashing  # noqa: E402
from transforms.liveness import verdicts  # noqa: E402

# The tests' refresh nights are in 2030 (synthetic snapshots are fetched 2030-01-01, and three nights
# must follow a real ingest by days); a refresh refuses a --night more than a day after today.
TESTS_TODAY = datetime.date(2031, 1, 1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "dataflow: builds a Dataflow job offline (seconds each; -m 'not dataflow' skips)"
    )
    config.addinivalue_line(
        "markers", "beam_unmemoised: Beam's introspection is not memoised around this test (its own tests)"
    )
    config.addinivalue_line(
        "markers",
        "cluster: runs every job on the offline cluster (minutes; `make cluster-test`, "
        "or -m cluster; skipped otherwise)",
    )


def pytest_collection_modifyitems(config, items):
    """The cluster test runs only when asked for (-m cluster): it takes minutes."""
    if "cluster" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="the offline cluster test: run `make cluster-test` (or pytest -m cluster)")
    for item in items:
        if item.get_closest_marker("cluster") is not None:
            item.add_marker(skip)


@pytest.fixture
def web():
    """A real HTTP server on 127.0.0.1; tests set `web.routes[path] = Reply(...)`."""
    with SampleWebServer() as server:
        yield server


def local_options(**extra):
    """Beam options for a fast in-process run (tests only; jobs default to multi-processing)."""
    args = ["--runner=FnApiRunner"]
    for name, value in extra.items():
        if isinstance(value, (list, tuple)):
            args += [f"--{name}={v}" for v in value]
        elif value is True:
            args.append(f"--{name}")
        else:
            args.append(f"--{name}={value}")
    return args


def local_or_gs(where, tmp_path, request, bucket, folder):
    """A folder for a test run both ways: `tmp_path/folder`, or `gs://bucket/folder` on the GCS
    emulator (the bucket made) when `where` is "gs"."""
    if where == "gs":
        request.getfixturevalue("gcs_emulator").bucket(bucket)
        return f"gs://{bucket}/{folder}"
    return str(tmp_path / folder)


@pytest.fixture(autouse=True)
def refresh_today():
    """Today is TESTS_TODAY for refresh runs in this process (a `python -m` subprocess keeps the
    real date: tests/pipelines/test_job_contract.py runs a night after tomorrow there)."""
    with mock.patch.object(verdicts, "utc_today", return_value=TESTS_TODAY):
        yield TESTS_TODAY


@pytest.fixture(scope="session", autouse=True)
def one_hash_process():
    """An ingest run in this process starts one hash worker process, not one per core: the suite
    runs a pytest worker per core already, and each hash worker costs ~0.6 CPU s to start (Python,
    Pillow, scipy), ~0.7 of a 5-row ingest's ~3.8 CPU s for the second. The workers stay real
    processes; pools of two are tested by name (tests/transforms/test_hash_workers.py), and a
    `python -m` run keeps the job's default. Session-wide: the module fixtures' ingests too."""
    with mock.patch.object(hashing, "default_processes", return_value=1):
        yield


@pytest.fixture(autouse=True)
def beam_introspection_memo(request):
    """Every test's in-process pipelines run with the memo of Beam's introspection that every job
    run has (pipelines/launch/job_runner.py): a third of a small graph's construction and bundle
    set-up otherwise (a 5-row dedup through tests/dedup_helpers.py: 2.9 s -> 1.9 s). Beam's answers
    are the same with it (tests/pipelines/test_beam_introspection_memo.py, which opts out with the
    `beam_unmemoised` marker to see Beam's own functions)."""
    if request.node.get_closest_marker("beam_unmemoised") is not None:
        yield
        return
    with memoised_beam_introspection():
        yield

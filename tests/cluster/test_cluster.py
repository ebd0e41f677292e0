"""The Dataflow path executed offline (deploy/cluster/): every job submitted through the Flex Template
entry to Beam's job service, run by two external workers in their own mount namespace from an
environment built like the image, gs:// through the emulator; outputs equal the local runner's.

Marked `cluster`: `make cluster-test` runs it (minutes: the first run also builds the worker
environment); plain `pytest tests` skips it unless `-m cluster` is given.
"""
import json
import os
import pathlib
import shutil

import pytest

from deploy.cluster import cluster_check, worker_env

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("the cluster test needs root and unshare(1) (private mount namespaces for the workers)")
    run_dir = tmp_path_factory.mktemp("cluster")
    result = cluster_check.run_all(run_dir)
    print(json.dumps(result, indent=2))
    return result


def test_worker_env_follows_the_dockerfile_build_stage():
    """The builder mirrors these exact build-stage commands: a change of the Dockerfile must be
    carried over to deploy/cluster/worker_env.py (and changes the cache key)."""
    assert worker_env.dockerfile_build_commands() == list(worker_env.DOCKERFILE_BUILD_STAGE)


@pytest.mark.parametrize("job", ["ingest", "dedup", "refresh"])
def test_job_on_the_cluster_equals_the_local_runner(report, job):
    run = report["jobs"][job]
    assert run["skipped"] is None
    assert run["cluster_seconds"] > 0 and run["local_seconds"] > 0
    assert run["differences"] == []


def test_flex_launcher_returns_before_the_job_ends(report):
    for job in ("ingest", "refresh"):
        run = report["jobs"][job]
        assert run["launch_seconds"] < run["cluster_seconds"]


def test_export_runs_or_says_why_not(report):
    run = report["jobs"]["export"]
    if run["skipped"]:
        assert run["skipped"] == "pipelines/export.py does not exist in this checkout"
        assert not (pathlib.Path(worker_env.REPO) / "pipelines" / "export.py").exists()
    else:
        assert run["differences"] == []

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


def test_the_runs_did_real_work(report):
    """Equal outputs mean something only if there were outputs: every dataset fetched, clusters
    found, and the second night saw what changed on the web."""
    ingest = report["jobs"]["ingest"]["figures"]
    assert ingest["rows"] == 54 and ingest["blobs"] > 20
    assert sorted(ingest["counts"]) == ["cc12m", "cc3m", "imagenet_captions", "openimages", "zero"]
    assert all(per.get("ok", 0) > 0 for per in ingest["counts"].values())
    dedup = report["jobs"]["dedup"]["figures"]
    assert dedup["rows"] == 54 and dedup["clusters"] > 0
    nights = sorted(report["jobs"]["refresh"]["figures"])  # cluster_check.refresh_nights of that run
    assert len(nights) == 2
    first, second = (report["jobs"]["refresh"]["figures"][night] for night in nights)
    assert first["previous_night"] is None and second["previous_night"] == nights[0]
    assert second["newly_dead"] >= 1 and second["changed"] >= 1


def test_workers_ran_in_their_own_mount_namespace(report):
    mounts = report["worker_mounts"]
    env = mounts.pop("/mnt/env")
    assert env.endswith(" at /mnt/env") and not env.startswith("tmpfs"), env  # the bind-mounted worker env
    assert mounts.pop("/tmp") == "tmpfs at /tmp"
    assert str(worker_env.REPO) in mounts
    for path, mount in mounts.items():  # the checkout, the launcher's venv, the launcher's folders
        assert mount.startswith("tmpfs at "), (path, mount)

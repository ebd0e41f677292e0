"""The cluster test's parts that run in seconds (tests/cluster/ runs the cluster itself)."""

import io
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

from deploy.cluster import cluster_check, worker_env
from deploy.cluster.metadata_stub import MetadataStub
from tests.paths import REPO


def test_metadata_stub_gives_a_separate_process_credentials_at_once():
    with MetadataStub() as stub:
        env = dict(os.environ, **stub.env, PYTHONPATH=REPO)
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                "import google.auth, google.auth.transport.requests as r;"
                "c, p = google.auth.default(); c.refresh(r.Request()); print(p, c.token)",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert done.stdout.split() == ["offline-project", "offline-token"], done.stderr
    assert time.monotonic() - started < 20  # without it: ~25 s of retries, then no credentials


def _parquet(rows):
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def test_rows_compare_without_timings_and_output_names():
    cluster = {
        "images/a.parquet": _parquet(
            [
                {"key": "k1", "status": "ok", "blob": "gs://b/cluster/ingest/blobs/ab.jpg", "fetch_ms": 5},
                {"key": "k2", "status": "timeout", "blob": None, "fetch_ms": 3000},
            ]
        )
    }
    local = {
        "images/x.parquet": _parquet([{"key": "k2", "status": "timeout", "blob": None, "fetch_ms": 2900}]),
        "images/y.parquet": _parquet(
            [{"key": "k1", "status": "ok", "blob": "gs://b/local/ingest/blobs/ab.jpg", "fetch_ms": 9}]
        ),
    }
    rows_c = cluster_check.parquet_rows(cluster, "gs://b/cluster/ingest")
    rows_l = cluster_check.parquet_rows(local, "gs://b/local/ingest")
    assert cluster_check.compare("rows", rows_c, rows_l) == []
    local["images/y.parquet"] = _parquet([{"key": "k1", "status": "http_error", "blob": None, "fetch_ms": 1}])
    differences = cluster_check.compare("rows", rows_c, cluster_check.parquet_rows(local, "gs://b/local/ingest"))
    assert len(differences) == 1 and '"status": "http_error"' in differences[0]


def test_parameters_are_checked_against_the_template_metadata():
    cluster_check.check_parameters("ingest", {"output": "gs://bucket/out", "allow_network": "127.0.0.1/32"})
    for bad in ({"output": "/local/out"}, {"no_such_option": "1"}):
        try:
            cluster_check.check_parameters("ingest", bad)
        except cluster_check.ClusterError:
            continue
        raise AssertionError(f"{bad} accepted")


def test_worker_env_cache_key_follows_setup_py(monkeypatch, tmp_path):
    key = worker_env.cache_key()
    (tmp_path / "deploy").mkdir()
    (tmp_path / "setup.py").write_text((worker_env.REPO / "setup.py").read_text() + "\n# changed\n")
    (tmp_path / "deploy" / "wheel_requirements.py").write_bytes(
        (worker_env.REPO / "deploy" / "wheel_requirements.py").read_bytes()
    )
    (tmp_path / "Dockerfile").write_bytes((worker_env.REPO / "Dockerfile").read_bytes())
    monkeypatch.setattr(worker_env, "REPO", tmp_path)
    assert worker_env.cache_key() != key

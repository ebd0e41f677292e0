"""Ingest end to end with manifests and output on gs:// (GCS emulator on loopback, Beam's gcsio)."""

import hashlib
import io
import json
import tempfile

import pyarrow.parquet as pq
import pytest

from pipelines import ingest
from pipelines.demo.sample_site import Reply, jpeg
from tests.conftest import local_options
from transforms import schema

BUCKET = "ingest-e2e"


def test_ingest_reads_and_writes_gs(web, gcs_emulator, tmp_path, monkeypatch):
    scratch = _scratch(tmp_path, monkeypatch)
    bucket = gcs_emulator.bucket(BUCKET)
    bodies = {n: jpeg(n) for n in range(3)}
    for n, body in bodies.items():
        web.routes[f"/g{n}.jpg"] = Reply(200, body, {"Content-Type": "image/jpeg"})
    manifest = (
        "".join(f"{web.url(f'/g{n}.jpg')}\tphoto {n}\n" for n in bodies)
        + f"{web.url('/g0.jpg')}\tagain\n"
        + f"{web.url('/missing.jpg')}\tdead\n"
    )
    bucket.blob("manifests/cc12m.tsv").upload_from_string(manifest)
    out = f"gs://{BUCKET}/out"
    ingest.run(
        local_options(
            manifest=f"cc12m=gs://{BUCKET}/manifests/cc12m.tsv",
            output=out,
            **{"allow-network": "127.0.0.1/32", "no-progress": True},
        )
    )

    names = {blob.name for blob in gcs_emulator.client().list_blobs(BUCKET)}
    summary = json.loads(bucket.blob("out/summary.json").download_as_bytes())
    assert summary["counts"] == {"cc12m": {"ok": 4, "http_error": 1}}
    tables = [
        pq.read_table(io.BytesIO(bucket.blob(n).download_as_bytes()))
        for n in names
        if n.startswith("out/images/") and n.endswith(".parquet")
    ]
    rows = [r for t in tables for r in t.to_pylist()]
    assert sorted(r["key"] for r in rows) == [f"cc12m:{n}" for n in range(1, 6)]
    blobs = {r["blob"] for r in rows if r["status"] == schema.OK}
    assert len(blobs) == 3 and all(b.startswith(f"gs://{BUCKET}/out/blobs/") for b in blobs)
    for uri in blobs:
        body = bucket.blob(uri[len(f"gs://{BUCKET}/") :]).download_as_bytes()
        assert hashlib.sha256(body).hexdigest() in uri
    assert not [n for n in names if "/_tmp-" in n or ".tmp-" in n]  # temporary shards and blobs cleaned
    assert "out/report.html" in names
    assert not list(scratch.iterdir())  # the local spill of a gs:// OUT went with the run


def _scratch(tmp_path, monkeypatch):
    """A TMPDIR of the test's own: the local spill of a run writing to gs:// is made there."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def test_a_failed_ingest_to_gs_leaves_no_local_spill(web, gcs_emulator, tmp_path, monkeypatch):
    """The run fails after dedup's key records went to its local spill: nothing is left in TMPDIR
    (it was a folder per run, left behind by every run that did not finish)."""
    from transforms.clustering import clusters

    scratch = _scratch(tmp_path, monkeypatch)
    gcs_emulator.bucket("ingest-fails")
    web.routes["/f.jpg"] = Reply(200, jpeg(7), {"Content-Type": "image/jpeg"})
    manifest = tmp_path / "cc12m.tsv"
    manifest.write_text(f"{web.url('/f.jpg')}\tphoto\n")
    spilled = []

    def fail(self, element):
        spilled.extend(scratch.glob("ingest-spill-*/*"))
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(clusters._KeyShard, "process", fail)
    with pytest.raises(Exception, match="disk on fire"):
        ingest.run(
            local_options(
                manifest=f"cc12m={manifest}",
                output="gs://ingest-fails/out",
                **{"allow-network": "127.0.0.1/32", "no-progress": True},
            )
        )
    assert spilled  # there was something to remove
    assert not list(scratch.iterdir())


def test_a_folder_placeholder_in_a_gs_manifest_glob_is_no_manifest(web, gcs_emulator, tmp_path, monkeypatch):
    """`in/`, the empty object the Cloud Console's "Create folder" leaves, matches `in/*`: it was taken
    for a manifest file and read (its name normalised to `in`, no such object): exit 1. Now it is no
    file: exit 0, the keys (cc12m:1, not cc12m:m.tsv:1) and books of the one manifest."""
    _scratch(tmp_path, monkeypatch)
    bucket = gcs_emulator.bucket("folder-placeholder")
    bucket.blob("in/").upload_from_string(b"")
    for n in range(2):
        web.routes[f"/h{n}.jpg"] = Reply(200, jpeg(40 + n), {"Content-Type": "image/jpeg"})
    bucket.blob("in/m.tsv").upload_from_string("".join(f"{web.url(f'/h{n}.jpg')}\tphoto {n}\n" for n in range(2)))
    status = ingest.main(
        local_options(
            manifest="cc12m=gs://folder-placeholder/in/*",
            output="gs://folder-placeholder/out",
            **{"allow-network": "127.0.0.1/32", "no-progress": True, "no-report": True},
        )
    )
    assert status == 0
    summary = json.loads(bucket.blob("out/summary.json").download_as_bytes())
    assert [entry["path"] for entry in summary["books"]["files"]] == ["gs://folder-placeholder/in/m.tsv"]
    names = [b.name for b in bucket.list_blobs(prefix="out/images/") if b.name.endswith(".parquet")]
    keys = [r["key"] for n in names for r in pq.read_table(io.BytesIO(bucket.blob(n).download_as_bytes())).to_pylist()]
    assert sorted(keys) == ["cc12m:1", "cc12m:2"]

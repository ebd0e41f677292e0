"""Export with its input table, blobs and output on gs:// (GCS emulator on loopback, Beam's gcsio)."""

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import export
from pipelines.demo.sample_site import jpeg
from tests.conftest import local_options
from transforms import schema

BUCKET = "export-e2e"

pytestmark = pytest.mark.timeout(120)


def test_export_reads_and_writes_gs(gcs_emulator, tmp_path):
    bucket = gcs_emulator.bucket(BUCKET)
    rows = []
    for n in range(4):
        body = jpeg(n, (300, 200))
        sha = hashlib.sha256(body).hexdigest()
        uri = f"gs://{BUCKET}/out/blobs/{sha[:2]}/{sha[2:4]}/{sha}.jpg"
        bucket.blob(uri[len(f"gs://{BUCKET}/") :]).upload_from_string(body)
        rows.append(
            schema.new_row(
                "cc3m",
                f"cc3m:{n + 1}",
                f"http://a.example/{n}.jpg",
                f"photo {n}",
                status=schema.OK,
                sha256=sha,
                phash=f"{n:016x}",
                width=300,
                height=200,
                blob=uri,
                format="JPEG",
                is_canonical=True,
                is_placeholder=False,
            )
        )
    rows[3].update(cluster_id="c1", is_canonical=False)  # a duplicate of rows[2]
    rows[2].update(cluster_id="c1")
    rows.append(
        schema.new_row(
            "cc3m",
            "cc3m:5",
            "http://a.example/dead.jpg",
            "dead",
            status=schema.HTTP_ERROR,
            error="HTTP 404",
            is_canonical=True,
        )
    )
    buffer = io.BytesIO()
    pq.write_table(
        pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA), buffer
    )
    bucket.blob("out/images/part-0.parquet").upload_from_string(buffer.getvalue())

    export.run(
        local_options(
            input=f"gs://{BUCKET}/out",
            output=f"gs://{BUCKET}/exp",
            format="webdataset",
            resize=100,
            **{"resize-mode": "border", "shard-size": 2},
        )
    )

    names = sorted(blob.name for blob in gcs_emulator.client().list_blobs(BUCKET, prefix="exp/"))
    assert names == ["exp/00000.tar", "exp/00001.tar", "exp/summary.json"]  # nothing temporary left
    summary = json.loads(bucket.blob("exp/summary.json").download_as_bytes())
    assert summary["rows_read"] == 5 and summary["exported"] == 3
    skipped = {"not_ok": 1, "placeholder": 0, "non_canonical": 1, "unreadable_blob": 0, "too_large": 0}
    assert summary["skipped"] == skipped
    import webdataset as wds

    samples = []
    for name in names[:2]:
        local = tmp_path / name.split("/")[-1]
        local.write_bytes(bucket.blob(name).download_as_bytes())
        samples += list(wds.WebDataset(str(local), shardshuffle=False).decode("pil"))
    assert sorted(s["json"]["key"] for s in samples) == ["cc3m:1", "cc3m:2", "cc3m:3"]
    assert all(s["jpg"].size == (100, 100) and s["json"]["original_width"] == 300 for s in samples)

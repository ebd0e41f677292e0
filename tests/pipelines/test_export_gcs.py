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


def _table_on_gs(bucket, written_at="out"):
    """gs://BUCKET/out: four ok rows (blobs in out/blobs/, the rows naming them under `written_at`,
    where the table was first written) and one http_error row, in images/part-0.parquet."""
    rows = []
    for n in range(4):
        body = jpeg(n, (300, 200))
        sha = hashlib.sha256(body).hexdigest()
        stored = f"out/blobs/{sha[:2]}/{sha[2:4]}/{sha}.jpg"
        bucket.blob(stored).upload_from_string(body)
        uri = f"gs://{bucket.name}/{written_at}/blobs/{sha[:2]}/{sha[2:4]}/{sha}.jpg"
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
    return rows


def test_export_reads_and_writes_gs(gcs_emulator, tmp_path):
    bucket = gcs_emulator.bucket(BUCKET)
    _table_on_gs(bucket)

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


def test_a_blob_missing_on_gs_is_skipped_and_a_moved_out_is_read_where_it_is(gcs_emulator, capsys):
    """OUT on gs:// copied from gs://B/old (its rows name blobs there, gone) and one blob deleted:
    as locally, the moved blobs are read from OUT/blobs/ and the missing one is skipped as
    unreadable_blob, exit 0. Before, gcsio's NotFound is no OSError: every gs:// blob not where its
    row says failed the export, exit 1 ("unexpected NotFound", and a traceback of the tar stream)."""
    bucket = gcs_emulator.bucket("export-missing-blob")
    rows = _table_on_gs(bucket, written_at="old")
    missing = rows[0]["sha256"]
    bucket.blob(f"out/blobs/{missing[:2]}/{missing[2:4]}/{missing}.jpg").delete()

    status = export.main(
        local_options(input="gs://export-missing-blob/out", output="gs://export-missing-blob/exp", format="webdataset")
    )

    err = capsys.readouterr().err
    assert status == 0, err
    assert "Traceback" not in err
    summary = json.loads(bucket.blob("exp/summary.json").download_as_bytes())
    assert summary["rows_read"] == 5 and summary["exported"] == 2
    assert summary["skipped"]["unreadable_blob"] == 1


def test_an_export_into_a_bucket_that_does_not_exist_is_bad_input(gcs_emulator, capsys):
    """A typo in --output's bucket: exit 2, one line naming the bucket. Before: exit 1, 'cannot take
    the lease gs://.../_LEASE: NotFound: 404 POST ...', as if the storage had failed."""
    from tests.table_readers import one_line

    _table_on_gs(gcs_emulator.bucket("export-typo"))
    argv = local_options(input="gs://export-typo/out", output="gs://no-such-bucket-y/exp", format="webdataset")
    assert export.main(argv) == 2
    assert "gs://no-such-bucket-y/exp: no bucket no-such-bucket-y" in one_line(capsys, "export")


def test_a_cluster_whose_canonical_blob_is_missing_on_gs_is_exported_through_its_member(gcs_emulator, tmp_path):
    """Cluster c1 (cc3m:3 canonical, cc3m:4 a member with its own blob) with cc3m:3's blob deleted:
    cc3m:4 is exported in its place (fallback_members 1), the books exact. Before: neither was
    exported (unreadable_blob 1, non_canonical 1, 2 exported)."""
    bucket = gcs_emulator.bucket("export-fallback")
    rows = _table_on_gs(bucket)
    canonical = rows[2]["sha256"]
    bucket.blob(f"out/blobs/{canonical[:2]}/{canonical[2:4]}/{canonical}.jpg").delete()

    export.run(local_options(input="gs://export-fallback/out", output="gs://export-fallback/exp", format="webdataset"))

    summary = json.loads(bucket.blob("exp/summary.json").download_as_bytes())
    assert summary["rows_read"] == 5 and summary["exported"] == 3 and summary["fallback_members"] == 1
    assert summary["skipped"] == {
        "not_ok": 1,
        "placeholder": 0,
        "non_canonical": 0,
        "unreadable_blob": 1,
        "too_large": 0,
    }
    import webdataset as wds

    local = tmp_path / "00000.tar"
    local.write_bytes(bucket.blob("exp/00000.tar").download_as_bytes())
    assert sorted(s["json"]["key"] for s in wds.WebDataset(str(local), shardshuffle=False).decode("pil")) == [
        "cc3m:1",
        "cc3m:2",
        "cc3m:4",
    ]


def test_on_gs_a_rerun_retires_split_shards_and_spares_a_nested_export(gcs_emulator, capsys):
    """gs:// (where `*` stops at `/`): exp/v1 an export of its own, exp exported with --split then
    without; the split shards go, exp/v1's stay, and a split named v1 is refused (exit 2)."""
    bucket = gcs_emulator.bucket("export-layouts")
    _table_on_gs(bucket)
    base = {"input": "gs://export-layouts/out", "format": "webdataset", "include": "all", "shard-size": 1}
    assert export.main(local_options(output="gs://export-layouts/exp/v1", **base)) == 0
    nested = sorted(b.name for b in gcs_emulator.client().list_blobs("export-layouts", prefix="exp/v1/"))
    assert len(nested) == 5  # 4 shards and summary.json
    assert export.main(local_options(output="gs://export-layouts/exp", split="a=0.5,b=0.5", **base)) == 0
    assert export.main(local_options(output="gs://export-layouts/exp", **base)) == 0
    names = sorted(b.name for b in gcs_emulator.client().list_blobs("export-layouts", prefix="exp/"))
    assert names == sorted([*nested, "exp/summary.json", *(f"exp/{n:05d}.tar" for n in range(4))])
    capsys.readouterr()
    assert export.main(local_options(output="gs://export-layouts/exp", split="v1=0.5,b=0.5", **base)) == 2
    assert "is an export of its own" in capsys.readouterr().err

"""A file of OUT/images replaced by another of the same name and row count (docs/integrity.md):
summary.json's table record keeps each file's byte size and a fingerprint of its Parquet footer,
and every reader (export --input, dedup --input, refresh --snapshot, ingest --resume) refuses the
replacement with one line, exit 2, locally and on gs://. Records without them (older versions)
are checked as before: names and row counts.
"""

import io
import json
import os
import shutil
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import dedup, export, ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.conftest import local_options
from tests.table_readers import LOOPBACK, assert_readers_refuse, one_line
from transforms.errors import BadInput
from transforms.io import table as table_module
from transforms.io import table_record

pytestmark = pytest.mark.timeout(300)


def _manifest(web, tmp_path, prefix, count=6):
    lines = []
    for n in range(count):
        web.routes[f"/{prefix}{n}.jpg"] = Reply(200, jpeg(hash((prefix, n)) % 10_000), {"Content-Type": "image/jpeg"})
        lines.append(f"photo {n}\t{web.url(f'/{prefix}{n}.jpg')}\n")
    path = tmp_path / f"{prefix}.tsv"
    path.write_text("".join(lines))
    return path


def _ingest(out, manifest, *extra, **options):
    args = local_options(
        manifest=f"cc3m={manifest}",
        output=out,
        **{"allow-network": LOOPBACK, "no-progress": True, "no-report": True, "retries": 0, **options},
    )
    return ingest.main(args + list(extra))


@pytest.fixture(scope="module")
def two_ingested(tmp_path_factory):
    """{"a": (manifest, OUT), "b": (manifest, OUT)}: two ingests of 6 other pictures each, once for
    the module, read-only (a test copies an OUT before it changes it). The web stays up: the tables
    name its URLs."""
    # why: the local tests ingested three such manifests (~4 s a run) only to start from whole tables
    folder = tmp_path_factory.mktemp("record")
    with SampleWebServer() as web:
        outs = {}
        for prefix in ("a", "b"):
            manifest, out = _manifest(web, folder, prefix), str(folder / f"out-{prefix}")
            assert _ingest(out, manifest) == 0
            outs[prefix] = (manifest, out)
        yield outs


def _only_part(out):
    (name,) = os.listdir(os.path.join(out, "images"))
    return os.path.join(out, "images", name)


def test_a_part_replaced_by_another_outputs_part_with_as_many_rows_is_refused(two_ingested, tmp_path, capsys):
    (manifest_a, fixture_a), (_, out_b) = two_ingested["a"], two_ingested["b"]
    out_a = str(tmp_path / "out-a")
    shutil.copytree(fixture_a, out_a)  # this test replaces its part; out_b is only read
    part = _only_part(out_a)
    name = os.path.basename(part)
    assert pq.read_metadata(_only_part(out_b)).num_rows == pq.read_metadata(part).num_rows == 6
    shutil.copy(_only_part(out_b), part)  # an operator's copy from another output folder
    capsys.readouterr()

    assert_readers_refuse(out_a, tmp_path, capsys, f"replaced by another file: {name}")
    assert _ingest(out_a, manifest_a, resume=True) == 2
    assert f"replaced by another file: {name}" in one_line(capsys, "ingest")
    assert os.listdir(os.path.join(out_a, "images")) == [name]  # nothing written, nothing retired


def test_a_dedup_output_records_its_files_and_an_older_record_is_read_as_before(two_ingested, tmp_path, capsys):
    out, out3 = str(tmp_path / "out"), str(tmp_path / "out3")
    shutil.copytree(two_ingested["a"][1], out)
    assert dedup.main(local_options(input=out, output=out3)) == 0
    for root in (out, out3):
        record = json.load(open(os.path.join(root, "summary.json")))["table"]
        part = _only_part(root)
        assert record["files"] == {os.path.basename(part): 6}
        assert record["fingerprints"][os.path.basename(part)]["bytes"] == os.path.getsize(part)
    # a record without fingerprints (an older version's): names and row counts, as before
    shutil.copy(_only_part(out), _only_part(out3))  # 6 rows, without the cluster columns set
    path = os.path.join(out3, "summary.json")
    summary = json.load(open(path))
    del summary["table"]["fingerprints"]
    json.dump(summary, open(path, "w"))
    capsys.readouterr()
    assert export.main(local_options(input=out3, output=str(tmp_path / "exp"), format="webdataset")) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_part_replaced_on_gs_is_refused(web, gcs_emulator, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the local spill of a gs:// OUT
    bucket = gcs_emulator.bucket("record-replaced")
    out = "gs://record-replaced/out"
    assert _ingest(out, _manifest(web, tmp_path, "g")) == 0
    (name,) = [b.name for b in bucket.list_blobs(prefix="out/images/") if b.name.endswith(".parquet")]
    assert json.loads(bucket.blob("out/summary.json").download_as_bytes())["table"]["fingerprints"]
    table = pq.read_table(io.BytesIO(bucket.blob(name).download_as_bytes()))
    captions = [f"other {n}" for n in range(table.num_rows)]  # as many rows, other values
    table = table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(captions))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    bucket.blob(name).upload_from_string(buffer.getvalue())
    assert len(table_module.list_table_files(out)) == 1
    capsys.readouterr()
    assert export.main(local_options(input=out, output=str(tmp_path / "exp"), format="webdataset")) == 2
    line = one_line(capsys, "export")
    assert f"replaced by another file: {name.rsplit('/', 1)[-1]}" in line, line


def test_a_replacement_of_the_same_byte_size_is_told_by_its_footer(tmp_path):
    """Uncompressed, plain-encoded files: one caption changed keeps the byte size; the footer's
    column statistics (its min caption) tell the files apart."""
    root = tmp_path / "out"
    (root / "images").mkdir(parents=True)
    path = str(root / "images" / "part-0.parquet")

    def write(first_caption):
        captions = [first_caption] + [f"photo {n}" for n in range(1, 6)]
        table = pa.table({"key": [f"cc3m:{n}" for n in range(6)], "caption": captions})
        pq.write_table(table, path, compression="none", use_dictionary=False)

    write("photo 0")
    record = table_record.table_record([{"path": path, "rows": 6}])
    (root / "summary.json").write_text(json.dumps({"job": "ingest", "table": record}))
    assert table_record.check_recorded_table("--input", str(root), [path]) == [path]
    size = os.path.getsize(path)
    write("photo 9")
    assert os.path.getsize(path) == size
    replaced = r"replaced by another file: part-0\.parquet \(as many bytes, another Parquet footer\)"
    with pytest.raises(BadInput, match=replaced):
        table_record.check_recorded_table("--input", str(root), [path])

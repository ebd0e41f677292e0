"""The jobs' own books, end to end with the real runner (docs/integrity.md): a failed books check
leaves the previous table whole, the refresh balances its books, and a reader compares OUT/images
with the table its writer recorded in summary.json.
"""

import io
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import dedup, export, ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.conftest import local_options
from tests.dedup_helpers import row
from tests.table_readers import LOOPBACK, assert_readers_refuse, one_line, run_refresh
from transforms import schema
from transforms.clustering import table_dedup
from transforms.errors import BadInput
from transforms.io import table as table_module
from transforms.io import table_record
from transforms.liveness import checks


def _serve_cc3m(web, count, prefix="p"):
    """`count` distinct JPEGs served at /<prefix><n>.jpg; returns a CC3M manifest of them."""
    lines = []
    for n in range(count):
        web.routes[f"/{prefix}{n}.jpg"] = Reply(200, jpeg(hash((prefix, n)) % 10_000), {"Content-Type": "image/jpeg"})
        lines.append(f"photo {n}\t{web.url(f'/{prefix}{n}.jpg')}\n")
    return "".join(lines)


def _ingest(out, manifest, *extra, **options):
    args = local_options(
        manifest=f"cc3m={manifest}",
        output=out,
        **{"allow-network": LOOPBACK, "no-progress": True, "no-report": True, "retries": 0, **options},
    )
    return ingest.main(args + list(extra))


@pytest.fixture(scope="module")
def six_ingested(tmp_path_factory):
    """(the web, a CC3M manifest of 6 pictures on it, OUT of their ingest): one ingest for the
    module, read-only (a test copies OUT with `six_out` before changing it; the web stays up: the
    table names its URLs)."""
    # why: nine tests each ingested these 6 URLs (~4 s a run) only to start from a whole table
    folder = tmp_path_factory.mktemp("six")
    with SampleWebServer() as web:
        manifest = folder / "cc3m.tsv"
        manifest.write_text(_serve_cc3m(web, 6))
        out = str(folder / "out")
        assert _ingest(out, manifest) == 0
        yield web, manifest, out


@pytest.fixture
def six_out(six_ingested, tmp_path):
    """(this test's copy of six_ingested's OUT, its manifest)."""
    _, manifest, out = six_ingested
    copy = str(tmp_path / "out")
    shutil.copytree(out, copy)
    return copy, manifest


def _write_out(root, rows, name="part-0.parquet"):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    table = pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA)
    pq.write_table(table, os.path.join(root, "images", name))


def _snapshot(directory):
    """{file name: bytes} of a folder."""
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def _rows(n, prefix="cc3m"):
    return [
        row(f"{prefix}:{i}", prefix, url=f"http://127.0.0.2/{prefix}/{i}.jpg", phash=f"{i * 7919:016x}")
        for i in range(n)
    ]


def _lose_first_copied_row(monkeypatch):
    """The table copy drops one row of each file: a bug the books must catch."""
    batches = table_dedup.file_batches

    def lossy(path, columns):
        for number, (first, batch) in enumerate(batches(path, columns)):
            yield (first, batch.slice(1)) if columns is None and number == 0 else (first, batch)

    monkeypatch.setattr(table_dedup, "file_batches", lossy)


# --- C: the previous table is retired only once the books balance -------------------------------


def test_dedup_with_unbalanced_books_leaves_out3s_previous_table_whole(tmp_path, capsys, monkeypatch):
    out, out3 = str(tmp_path / "out"), str(tmp_path / "out3")
    _write_out(out, _rows(5))
    assert dedup.main(local_options(input=out, output=out3)) == 0
    before = _snapshot(os.path.join(out3, "images"))
    recorded = json.load(open(os.path.join(out3, "summary.json")))["table"]
    assert recorded["files"] == {name: 5 for name in before} and recorded["rows"] == 5
    assert {name: f["bytes"] for name, f in recorded["fingerprints"].items()} == {n: len(b) for n, b in before.items()}
    capsys.readouterr()

    _lose_first_copied_row(monkeypatch)
    assert dedup.main(local_options(input=out, output=out3)) == 1
    line = one_line(capsys, "dedup")
    assert "the books do not balance: 5 rows read" in line and f"4 rows written to {out3} " in line, line
    # the previous table is whole: the same files, the same bytes, and nothing of the failed run
    assert _snapshot(os.path.join(out3, "images")) == before
    summary = json.load(open(os.path.join(out3, "summary.json")))
    assert summary["books"]["balanced"] is False
    assert summary["table"] == recorded  # what OUT3/images still holds


def test_ingest_with_unbalanced_books_leaves_outs_previous_table_whole(six_out, capsys, monkeypatch):
    out, manifest = six_out
    before = _snapshot(os.path.join(out, "images"))
    recorded = json.load(open(os.path.join(out, "summary.json")))["table"]
    assert recorded["rows"] == 6 and sorted(recorded["files"]) == sorted(before)
    capsys.readouterr()

    original = table_module.WriteShardsDoFn.process

    def lose_one(self, row):
        if row["key"] != "cc3m:4":
            yield from original(self, row)

    monkeypatch.setattr(table_module.WriteShardsDoFn, "process", lose_one)
    assert _ingest(out, manifest) == 1
    assert "6 records read, 5 rows written" in one_line(capsys, "ingest")
    assert _snapshot(os.path.join(out, "images")) == before
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["books"]["balanced"] is False and summary["table"] == recorded


# --- B: the refresh's own books -------------------------------------------------------------------


def _two_snapshots(six_ingested, tmp_path):
    """Two snapshots of one ingest (the module's OUT and a copy): every key in both (the refresh
    merges them). The refresh only reads them."""
    _, _, out = six_ingested
    snapshots = [str(tmp_path / "out-a"), str(tmp_path / "out-b")]
    for copy in snapshots:
        shutil.copytree(out, copy)
    return snapshots


def test_refresh_books_balance_with_keys_merged_across_snapshots(six_ingested, tmp_path, capsys):
    snapshots = _two_snapshots(six_ingested, tmp_path)
    output = str(tmp_path / "refresh")
    assert run_refresh(snapshots, output) == 0
    books = json.load(open(os.path.join(output, "summary.json")))["books"]
    # which table of each snapshot was read: two copies of one table, one digest
    tables = [snapshot.pop("table") for snapshot in books["snapshots"]]
    assert [table["rows"] for table in tables] == [6, 6] and tables[0]["table_sha256"] == tables[1]["table_sha256"]
    assert books == {
        "snapshots": [{"path": snapshots[0], "rows": 6}, {"path": snapshots[1], "rows": 6}],
        "rows_in": 12,
        "merged": 6,
        "rows_out": 6,
        "balanced": True,
    }


def test_refresh_fails_when_a_status_row_is_lost(six_ingested, tmp_path, capsys, monkeypatch):
    snapshots = _two_snapshots(six_ingested, tmp_path)
    judged = checks._judge_joined

    def lose_one(item, detected, params, **more):
        return [] if item[0] == "cc3m:4" else judged(item, detected, params, **more)

    monkeypatch.setattr(checks, "_judge_joined", lose_one)
    output = str(tmp_path / "refresh")
    capsys.readouterr()
    assert run_refresh(snapshots, output) == 1
    line = one_line(capsys, "refresh")
    assert "the books do not balance: 12 snapshot rows read" in line and "5 status rows written" in line, line
    # a first night whose books fail leaves nothing a data team could act on: the night's summary
    # and status stayed aside and went with the run (a rerun's keeps the previous night: test_refresh)
    assert sorted(os.listdir(output)) == []


# --- A: a reader compares OUT/images with the table its writer recorded -------------------------


def _copy_a_part(out):
    images = os.path.join(out, "images")
    first = sorted(os.listdir(images))[0]
    copy = first.replace(".parquet", " (copy).parquet")
    shutil.copy(os.path.join(images, first), os.path.join(images, copy))
    return copy


def test_a_part_copied_into_out_images_is_refused_by_every_reader(six_out, tmp_path, capsys):
    out, _ = six_out
    copy = _copy_a_part(out)
    assert_readers_refuse(out, tmp_path, capsys, f"not written by it: {copy}")


def test_a_part_removed_or_replaced_is_refused(six_out, tmp_path, capsys):
    out, _ = six_out
    images = os.path.join(out, "images")
    (name,) = os.listdir(images)
    table = pq.read_table(os.path.join(images, name))
    pq.write_table(table.slice(0, 4), os.path.join(images, name))  # two rows lost
    capsys.readouterr()
    assert export.main(local_options(input=out, output=str(tmp_path / "exp"), format="webdataset")) == 2
    assert f"other row counts: {name} (6 recorded, 4 found)" in one_line(capsys, "export")
    os.rename(os.path.join(images, name), os.path.join(images, "part-renamed.parquet"))
    assert dedup.main(local_options(input=out, output=str(tmp_path / "out3"))) == 2
    line = one_line(capsys, "dedup")
    assert f"missing: {name}" in line and "not written by it: part-renamed.parquet" in line, line


def test_an_output_of_an_older_version_is_still_read(six_out, tmp_path, capsys):
    out, _ = six_out
    path = os.path.join(out, "summary.json")
    summary = json.load(open(path))
    del summary["table"]
    json.dump(summary, open(path, "w"))
    capsys.readouterr()
    assert export.main(local_options(input=out, output=str(tmp_path / "exp"), format="webdataset")) == 0
    err = capsys.readouterr().err
    assert "records no table files (an older version wrote it)" in err, err


@pytest.mark.parametrize("summary", ["deleted", "emptied", "no table"])
def test_a_copied_part_is_refused_even_without_the_record(six_out, tmp_path, capsys, summary):
    """summary.json deleted, emptied to {} or without its "table", then a part copied into images/:
    with nothing recorded to compare with, every reader read the copy too, exit 0 (the export
    wrote each row twice, --resume kept both copies and fetched the row a third time). A file whose
    size and Parquet footer are another's is that file twice, whatever the summary says: refused."""
    out, manifest = six_out
    path = os.path.join(out, "summary.json")
    if summary == "deleted":
        os.remove(path)
    else:
        content = json.load(open(path))
        json.dump({} if summary == "emptied" else {k: v for k, v in content.items() if k != "table"}, open(path, "w"))
    copy = _copy_a_part(out)
    assert_readers_refuse(out, tmp_path, capsys, "(as many bytes, one Parquet footer)")
    assert _ingest(out, manifest, resume=True) == 2
    line = one_line(capsys, "ingest")
    assert copy in line and "(as many bytes, one Parquet footer)" in line, line


def test_resume_reads_only_the_recorded_table(six_out, capsys):
    out, manifest = six_out
    copy = _copy_a_part(out)  # e.g. a part a run killed before its summary left behind
    capsys.readouterr()
    assert _ingest(out, manifest, resume=True) == 0
    assert copy in capsys.readouterr().err  # said, not read
    images = os.path.join(out, "images")
    assert copy not in os.listdir(images)  # retired with the previous table
    rows = pq.read_table([os.path.join(images, n) for n in os.listdir(images)]).to_pylist()
    assert sorted(r["key"] for r in rows) == sorted({r["key"] for r in rows}) and len(rows) == 6
    recorded = json.load(open(os.path.join(out, "summary.json")))["table"]
    assert recorded["rows"] == 6 and sorted(recorded["files"]) == sorted(os.listdir(images))
    # a recorded file gone: --resume refuses (its rows would be fetched again as new, or lost)
    os.rename(os.path.join(images, sorted(os.listdir(images))[0]), os.path.join(images, "part-other.parquet"))
    assert _ingest(out, manifest, resume=True) == 2
    assert "missing: " in one_line(capsys, "ingest")


def test_gs_readers_compare_with_the_record(gcs_emulator):
    bucket = gcs_emulator.bucket("books-record")
    rows = [schema.to_parquet_record(r) for r in _rows(5)]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema.IMAGE_SCHEMA), buffer)
    bucket.blob("out/images/part-0.parquet").upload_from_string(buffer.getvalue())
    record = {"job": "ingest", "table": {"files": {"part-0.parquet": 5}, "rows": 5}}
    bucket.blob("out/summary.json").upload_from_string(json.dumps(record))
    root = "gs://books-record/out"
    files = table_module.list_table_files(root)
    assert table_record.check_recorded_table("--input", root, files) == files
    bucket.blob("out/images/part-0 (copy).parquet").upload_from_string(buffer.getvalue())
    with pytest.raises(BadInput, match=r"not written by it: part-0 \(copy\)\.parquet"):
        table_record.check_recorded_table("--input", root, table_module.list_table_files(root))
    record["table"]["files"]["part-0 (copy).parquet"] = 4
    bucket.blob("out/summary.json").upload_from_string(json.dumps(record))
    with pytest.raises(BadInput, match=r"other row counts: part-0 \(copy\)\.parquet \(4 recorded, 5 found\)"):
        table_record.check_recorded_table("--input", root, table_module.list_table_files(root))

"""The jobs' own books, end to end with the real runner (docs/integrity.md): a failed books check
leaves the previous table whole, the refresh balances its books, and a reader compares OUT/images
with the table its writer recorded in summary.json.
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import dedup, ingest, refresh
from pipelines.demo.sample_site import Reply, jpeg
from tests.conftest import local_options
from tests.dedup_helpers import row
from transforms import schema
from transforms.clustering import table_dedup
from transforms.io import table as table_module
from transforms.liveness import checks

LOOPBACK = "127.0.0.1/32"


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


def _write_out(root, rows, name="part-0.parquet"):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    table = pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA)
    pq.write_table(table, os.path.join(root, "images", name))


def _snapshot(directory):
    """{file name: bytes} of a folder."""
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def _one_line(capsys, job):
    # Beam's own warnings (WriteToText replacing clusters-*) may come too: the job's line is one
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{job}: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _rows(n, prefix="cc3m"):
    return [
        row(f"{prefix}:{i}", prefix, url=f"http://127.0.0.2/{prefix}/{i}.jpg", phash=f"{i * 7919:016x}")
        for i in range(n)
    ]


def _lose_first_copied_row(monkeypatch):
    """The table copy drops one row of each file: a bug the books must catch."""
    batches = table_dedup._batches

    def lossy(path, columns):
        for number, (first, batch) in enumerate(batches(path, columns)):
            yield (first, batch.slice(1)) if columns is None and number == 0 else (first, batch)

    monkeypatch.setattr(table_dedup, "_batches", lossy)


# --- C: the previous table is retired only once the books balance -------------------------------


def test_dedup_with_unbalanced_books_leaves_out3s_previous_table_whole(tmp_path, capsys, monkeypatch):
    out, out3 = str(tmp_path / "out"), str(tmp_path / "out3")
    _write_out(out, _rows(5))
    assert dedup.main(local_options(input=out, output=out3)) == 0
    before = _snapshot(os.path.join(out3, "images"))
    recorded = json.load(open(os.path.join(out3, "summary.json")))["table"]
    assert recorded == {"files": {name: 5 for name in before}, "rows": 5}
    capsys.readouterr()

    _lose_first_copied_row(monkeypatch)
    assert dedup.main(local_options(input=out, output=out3)) == 1
    line = _one_line(capsys, "dedup")
    assert "the books do not balance: 5 rows read" in line and "4 rows written" in line, line
    # the previous table is whole: the same files, the same bytes, and nothing of the failed run
    assert _snapshot(os.path.join(out3, "images")) == before
    summary = json.load(open(os.path.join(out3, "summary.json")))
    assert summary["books"]["balanced"] is False
    assert summary["table"] == recorded  # what OUT3/images still holds


def test_ingest_with_unbalanced_books_leaves_outs_previous_table_whole(web, tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_serve_cc3m(web, 6))
    out = str(tmp_path / "out")
    assert _ingest(out, manifest) == 0
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
    assert "6 records read, 5 rows written" in _one_line(capsys, "ingest")
    assert _snapshot(os.path.join(out, "images")) == before
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["books"]["balanced"] is False and summary["table"] == recorded


# --- B: the refresh's own books -------------------------------------------------------------------


def _two_snapshots(web, tmp_path):
    """Two ingests of one manifest: every key in both snapshots (the refresh merges them)."""
    manifest = tmp_path / "cc3m.tsv"
    manifest.write_text(_serve_cc3m(web, 6))
    snapshots = [str(tmp_path / "out-a"), str(tmp_path / "out-b")]
    for out in snapshots:
        assert _ingest(out, manifest) == 0
    return snapshots


def _refresh(snapshots, output):
    return refresh.main(
        local_options(snapshot=snapshots, output=output, **{"allow-network": LOOPBACK, "retries": 0, "timeout": 5})
    )


def test_refresh_books_balance_with_keys_merged_across_snapshots(web, tmp_path, capsys):
    snapshots = _two_snapshots(web, tmp_path)
    output = str(tmp_path / "refresh")
    assert _refresh(snapshots, output) == 0
    books = json.load(open(os.path.join(output, "summary.json")))["books"]
    assert books == {
        "snapshots": [{"path": snapshots[0], "rows": 6}, {"path": snapshots[1], "rows": 6}],
        "rows_in": 12,
        "merged": 6,
        "rows_out": 6,
        "balanced": True,
    }


def test_refresh_fails_when_a_status_row_is_lost(web, tmp_path, capsys, monkeypatch):
    snapshots = _two_snapshots(web, tmp_path)
    judged = checks._judge_joined

    def lose_one(item, detected, params):
        return [] if item[0] == "cc3m:4" else judged(item, detected, params)

    monkeypatch.setattr(checks, "_judge_joined", lose_one)
    output = str(tmp_path / "refresh")
    capsys.readouterr()
    assert _refresh(snapshots, output) == 1
    line = _one_line(capsys, "refresh")
    assert "the books do not balance: 12 snapshot rows read" in line and "5 status rows written" in line, line
    assert json.load(open(os.path.join(output, "summary.json")))["books"]["balanced"] is False

"""Dedup over Parquet tables (the standalone job's read + dedup): newest-wins on key records,
replaced rows kept out of the graph, the table copied file by file with every column."""

import datetime
import glob
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import dedup as job
from tests.dedup_helpers import row
from transforms import schema
from transforms.clustering.key_versions import KEY_RECORD, NO_STAMP, newest_order
from transforms.clustering.table_dedup import _ListFiles
from transforms.errors import BadInput

UTC = datetime.timezone.utc


def _records(rows):
    out = np.zeros(len(rows), dtype=KEY_RECORD)
    for i, (key, stamp, index, fid, number) in enumerate(rows):
        out[i] = (key, stamp, index, fid, number, b"", 0)
    return out


def test_newest_order_puts_the_kept_version_last():
    r = _records(
        [
            (b"k1", 5, 0, 7, 0),
            (b"k1", NO_STAMP, 1, 7, 1),
            (b"k1", 9, 0, 7, 2),
            (b"k2", 3, 1, 8, 0),
            (b"k2", 3, 0, 9, 0),  # tie: the input listed last wins
            (b"k3", NO_STAMP, 0, 1, 0),
            (b"k3", NO_STAMP, 2, 1, 1),
        ]
    )
    ordered = r[newest_order(r)]
    last = {}
    for rec in ordered:
        last[bytes(rec["key"])] = (int(rec["input"]), int(rec["row"]), int(rec["stamp"]))
    assert last[b"k1"] == (0, 2, 9)  # latest fetched_at, whatever the input
    assert last[b"k2"][0] == 1  # same fetched_at: the later input
    assert last[b"k3"][0] == 2  # no fetched_at anywhere: the later input
    assert [bytes(k) for k in ordered["key"]] == [b"k1"] * 3 + [b"k2"] * 2 + [b"k3"] * 2


def test_list_files_refuses_an_input_without_a_table(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no Parquet table"):
        list(_ListFiles().process((0, str(tmp_path / "empty"))))


def _write(root, rows, name="part-0.parquet", drop=()):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    table = pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA)
    for column in drop:  # an older table without some columns
        table = table.drop_columns([column])
    pq.write_table(table, os.path.join(root, "images", name))


def _day(r, day):
    r["fetched_at"] = datetime.datetime(2024, 1, day, tzinfo=UTC)
    return r


def test_job_replaced_rows_take_no_part_in_clusters_and_every_column_is_kept(tmp_path):
    """k:1's January version shares a URL with k:2; its March version does not (an ImageID names
    its record whatever its URL: key_collisions). If the replaced version reached the graph, k:2
    would be clustered with k:1."""
    ph = "0f0f0f0f0f0f0f0f"
    old = [
        _day(
            row("openimages:1", "openimages", url="http://x.example/shared.jpg", phash=ph, dhash="1234123412341234"), 1
        ),
        _day(
            row(
                "openimages:2",
                "openimages",
                url="http://x.example/shared.jpg",
                phash="ffff0000ffff0000",
                dhash="0101010101010101",
            ),
            1,
        ),
        _day(row("openimages:3", "openimages", phash="00ff00ff00ff00ff", dhash="7777777777777777"), 1),
    ]
    for r in old:
        r["caption"] = "january"
    new = [
        _day(
            row(
                "openimages:1",
                "openimages",
                url="http://x.example/moved.jpg",
                phash="aaaaaaaaaaaaaaaa",
                dhash="5555555555555555",
            ),
            3,
        ),
        _day(row("cc12m:9", url="http://y.example/9.jpg", phash="00ff00ff00ff00fe", dhash="7777777777777777"), 3),
    ]
    new[0]["caption"] = "march"
    _write(str(tmp_path / "in1"), old[:2], "part-0.parquet")
    _write(str(tmp_path / "in1"), old[2:], "part-1.parquet", drop=("license", "is_placeholder"))
    _write(str(tmp_path / "in2"), new, "part-0.parquet")
    out = str(tmp_path / "out")
    job.run(
        ["--input", str(tmp_path / "in1"), "--input", str(tmp_path / "in2"), "--output", out, "--runner", "FnApiRunner"]
    )
    table = pq.read_table(glob.glob(os.path.join(out, "images", "*.parquet")))
    assert table.schema.equals(schema.IMAGE_SCHEMA)
    rows = {r["key"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["cc12m:9", "openimages:1", "openimages:2", "openimages:3"]
    assert rows["openimages:1"]["caption"] == "march"
    assert rows["openimages:1"]["cluster_id"] is None and rows["openimages:2"]["cluster_id"] is None
    assert rows["openimages:2"]["is_canonical"] is True and rows["openimages:2"]["is_placeholder"] is False
    # near pair across the two inputs, one of them from the file without some columns
    assert rows["openimages:3"]["cluster_id"] is not None
    assert rows["openimages:3"]["cluster_id"] == rows["cc12m:9"]["cluster_id"]
    assert rows["openimages:3"]["license"] is None and rows["openimages:3"]["caption"] == "january"
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["rows"] == 4 and summary["replaced_rows"] == 1 and summary["clusters"] == 1
    # a second run into the same OUT replaces the table rather than adding to it
    job.run(
        ["--input", str(tmp_path / "in1"), "--input", str(tmp_path / "in2"), "--output", out, "--runner", "FnApiRunner"]
    )
    again = pq.read_table(glob.glob(os.path.join(out, "images", "*.parquet")))
    assert sorted(again.column("key").to_pylist()) == sorted(rows)


def test_job_keeps_every_row_of_a_key_an_input_holds_twice_and_its_books_balance(tmp_path, capsys):
    """Only versions from other inputs replace a row: in1 holds openimages:1 twice (both kept, it has
    the newest version) and openimages:2 twice (both replaced by in2's newer one)."""
    in1 = [
        _day(row("openimages:1", "openimages", url="http://x.example/1a.jpg", phash="0000000000000001"), 5),
        _day(row("openimages:1", "openimages", url="http://x.example/1b.jpg", phash="1000000000000000"), 5),
        _day(row("openimages:2", "openimages", url="http://x.example/2a.jpg", phash="00000000ffffffff"), 1),
        _day(row("openimages:2", "openimages", url="http://x.example/2b.jpg", phash="ffffffff00000000"), 1),
    ]
    in2 = [
        _day(row("openimages:1", "openimages", url="http://x.example/1c.jpg", phash="0f0f0f0f00000000"), 2),
        _day(row("openimages:2", "openimages", url="http://x.example/2c.jpg", phash="00000000f0f0f0f0"), 3),
    ]
    _write(str(tmp_path / "in1"), in1)
    _write(str(tmp_path / "in2"), in2)
    out = str(tmp_path / "out")
    job.run(
        ["--input", str(tmp_path / "in1"), "--input", str(tmp_path / "in2"), "--output", out, "--runner", "FnApiRunner"]
    )
    table = pq.read_table(glob.glob(os.path.join(out, "images", "*.parquet"))).to_pylist()
    assert sorted((r["key"], r["url"]) for r in table) == [
        ("openimages:1", "http://x.example/1a.jpg"),
        ("openimages:1", "http://x.example/1b.jpg"),
        ("openimages:2", "http://x.example/2c.jpg"),
    ]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["replaced_rows"] == 3
    # which table of each input was read (files without a summary.json: written by no job)
    tables = [read.pop("table") for read in summary["books"]["inputs"]]
    assert [(table["rows"], table["written_by"]) for table in tables] == [(4, None), (2, None)]
    assert summary["books"]["inputs"] == [
        {"path": str(tmp_path / "in1"), "rows": 4},
        {"path": str(tmp_path / "in2"), "rows": 2},
    ]
    assert summary["books"]["rows_out"] == 3 and summary["books"]["balanced"]
    assert any("2 keys occur more than once within one input" in w for w in summary["warnings"])


def test_placeholder_members_go_without_their_views():
    """The clustering GroupByKey holds its groups in memory; a placeholder group's rows never use
    their views (their match is "placeholder"), so the job's member rows drop them but phash_trim
    (canonical_sort_key reads it); rows of other groups keep them."""
    from transforms.clustering.clusters import _place, _vertex

    views = {"phash_mirror": "00000000000000ff", "dhash_mirror": "000000000000ff00", "phash_trim": "00000000000000f0"}
    alone = row("cc3m:1", phash="0" * 15 + "1", dhash="0" * 15 + "2")
    held = row("cc3m:2", phash="0" * 15 + "3", dhash="0" * 15 + "4")
    alone.update(views)
    held.update(views)
    components = {_vertex(alone): (0, "x" + _vertex(alone)), _vertex(held): (1, _vertex(held))}
    (c1, r1), (c2, r2) = (next(_place(r, components, singles=False, placeholder_views=False)) for r in (alone, held))
    assert c1.startswith("x") and "phash_mirror" not in r1 and r1["key"] == "cc3m:1"
    assert r1["phash_trim"] == views["phash_trim"]  # the canonical policy reads it
    assert r2["phash_mirror"] == views["phash_mirror"]
    assert next(_place(alone, components, singles=False))[1]["phash_mirror"] == views["phash_mirror"]

"""The dedup job's --drop-dead REFRESH_OUT on real jobs: two ingests of a loopback web, two real
refresh nights (--dead-after 2) after some URLs started answering 404, then the dedup job and an
export of its output (docs/refresh.md, "Deleting what the refresh calls dead")."""

import glob
import json
import os
import shutil
import tempfile
from unittest import mock

import pyarrow.parquet as pq
import pytest

from pipelines import dedup, export, ingest
from pipelines import refresh as refresh_job
from pipelines.demo.sample_site import Reply, SampleWebServer, encode, jpeg, picture
from tests.conftest import TESTS_TODAY, local_options
from transforms.liveness import verdicts

JPEG = {"Content-Type": "image/jpeg"}
NEAR = picture(20, (640, 480))
SITE = {  # path -> the bytes served at ingest
    "/shared-a.jpg": jpeg(1),  # dies; the same bytes as shared-b: one blob
    "/shared-b.jpg": jpeg(1),
    "/own.jpg": jpeg(2),  # dies; a blob of its own
    "/near-big.jpg": encode(NEAR, "JPEG", quality=90),  # dies: its near cluster's canonical row (largest)
    "/near-mid.jpg": encode(NEAR.resize((480, 360)), "JPEG", quality=85),
    "/near-small.jpg": encode(NEAR.resize((320, 240)), "JPEG", quality=80),
    "/alive.jpg": jpeg(3),
    "/old8.jpg": jpeg(4),  # line 8 of the refreshed snapshot; dies
    "/new8.jpg": jpeg(5),  # line 8 of the table deduped: the key names another record now
    "/c1.jpg": jpeg(6),  # CC12M, never refreshed: no verdict
    "/c2.jpg": jpeg(7),
}
DYING = ("/shared-a.jpg", "/own.jpg", "/near-big.jpg", "/old8.jpg")
LINES = [
    "/shared-a.jpg",
    "/shared-b.jpg",
    "/own.jpg",
    "/near-big.jpg",
    "/near-mid.jpg",
    "/near-small.jpg",
    "/alive.jpg",
]
NET = {"allow-network": "127.0.0.1/32"}


def _manifest(path, base, paths, url_first=False):
    lines = [
        (f"{base}{p}", f"caption {n}") if url_first else (f"caption {n}", f"{base}{p}") for n, p in enumerate(paths)
    ]
    path.write_text("".join(f"{a}\t{b}\n" for a, b in lines))
    return str(path)


def _rows(out):
    return {r["key"]: r for r in pq.read_table(glob.glob(os.path.join(out, "images", "*.parquet"))).to_pylist()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """{"snapshot", "table", "cc12m", "refresh": REFRESH_OUT of the second night, "tmp"}."""
    tmp = tmp_path_factory.mktemp("drop-dead")
    with SampleWebServer() as web:
        for path, body in SITE.items():
            web.routes[path] = Reply(200, body, JPEG)
        outs = {
            "snapshot": _manifest(tmp / "a.tsv", web.base, [*LINES, "/old8.jpg"]),
            "table": _manifest(tmp / "b.tsv", web.base, [*LINES, "/new8.jpg"]),
        }
        for name, manifest in outs.items():
            ingest.run(local_options(manifest=f"cc3m={manifest}", output=str(tmp / name), **NET))
        cc12m = _manifest(tmp / "c.tsv", web.base, ["/c1.jpg", "/c2.jpg"], url_first=True)
        ingest.run(local_options(manifest=f"cc12m={cc12m}", output=str(tmp / "cc12m"), **NET))
        for path in DYING:
            web.routes[path] = Reply(404, b"not found", {"Content-Type": "text/plain"})
        for night in ("2030-06-01", "2030-06-02"):
            # why: a module fixture runs outside conftest's refresh_today (a night must not be ahead of today)
            with mock.patch.object(verdicts, "utc_today", return_value=TESTS_TODAY):
                refresh_job.run(
                    local_options(
                        snapshot=str(tmp / "snapshot"),
                        output=str(tmp / "refresh" / night),
                        history=str(tmp / "history"),
                        night=night,
                        **{"dead-after": 2, "timeout": 10.0, "retries": 0},
                        **NET,
                    )
                )
    return {
        "snapshot": str(tmp / "snapshot"),
        "table": str(tmp / "table"),
        "cc12m": str(tmp / "cc12m"),
        "refresh": str(tmp / "refresh" / "2030-06-02"),
        "tmp": tmp,
    }


@pytest.fixture(scope="module")
def dropped(world):
    """OUT3 of `dedup --input table --input cc12m --drop-dead REFRESH_OUT`, and its summary."""
    out3 = str(world["tmp"] / "out3")
    args = ["--input", world["table"], "--input", world["cc12m"], "--output", out3, "--drop-dead", world["refresh"]]
    assert dedup.main([*args, "--runner", "FnApiRunner"]) == 0
    with open(os.path.join(out3, "summary.json")) as handle:
        return out3, json.load(handle)


def test_the_night_calls_the_dying_urls_dead(world):
    status = {r["key"]: r for r in pq.read_table(glob.glob(os.path.join(world["refresh"], "status", "*"))).to_pylist()}
    assert sorted(k for k, r in status.items() if r["status"] == "dead") == ["cc3m:1", "cc3m:3", "cc3m:4", "cc3m:8"]


def test_a_dead_row_sharing_its_blob_with_a_live_row_leaves_the_blob_off_the_list(world, dropped):
    """Trap 1: cc3m:1 (dead) and cc3m:2 (live, another URL) are one picture, one blob. The dead row
    goes, the live one stays, and the shared blob is not safe to delete; the blobs of cc3m:3 and
    cc3m:4 (dead, their own) are."""
    out3, summary = dropped
    table, rows = _rows(world["table"]), _rows(out3)
    assert table["cc3m:1"]["blob"] == table["cc3m:2"]["blob"] and table["cc3m:1"]["status"] == "ok"
    assert "cc3m:1" not in rows and rows["cc3m:2"]["blob"] == table["cc3m:2"]["blob"]
    with open(os.path.join(out3, "dead_blobs.txt")) as handle:
        listed = handle.read().splitlines()
    assert listed == sorted([table["cc3m:3"]["blob"], table["cc3m:4"]["blob"]])
    assert table["cc3m:1"]["blob"] not in listed
    assert summary["blobs_only_dead"] == 2 and summary["dead_blobs"] == "dead_blobs.txt"
    assert all(os.path.exists(uri) for uri in listed)  # listed, never deleted by the job
    # every kept row points at its input's blob, as before
    assert all(rows[k]["blob"] == table[k]["blob"] for k in rows if k in table)


def test_a_cluster_whose_canonical_row_is_dead_gets_a_live_canonical(world, dropped, tmp_path):
    """Trap 2: cc3m:4 (the largest, its cluster's canonical) is dead. OUT3 holds the cluster's live
    members with a new canonical, and an export with --include canonical exports one of them."""
    out3, _ = dropped
    table, rows = _rows(world["table"]), _rows(out3)
    assert table["cc3m:4"]["is_canonical"] and table["cc3m:4"]["cluster_id"] == table["cc3m:5"]["cluster_id"]
    assert "cc3m:4" not in rows
    assert rows["cc3m:5"]["cluster_id"] is not None and rows["cc3m:5"]["cluster_id"] == rows["cc3m:6"]["cluster_id"]
    assert [k for k in ("cc3m:5", "cc3m:6") if rows[k]["is_canonical"]] == ["cc3m:5"]  # the larger one
    exp = str(tmp_path / "exp")
    assert export.main(local_options(input=out3, output=exp, format="webdataset", include="canonical")) == 0
    import webdataset as wds

    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(exp, "*.tar"))), shardshuffle=False))
    keys = sorted(json.loads(s["json"])["key"] for s in samples)
    assert "cc3m:5" in keys and "cc3m:6" not in keys and len(keys) == 6


def test_rows_of_another_url_or_without_a_verdict_are_kept_and_the_books_say_so(world, dropped):
    out3, summary = dropped
    rows = _rows(out3)
    assert sorted(rows) == ["cc12m:1", "cc12m:2", "cc3m:2", "cc3m:5", "cc3m:6", "cc3m:7", "cc3m:8"]
    assert rows["cc3m:8"]["url"].endswith("/new8.jpg")  # the night's dead cc3m:8 was /old8.jpg
    dead = summary["drop_dead"]
    assert dead["refresh_out"] == world["refresh"] and dead["night"] == "2030-06-02"
    assert (dead["dropped_dead"], dead["kept_verdict_not_dead"], dead["kept_other_url"], dead["kept_no_verdict"]) == (
        3,
        4,
        1,
        2,
    )
    assert (dead["verdict_rows"], dead["dead_verdicts"]) == (8, 4)
    books = summary["books"]
    assert (books["rows_in"], books["rows_out"], books["replaced"], books["dropped_dead"]) == (10, 7, 0, 3)
    assert books["balanced"] and summary["table"]["rows"] == 7


@pytest.mark.parametrize("damage", ["no_summary", "unbalanced", "status_file_missing", "leased", "status_file_short"])
def test_a_refresh_out_that_cannot_be_trusted_is_refused(world, tmp_path, capsys, damage):
    refresh_out = str(tmp_path / "refresh")
    shutil.copytree(world["refresh"], refresh_out)
    summary_path = os.path.join(refresh_out, "summary.json")
    if damage == "no_summary":
        os.remove(summary_path)
    elif damage == "unbalanced":
        with open(summary_path) as handle:
            summary = json.load(handle)
        summary["books"]["balanced"] = False
        with open(summary_path, "w") as handle:
            json.dump(summary, handle)
    elif damage == "status_file_short":  # before: exit 0, the lost verdicts' rows "kept: no verdict"
        status_file = glob.glob(os.path.join(refresh_out, "status", "*.parquet"))[0]
        verdicts_table = pq.read_table(status_file)
        pq.write_table(verdicts_table.slice(0, verdicts_table.num_rows - 1), status_file)
    elif damage == "leased":  # a refresh writing there now (or killed): its publish swaps the files
        with open(os.path.join(refresh_out, "_LEASE"), "w") as handle:
            json.dump({"pid": 1, "host": "elsewhere", "job": "refresh"}, handle)
    else:
        os.remove(glob.glob(os.path.join(refresh_out, "status", "*.parquet"))[0])
    capsys.readouterr()
    out3 = str(tmp_path / "out3")
    args = ["--input", world["table"], "--output", out3, "--drop-dead", refresh_out, "--runner", "FnApiRunner"]
    assert dedup.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--drop-dead" in err and "Traceback" not in err
    why = {"no_summary": "no readable summary.json", "unbalanced": "books balanced"}
    why.update(status_file_missing="are missing", leased="a refresh run holds it", status_file_short="8 counted")
    assert why[damage] in err
    assert not os.path.exists(os.path.join(out3, "images"))


def test_drop_dead_into_an_input_is_refused(world, capsys):
    args = ["--input", world["table"], "--output", world["table"], "--drop-dead", world["refresh"]]
    assert dedup.main([*args, "--runner", "FnApiRunner"]) == 2
    assert "is one of the inputs" in capsys.readouterr().err


def test_books_that_do_not_balance_publish_nothing(world, tmp_path, capsys):
    """A dead row counted but not left out (here: one more counted): exit 1, one line, and OUT3
    holds no table, no dead_blobs.txt, nothing aside."""
    real = dedup.dedup_books

    def miscounted(rows_in, written, replaced, inputs, dropped_dead=None, tables=None):
        return real(rows_in, written, replaced, inputs, dropped_dead=dropped_dead + 1, tables=tables)

    out3 = str(tmp_path / "out3")
    args = ["--input", world["table"], "--output", out3, "--drop-dead", world["refresh"], "--runner", "FnApiRunner"]
    with mock.patch.object(dedup, "dedup_books", miscounted):
        assert dedup.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "books do not balance" in err[0] and "4 dropped as dead" in err[0]
    assert not glob.glob(os.path.join(out3, "images", "*.parquet"))
    assert not glob.glob(os.path.join(out3, "dead_blobs*"))


def test_drop_dead_reads_and_writes_gs(world, dropped, gcs_emulator, tmp_path, monkeypatch):
    """The inputs, the refresh night and OUT3 on gs:// (the GCS emulator): the same rows dropped and
    the same dead_blobs.txt as the local run, naming the blobs of the copy in the bucket (the rows
    copied there name the local files: before, dead_blobs.txt listed those, the local table's)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the local spill of a gs:// run
    bucket = gcs_emulator.bucket("drop-dead")
    for name in ("table", "cc12m", "refresh"):
        for root, _, files in os.walk(world[name]):
            for file in files:
                relative = os.path.relpath(os.path.join(root, file), world[name])
                bucket.blob(f"{name}/{relative}").upload_from_filename(os.path.join(root, file))
    args = ["--input", "gs://drop-dead/table", "--input", "gs://drop-dead/cc12m", "--output", "gs://drop-dead/out3"]
    assert dedup.main([*args, "--drop-dead", "gs://drop-dead/refresh", "--runner", "FnApiRunner"]) == 0
    local_out3, local_summary = dropped
    with open(os.path.join(local_out3, "dead_blobs.txt")) as handle:
        local_list = handle.read()
    listed = bucket.blob("out3/dead_blobs.txt").download_as_text()
    assert listed == local_list.replace(world["table"] + "/", "gs://drop-dead/table/")
    assert all(bucket.blob(uri.removeprefix("gs://drop-dead/")).exists() for uri in listed.split())
    summary = json.loads(bucket.blob("out3/summary.json").download_as_text())
    assert summary["books"]["balanced"] and summary["blobs_only_dead"] == local_summary["blobs_only_dead"]
    assert summary["drop_dead"]["dropped_dead"] == local_summary["drop_dead"]["dropped_dead"] == 3


def test_dead_blobs_of_a_copied_input_are_the_copys(world, dropped, tmp_path):
    """`cp -r table copy`, then the dedup job on the copy: the copy's rows still name the original's
    blobs. Before: OUT3 and dead_blobs.txt named the original's files (`xargs rm` deleted the
    pictures of the table that was copied, still in use), exit 0. Now both name the copy's blobs/."""
    copy = str(tmp_path / "copy")
    shutil.copytree(world["table"], copy)
    out3 = str(tmp_path / "out3")
    args = ["--input", copy, "--input", world["cc12m"], "--output", out3, "--drop-dead", world["refresh"]]
    assert dedup.main([*args, "--runner", "FnApiRunner"]) == 0
    with open(os.path.join(out3, "dead_blobs.txt")) as handle:
        listed = handle.read().splitlines()
    original = os.path.join(world["table"], "blobs") + "/"
    expected = dropped[0]
    with open(os.path.join(expected, "dead_blobs.txt")) as handle:
        assert listed == sorted(
            line.replace(original, os.path.join(copy, "blobs") + "/") for line in handle.read().splitlines()
        )
    assert listed and all(
        line.startswith(os.path.join(copy, "blobs") + "/") and os.path.isfile(line) for line in listed
    )
    rows = _rows(out3)
    assert all(
        r["blob"].startswith(os.path.join(copy, "blobs") + "/")
        for k, r in rows.items()
        if r["blob"] and k.startswith("cc3m")
    )

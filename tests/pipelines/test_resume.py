"""Resume, and exactly-once output when bundles fail or run twice."""

import glob
import hashlib
import os

import pyarrow.dataset as ds
import pytest

from pipelines import ingest
from pipelines.demo.sample_site import Reply, jpeg
from tests.conftest import local_options
from tests.table_readers import one_line
from transforms import schema
from transforms.io import sinks

JPEG = {"Content-Type": "image/jpeg"}


def rows_of(out):
    table = ds.dataset(os.path.join(out, "images"), format="parquet").to_table()
    keys = table.column("key").to_pylist()
    assert len(keys) == len(set(keys)), "a key came out twice"
    return {r["key"]: r for r in table.to_pylist()}


def blobs_intact(out):
    paths = [p for p in glob.glob(os.path.join(out, "blobs", "*", "*", "*")) if ".tmp-" not in p]
    for path in paths:
        with open(path, "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == os.path.basename(path).split(".")[0]
    return paths


@pytest.fixture
def manifest(web, tmp_path):
    lines = []
    for n in range(8):
        web.routes[f"/ok{n}.jpg"] = Reply(200, jpeg(n), JPEG)
        lines.append(f"photo {n}\t{web.url(f'/ok{n}.jpg')}")
    # Fail on the first night, fine afterwards.
    web.routes["/flaky500.jpg"] = [Reply(500, b"down")] * 3 + [Reply(200, jpeg(20), JPEG)]
    web.routes["/flakyslow.jpg"] = [Reply(200, jpeg(21), JPEG, delay=2.0), Reply(200, jpeg(21), JPEG)]
    web.routes["/gone.jpg"] = Reply(404, b"")
    lines += [
        f"flaky\t{web.url('/flaky500.jpg')}",
        f"slow\t{web.url('/flakyslow.jpg')}",
        f"gone\t{web.url('/gone.jpg')}",
    ]
    path = tmp_path / "cc3m.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(manifest, out, *extra, **options):
    args = local_options(output=out, **{"allow-network": "127.0.0.1/32", "timeout": 1.0, "retries": 2}, **options)
    if manifest:
        args.append(f"--manifest=cc3m={manifest}")
    ingest.run(args + list(extra))


def test_resume_fetches_only_unsettled_rows_and_keeps_blobs(web, manifest, tmp_path):
    out = str(tmp_path / "out")
    run(manifest, out)
    first = rows_of(out)
    assert first["cc3m:9"]["status"] == schema.HTTP_ERROR and first["cc3m:10"]["status"] == schema.TIMEOUT
    blob_times = {p: os.stat(p).st_mtime_ns for p in blobs_intact(out)}
    first_files = set(glob.glob(os.path.join(out, "images", "*.parquet")))
    hits_before = dict(web.hits)

    run(None, out, "--resume")
    second = rows_of(out)
    assert set(second) == set(first)
    assert second["cc3m:9"]["status"] == schema.OK and second["cc3m:10"]["status"] == schema.OK
    assert second["cc3m:11"]["status"] == schema.HTTP_ERROR  # 404 again: still every row
    for n in range(8):  # settled rows were carried, not fetched
        assert web.hits[f"/ok{n}.jpg"] == hits_before[f"/ok{n}.jpg"] == 1
        assert second[f"cc3m:{n + 1}"]["fetched_at"] == first[f"cc3m:{n + 1}"]["fetched_at"]
    assert web.hits["/gone.jpg"] == 2
    for path, mtime in blob_times.items():  # and their blobs not written again
        assert os.stat(path).st_mtime_ns == mtime
    assert len(blobs_intact(out)) == 10
    assert not first_files & set(glob.glob(os.path.join(out, "images", "*.parquet")))  # old parts retired
    summary = sinks.read_json(os.path.join(out, "summary.json"))
    assert summary["resume"] == {"carried": 8, "fetched": 3}


def test_retry_status_limits_what_is_fetched_again(web, manifest, tmp_path):
    out = str(tmp_path / "out")
    run(manifest, out)
    run(manifest, out, "--resume", **{"retry-status": "timeout"})
    rows = rows_of(out)
    assert rows["cc3m:10"]["status"] == schema.OK  # timeout: retried
    assert rows["cc3m:9"]["status"] == schema.HTTP_ERROR  # http_error: carried
    assert web.hits["/flaky500.jpg"] == 3 and web.hits["/flakyslow.jpg"] == 2


def test_unknown_retry_status_is_refused():
    from transforms.io.resume import parse_retry_statuses

    with pytest.raises(ValueError, match="unknown status"):
        parse_retry_statuses("timeout,nope")


def test_a_crash_mid_bundle_then_a_rerun_gives_every_row_once(web, manifest, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    real_store = sinks.StoreBlobDoFn._store
    stored = []

    def crash_after_three(self, uri, body):
        if len(stored) == 3:
            raise RuntimeError("injected worker failure")
        stored.append(uri)
        return real_store(self, uri, body)

    monkeypatch.setattr(sinks.StoreBlobDoFn, "_store", crash_after_three)
    with pytest.raises(Exception, match="injected worker failure"):
        run(manifest, out)
    assert not glob.glob(os.path.join(out, "images", "*.parquet"))  # nothing half-committed
    assert len(blobs_intact(out)) == 3

    monkeypatch.setattr(sinks.StoreBlobDoFn, "_store", real_store)
    # the retry: same command, with a timeout a loaded machine keeps (CI beside a long job once
    # timed out, at 1 s, rows whose blobs the crashed run had stored, leaving them unreferenced)
    run(manifest, out, "--timeout=10")
    rows = rows_of(out)
    assert len(rows) == 11
    ok = {r["blob"] for r in rows.values() if r["status"] == schema.OK}
    assert set(blobs_intact(out)) == ok, sorted((r["key"], r["status"]) for r in rows.values())
    assert not glob.glob(os.path.join(out, "_tmp-*", "*"))  # the crashed run's shards are gone


def test_every_bundle_replayed_still_gives_every_row_once(web, manifest, tmp_path):
    out = str(tmp_path / "out")
    run(manifest, out, "--direct_runner_bundle_repeat=1")
    rows = rows_of(out)
    assert len(rows) == 11
    assert web.hits["/ok0.jpg"] >= 2  # the fetch really ran twice, side effects included
    ok = {r["blob"] for r in rows.values() if r["status"] == schema.OK}
    assert set(blobs_intact(out)) == ok


def test_rerun_without_resume_replaces_the_table(web, manifest, tmp_path):
    out = str(tmp_path / "out")
    run(manifest, out)
    run(manifest, out)
    assert len(rows_of(out)) == 11


def test_resume_without_a_table_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no table to resume"):
        run(None, str(tmp_path / "empty"), "--resume")


def test_resume_with_the_next_slice_of_a_manifest_is_refused(web, manifest, tmp_path, capsys):
    """CC3M keys are line numbers: `--resume` given the next slice of a manifest (or an edited
    copy) found every key settled and carried OUT's rows: the table said "11 rows, ok" with the
    first slice's images, none of the new URLs fetched, exit 0. A line whose URL is not the one
    OUT fetched is another record: exit 2, one line, OUT as it was."""
    out = str(tmp_path / "out")
    run(manifest, out)
    before = rows_of(out)
    capsys.readouterr()
    web.routes["/other.jpg"] = Reply(200, jpeg(30), JPEG)
    lines = manifest.read_text().splitlines()
    lines[1] = f"another photo\t{web.url('/other.jpg')}"
    edited = tmp_path / "next.tsv"
    edited.write_text("\n".join(lines) + "\n")
    args = local_options(output=out, **{"allow-network": "127.0.0.1/32", "timeout": 1.0})
    assert ingest.main([*args, f"--manifest=cc3m={edited}", "--resume"]) == 2
    line = one_line(capsys, "ingest")
    assert "cc3m:2" in line and "/ok1.jpg" in line and "/other.jpg" in line, line
    assert rows_of(out) == before
    assert web.hits.get("/other.jpg", 0) == 0


def test_resume_fetches_an_id_keyed_row_whose_url_moved():
    """An ImageID names its record whatever its URL: a manifest that moved it gets the new URL
    fetched, not the old URL's outcome carried."""
    from transforms.io.resume import _Choose

    old = schema.new_row("openimages", "openimages:abc", "http://old.example/a.jpg", status=schema.OK)
    new = schema.new_row("openimages", "openimages:abc", "http://new.example/a.jpg")
    same = dict(new, url=old["url"])
    choose = _Choose(frozenset({schema.TIMEOUT}), {})
    choose.setup()
    moved = list(choose.process(("openimages:abc", {"new": [new], "old": [dict(old)]})))
    assert [(o.tag, o.value["url"]) for o in moved] == [(_Choose.FETCH, "http://new.example/a.jpg")]
    kept = list(choose.process(("openimages:abc", {"new": [same], "old": [dict(old)]})))
    assert [r["url"] for r in kept] == ["http://old.example/a.jpg"]  # carried, not a tagged output


@pytest.mark.parametrize("size", [0, 1000], ids=["emptied", "cut"])
def test_resume_on_a_cut_table_file_names_it_in_one_line(web, manifest, tmp_path, capsys, size):
    """A part of OUT/images emptied or cut short (a copy interrupted, a full disk): --resume is
    exit 2 with one line naming the file, as export, dedup and refresh say it. Before, the line
    was pyarrow's alone (`ingest: Parquet magic bytes not found in footer. ...`), no file named."""
    out = str(tmp_path / "out")
    run(manifest, out)
    (part,) = glob.glob(os.path.join(out, "images", "*.parquet"))
    with open(part, "r+b") as handle:
        handle.truncate(size)
    capsys.readouterr()
    args = local_options(output=out, **{"allow-network": "127.0.0.1/32", "no-progress": True, "no-report": True})
    assert ingest.main([*args, f"--manifest=cc3m={manifest}", "--resume"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ingest: "), lines
    assert part in lines[0] and "not a readable Parquet file" in lines[0], lines[0]


def test_resume_with_a_slice_added_is_refused_not_stored_twice(web, manifest, tmp_path, capsys):
    """One CC3M file keys its rows `cc3m:<line>`; two files key them `cc3m:<file>:<line>`. A
    `--resume` given the first slice again plus the next one found none of OUT's keys, kept OUT's
    11 rows (a resume never drops one) and fetched the slice's 11 lines again under the new keys:
    every row twice, books balanced, exit 0. Now exit 2, one line; the same manifests still resume."""
    out = str(tmp_path / "out")
    run(manifest, out)
    before = rows_of(out)
    capsys.readouterr()
    web.routes["/next.jpg"] = Reply(200, jpeg(31), JPEG)
    following = tmp_path / "next.tsv"
    following.write_text(f"next photo\t{web.url('/next.jpg')}\n")
    args = local_options(output=out, **{"allow-network": "127.0.0.1/32", "timeout": 1.0})
    assert ingest.main([*args, f"--manifest=cc3m={manifest}", f"--manifest=cc3m={following}", "--resume"]) == 2
    line = one_line(capsys, "ingest")
    assert "cc3m:cc3m.tsv:" in line and str(manifest) in line and "twice" in line, line
    assert rows_of(out) == before
    assert ingest.main([*args, f"--manifest=cc3m={manifest}", "--resume"]) == 0
    assert set(rows_of(out)) == set(before)

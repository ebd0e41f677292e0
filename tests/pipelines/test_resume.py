"""Resume, and exactly-once output when bundles fail or run twice."""

import dataclasses
import glob
import hashlib
import os
import shutil

import pyarrow.dataset as ds
import pytest

from pipelines import ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.conftest import local_options
from tests.table_readers import one_line
from transforms import schema
from transforms.errors import BadInput
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


def write_manifest(web, folder):
    """Eight good URLs, one 500 then fine, one slow then fast, one 404: cc3m.tsv in `folder`."""
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
    path = folder / "cc3m.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def manifest(web, tmp_path):
    return write_manifest(web, tmp_path)


@dataclasses.dataclass(frozen=True)
class FirstRun:
    """The first ingest of write_manifest's rows, shared by the tests that start from its OUT."""

    web: SampleWebServer  # serves the manifest's URLs; its scripted lists are past their failures
    manifest: str
    out: str  # read-only: a test copies it (first_out) before it runs a job on it
    hits: dict  # the web's hits after the first run


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    # why: seven tests started with the same first run (~5 s each: a 1 s timeout, 1.5 s of backoff);
    # each now copies its OUT. The web stays up: the table names its URLs.
    folder = tmp_path_factory.mktemp("first-run")
    with SampleWebServer() as web:
        manifest = write_manifest(web, folder)
        out = str(folder / "out")
        run(manifest, out)
        yield FirstRun(web=web, manifest=manifest, out=out, hits=dict(web.hits))


@pytest.fixture
def first_out(first_run, tmp_path):
    """A copy of the first run's OUT, this test's own."""
    out = str(tmp_path / "out")
    shutil.copytree(first_run.out, out)
    return out


def hits_since(web, before, path):
    """Requests to `path` since the copy `before` of web.hits (the server is shared by the module)."""
    return web.hits.get(path, 0) - before.get(path, 0)


def run(manifest, out, *extra, **options):
    # why merged: a job refuses a single-value option given twice (pipelines/launch/arguments.py)
    args = local_options(output=out, **{"allow-network": "127.0.0.1/32", "timeout": 1.0, "retries": 2, **options})
    if manifest:
        args.append(f"--manifest=cc3m={manifest}")
    ingest.run(args + list(extra))


def test_resume_fetches_only_unsettled_rows_and_keeps_blobs(first_run, first_out):
    web, out = first_run.web, first_out
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
        assert first_run.hits[f"/ok{n}.jpg"] == 1 and hits_since(web, hits_before, f"/ok{n}.jpg") == 0
        assert second[f"cc3m:{n + 1}"]["fetched_at"] == first[f"cc3m:{n + 1}"]["fetched_at"]
    assert first_run.hits["/gone.jpg"] == 1 and hits_since(web, hits_before, "/gone.jpg") == 1
    for path, mtime in blob_times.items():  # and their blobs not written again
        assert os.stat(path).st_mtime_ns == mtime
    assert len(blobs_intact(out)) == 10
    assert not first_files & set(glob.glob(os.path.join(out, "images", "*.parquet")))  # old parts retired
    summary = sinks.read_json(os.path.join(out, "summary.json"))
    assert summary["resume"] == {"carried": 8, "fetched": 3}


def test_retry_status_limits_what_is_fetched_again(first_run, first_out):
    web, out = first_run.web, first_out
    hits_before = dict(web.hits)
    run(first_run.manifest, out, "--resume", **{"retry-status": "timeout"})
    rows = rows_of(out)
    assert rows["cc3m:10"]["status"] == schema.OK  # timeout: retried
    assert rows["cc3m:9"]["status"] == schema.HTTP_ERROR  # http_error: carried
    assert first_run.hits["/flaky500.jpg"] == 3 and hits_since(web, hits_before, "/flaky500.jpg") == 0
    assert first_run.hits["/flakyslow.jpg"] == 1 and hits_since(web, hits_before, "/flakyslow.jpg") == 1


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
    run(manifest, out, timeout=10)
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


def test_rerun_without_resume_replaces_the_table(first_run, first_out):
    assert len(rows_of(first_out)) == 11
    run(first_run.manifest, first_out)
    assert len(rows_of(first_out)) == 11


def test_resume_without_a_table_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no table to resume"):
        run(None, str(tmp_path / "empty"), "--resume")


def test_resume_with_the_next_slice_of_a_manifest_is_refused(first_run, first_out, tmp_path, capsys):
    """CC3M keys are line numbers: `--resume` given the next slice of a manifest (or an edited
    copy) found every key settled and carried OUT's rows: the table said "11 rows, ok" with the
    first slice's images, none of the new URLs fetched, exit 0. A line whose URL is not the one
    OUT fetched is another record: exit 2, one line, OUT as it was."""
    web, manifest, out = first_run.web, first_run.manifest, first_out
    before = rows_of(out)
    capsys.readouterr()
    web.routes["/other.jpg"] = Reply(200, jpeg(30), JPEG)  # a route of its own on the shared web
    hits_before = dict(web.hits)
    lines = manifest.read_text().splitlines()
    lines[1] = f"another photo\t{web.url('/other.jpg')}"
    edited = tmp_path / "next.tsv"
    edited.write_text("\n".join(lines) + "\n")
    args = local_options(output=out, **{"allow-network": "127.0.0.1/32", "timeout": 1.0})
    assert ingest.main([*args, f"--manifest=cc3m={edited}", "--resume"]) == 2
    line = one_line(capsys, "ingest")
    assert "cc3m:2" in line and "/ok1.jpg" in line and "/other.jpg" in line, line
    assert rows_of(out) == before
    assert hits_since(web, hits_before, "/other.jpg") == 0


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
def test_resume_on_a_cut_table_file_names_it_in_one_line(first_run, first_out, capsys, size):
    """A part of OUT/images emptied or cut short (a copy interrupted, a full disk): --resume is
    exit 2 with one line naming the file, as export, dedup and refresh say it. Before, the line
    was pyarrow's alone (`ingest: Parquet magic bytes not found in footer. ...`), no file named."""
    manifest, out = first_run.manifest, first_out
    (part,) = glob.glob(os.path.join(out, "images", "*.parquet"))
    with open(part, "r+b") as handle:
        handle.truncate(size)
    capsys.readouterr()
    args = local_options(output=out, **{"allow-network": "127.0.0.1/32", "no-progress": True, "no-report": True})
    assert ingest.main([*args, f"--manifest=cc3m={manifest}", "--resume"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ingest: "), lines
    assert part in lines[0] and "not a readable Parquet file" in lines[0], lines[0]


def test_resume_with_a_slice_added_is_refused_not_stored_twice(first_run, first_out, capsys):
    """One CC3M file keys its rows `cc3m:<line>`; two files key them `cc3m:<file>:<line>`. A
    `--resume` given the first slice again plus the next one found none of OUT's keys, kept OUT's
    11 rows (a resume never drops one) and fetched the slice's 11 lines again under the new keys:
    every row twice, books balanced, exit 0. Now exit 2, one line; the same manifests still resume."""
    web, manifest, out = first_run.web, first_run.manifest, first_out
    before = rows_of(out)
    capsys.readouterr()
    web.routes["/next.jpg"] = Reply(200, jpeg(31), JPEG)
    # why beside the shared manifest (a name no other test uses): two files key their rows by their
    # paths from the folder both are in, and the line below names cc3m.tsv so
    following = manifest.parent / "next-slice-added.tsv"
    following.write_text(f"next photo\t{web.url('/next.jpg')}\n")
    args = local_options(output=out, **{"allow-network": "127.0.0.1/32", "timeout": 1.0})
    assert ingest.main([*args, f"--manifest=cc3m={manifest}", f"--manifest=cc3m={following}", "--resume"]) == 2
    line = one_line(capsys, "ingest")
    assert "cc3m:cc3m.tsv:" in line and str(manifest) in line and "twice" in line, line
    assert rows_of(out) == before
    assert ingest.main([*args, f"--manifest=cc3m={manifest}", "--resume"]) == 0
    assert set(rows_of(out)) == set(before)


def test_a_carried_row_takes_this_runs_caption_and_labels(first_run, first_out, tmp_path):
    """A resume with a caption corrected (same line, same URL) and a --cc3m-labels file added
    carried OUT's rows as they were: line 1 kept its old caption, line 2 no labels, while the rows
    fetched again got the new text (a table of two versions, exit 0). A carried row keeps its fetch
    and takes its text from this run's manifests."""
    web, manifest, out = first_run.web, first_run.manifest, first_out
    before = rows_of(out)
    hits_before = dict(web.hits)
    lines = manifest.read_text().splitlines()
    lines[0] = f"photo 0, caption corrected\t{web.url('/ok0.jpg')}"
    edited = tmp_path / "corrected.tsv"
    edited.write_text("\n".join(lines) + "\n")
    labels = tmp_path / "labels.tsv"
    labels.write_text(f"photo 1\t{web.url('/ok1.jpg')}\tdog\t/m/0bt9lr\t0.75\n")
    run(edited, out, "--resume", f"--cc3m-labels={labels}")
    after = rows_of(out)
    assert set(after) == set(before)
    assert after["cc3m:1"]["caption"] == "photo 0, caption corrected"
    assert [(label["id"], label["name"]) for label in after["cc3m:2"]["labels"]] == [("/m/0bt9lr", "dog")]
    assert after["cc3m:3"]["caption"] == "photo 2" and not after["cc3m:3"]["labels"]
    for key in ("cc3m:1", "cc3m:2"):  # still carried: the fetch is OUT's
        assert after[key]["fetched_at"] == before[key]["fetched_at"] and after[key]["sha256"] == before[key]["sha256"]
    assert hits_since(web, hits_before, "/ok0.jpg") == hits_since(web, hits_before, "/ok1.jpg") == 0


def test_a_carried_row_is_fetched_again_when_the_hash_list_changed(web, tmp_path):
    """A resume given another CC12M hash list (here the same path, rewritten) carried OUT's rows with
    the old list's expected hash and verdict: cc12m:1 stayed `ok` under a list that says its image
    is another, while the rows fetched again were checked against the new list (a table of two hash
    lists, exit 0). A carried row whose expected hashes changed is fetched again, and its verdict
    is the new list's; a row whose expected hashes did not change stays carried."""
    bodies = {n: jpeg(n) for n in range(3)}
    for n, body in bodies.items():
        web.routes[f"/ok{n}.jpg"] = Reply(200, body, JPEG)
    manifest = tmp_path / "cc12m.tsv"
    manifest.write_text("".join(f"{web.url(f'/ok{n}.jpg')}\tphoto {n}\n" for n in range(3)))
    hashes = tmp_path / "hashes.tsv"
    hashes.write_text(f"{web.url('/ok0.jpg')}\t{hashlib.sha256(bodies[0]).hexdigest()}\n")
    out = str(tmp_path / "out")
    args = [f"--manifest=cc12m={manifest}", f"--cc12m-hashes={hashes}"]
    run(None, out, *args)
    before = rows_of(out)
    assert before["cc12m:1"]["status"] == schema.OK
    hits_before = dict(web.hits)
    wrong = "ab" * 32
    hashes.write_text(
        f"{web.url('/ok0.jpg')}\t{wrong}\n{web.url('/ok1.jpg')}\t{hashlib.sha256(bodies[1]).hexdigest()}\n"
    )
    run(None, out, *args, "--resume")
    after = rows_of(out)
    assert after["cc12m:1"]["status"] == schema.HASH_MISMATCH and after["cc12m:1"]["expected_sha256"] == wrong
    assert after["cc12m:2"]["status"] == schema.OK
    assert after["cc12m:2"]["expected_sha256"] == hashlib.sha256(bodies[1]).hexdigest()
    assert after["cc12m:3"]["fetched_at"] == before["cc12m:3"]["fetched_at"]  # its expected hashes: none, as before
    assert hits_since(web, hits_before, "/ok2.jpg") == 0
    assert sinks.read_json(os.path.join(out, "summary.json"))["resume"] == {"carried": 1, "fetched": 2}


@pytest.mark.parametrize("option", ["max-bytes", "max-pixels"])
def test_a_carried_row_past_this_runs_size_limit_is_fetched_again(first_run, first_out, option):
    """A resume with a lower --max-bytes or --max-pixels carried OUT's `ok` rows past the new limit
    as `ok` (exit 0), while a row fetched again past it was too_large / decode_error: one table of two
    limits. Such a row is fetched again, so the new limit decides it; rows within it stay carried."""
    out = first_out
    before = rows_of(out)
    ok = {key: row for key, row in before.items() if row["status"] == schema.OK}
    if option == "max-bytes":
        limit = sorted(row["size_bytes"] for row in ok.values())[len(ok) // 2]  # half the rows past it
        past = {key for key, row in ok.items() if row["size_bytes"] > limit}
    else:
        limit = 320 * 240 - 1  # every picture is 320x240
        past = set(ok)
    assert 0 < len(past) <= len(ok)
    run(first_run.manifest, out, "--resume", **{option: limit})
    after = rows_of(out)
    assert set(after) == set(before)
    failed = schema.TOO_LARGE if option == "max-bytes" else schema.DECODE_ERROR
    for key in ok:
        if key in past:
            assert after[key]["status"] == failed and after[key]["fetched_at"] != before[key]["fetched_at"], key
        else:
            assert after[key]["status"] == schema.OK and after[key]["fetched_at"] == before[key]["fetched_at"], key


def test_a_resume_with_other_views_is_refused(first_run, first_out):
    """`--views none` first, then `--resume` with the default views (or the reverse): exit 0, the
    carried rows without the views' hashes and the rows fetched again with them, so dedup matched
    through the views on some rows only. Refused before anything is fetched or written."""
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(first_out, "**"), recursive=True)}
    with pytest.raises(BadInput) as refused:
        run(first_run.manifest, first_out, "--resume", views="mirror")
    assert str(refused.value) == (
        "--resume: OUT's rows were hashed with --views mirror,trim,crop,centre, this run's would be with"
        " --views mirror: the rows carried would keep OUT's view hashes and the rows fetched get the"
        " others. Resume with --views mirror,trim,crop,centre, or ingest into a new --output"
    )
    assert {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(first_out, "**"), recursive=True)} == before

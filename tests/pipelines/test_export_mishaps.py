"""Export mishaps of a tired operator: EXP spelt as OUT another way or put inside OUT/images, an
export interrupted while an earlier export's shards are in EXP, blobs it may not read."""

import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import export
from tests import job_process
from tests.conftest import local_options
from tests.pipelines.test_job_contract import assert_one_line
from transforms import schema
from transforms.export import export_books
from transforms.io.sinks import blob_uri

pytestmark = pytest.mark.timeout(180)


def write_out(out, count):
    """An ingest output of `count` ok rows with small, distinct JPEG blobs (keys sort as numbered)."""
    os.makedirs(os.path.join(out, "images"))
    rows = []
    for n in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (80, 60), ((n * 37) % 256, (n * 91) % 256, 128)).save(buffer, "JPEG")
        data = buffer.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        blob = blob_uri(out, sha, "JPEG")
        os.makedirs(os.path.dirname(blob), exist_ok=True)
        with open(blob, "wb") as handle:
            handle.write(data)
        rows.append(
            schema.new_row(
                "cc3m",
                f"cc3m:{n:04d}",
                f"https://example.org/{n}.jpg",
                f"caption {n}",
                status=schema.OK,
                sha256=sha,
                phash=f"{n:016x}",
                width=80,
                height=60,
                blob=blob,
                format="JPEG",
                is_canonical=True,
            )
        )
    table = pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA)
    pq.write_table(table, os.path.join(out, "images", "part-0.parquet"))
    return rows


def _files(directory):
    found = {}
    for name in sorted(set(os.listdir(directory)) - {"_LEASE"}):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                found[name] = handle.read()
    return found


@pytest.mark.parametrize("spelling", ["{rel}", "{out}/.", "{out}/images", "{out}/images/exp", "{link}"])
def test_an_output_that_is_the_input_or_inside_its_table_is_refused(tmp_path, capsys, monkeypatch, spelling):
    """Spelt another way, EXP = OUT would have its summary.json replace OUT's; EXP inside OUT/images
    would add hf-parquet shards to the table every later job reads. Both: exit 2, nothing written."""
    out = str(tmp_path / "out")
    write_out(out, 3)
    os.symlink(out, tmp_path / "link")
    monkeypatch.chdir(tmp_path)
    before = {name: _files(os.path.join(out, name)) for name in ("", "images")}
    output = spelling.format(rel="out", out=out, link=str(tmp_path / "link"))
    status = export.main(local_options(input=out, output=output, format="hf-parquet"))
    err = capsys.readouterr().err
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "must not be the --input directory" in lines[0], err
    assert {name: _files(os.path.join(out, name)) for name in ("", "images")} == before
    assert not os.path.exists(os.path.join(out, "images", "exp"))


def test_an_output_beside_or_under_the_input_but_outside_its_table_is_accepted(tmp_path):
    out = str(tmp_path / "out")
    write_out(out, 3)
    assert export.main(local_options(input=out, output=os.path.join(out, "export"), format="webdataset")) == 0
    assert export.main(local_options(input=out, output=str(tmp_path / "out-export"), format="webdataset")) == 0


def _being_read(fifo):
    """Someone has the pipe open for reading (the export is blocked on it)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def _shards_done(exp, before):
    """Shards this run wrote: still under _tmp-<run>/, or already under a final name."""
    aside = [
        name for entry in os.listdir(exp) if entry.startswith("_tmp-") for name in os.listdir(os.path.join(exp, entry))
    ]
    replaced = [name for name, data in _files(exp).items() if name.endswith(".tar") and before.get(name) != data]
    return len(aside) + len(replaced)


def test_an_export_killed_midway_leaves_the_earlier_export_whole_and_a_rerun_completes(tmp_path):
    """kill -9 while the export writes its shards: before, the shards already written had replaced the
    earlier export's under the same names (EXP a mix of two exports with the old summary.json, and
    the Ctrl-C line said EXP kept its previous shards). Now no shard is renamed before every one is
    written. The rerun completes and removes the killed run's temporary directory."""
    out, exp = str(tmp_path / "out"), str(tmp_path / "exp")
    rows = write_out(out, 12)
    assert export.main(local_options(input=out, output=exp, format="webdataset", **{"shard-size": 1})) == 0
    before = _files(exp)
    # The row sorting last (the last shard) is read from a pipe nobody writes to: a storage read
    # that hangs, so the run is surely killed after writing the 11 other shards and before its end.
    blob = rows[-1]["blob"]
    with open(blob, "rb") as handle:
        data = handle.read()
    os.remove(blob)
    os.mkfifo(blob)
    argv = ["--input", out, "--output", exp, "--format", "webdataset", "--shard-size", "1", "--resize", "32"]
    running = job_process.start("-m", "pipelines.export", "--runner=FnApiRunner", *argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (_being_read(blob) and _shards_done(exp, before) == 12):
            assert running.poll() is None, running.communicate()
            assert time.monotonic() < deadline, (_being_read(blob), _shards_done(exp, before))
            time.sleep(0.05)
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.wait()
    assert _files(exp) == before  # the 12 earlier shards and their summary.json, byte for byte

    os.remove(blob)
    with open(blob, "wb") as handle:
        handle.write(data)
    assert export.main(["--runner=FnApiRunner", *argv]) == 0
    with open(os.path.join(exp, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    assert summary["exported"] == 12 and summary["resize"]["size"] == 32 and summary["books_balanced"]
    assert sorted(os.listdir(exp)) == [f"{n:05d}.tar" for n in range(12)] + ["summary.json"]


def test_a_summary_that_cannot_be_written_leaves_the_earlier_export_whole(tmp_path, capsys, monkeypatch):
    """A full disk when EXP/summary.json is written: before, this run's shards were already in
    place under the earlier export's summary. Now the summary is written aside before any shard
    is published: exit 1, one line, EXP as the earlier export left it, no temporary folder left."""
    out, exp = str(tmp_path / "out"), str(tmp_path / "exp")
    write_out(out, 12)
    assert export.main(local_options(input=out, output=exp, format="webdataset", **{"shard-size": 5})) == 0
    before = _files(exp)
    written = export_books.write_json

    def disk_full_for_summaries(path, payload, **kwargs):
        if path.endswith("summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return written(path, payload, **kwargs)

    monkeypatch.setattr(export_books, "write_json", disk_full_for_summaries)
    capsys.readouterr()
    assert export.main(local_options(input=out, output=exp, format="webdataset", **{"shard-size": 4})) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left on device" in lines[0], lines
    assert _files(exp) == before
    assert sorted(name for name in os.listdir(exp) if name.startswith("_tmp")) == []


def test_a_publish_cut_between_two_shards_leaves_no_summary_over_the_mix(tmp_path):
    """The shards are renamed into place one by one (on Dataflow by several workers); a run cut
    between two renames leaves new and earlier shards side by side. Before, the earlier export's
    summary.json still stood over that mix, vouching for it. Now it is moved aside before the first
    rename: EXP has no summary.json (an unfinished export), and a rerun completes. The cut: one
    final name is taken by a folder, so that shard's rename fails."""
    out, exp = str(tmp_path / "out"), str(tmp_path / "exp")
    write_out(out, 12)
    assert export.main(local_options(input=out, output=exp, format="webdataset", **{"shard-size": 12})) == 0
    assert sorted(os.listdir(exp)) == ["00000.tar", "summary.json"]
    os.makedirs(os.path.join(exp, "00002.tar"))  # the third of this run's four shards cannot be renamed
    argv = local_options(input=out, output=exp, format="webdataset", **{"shard-size": 3})
    assert export.main(argv) == 1
    assert "summary.json" not in os.listdir(exp)
    os.rmdir(os.path.join(exp, "00002.tar"))
    assert export.main(argv) == 0
    with open(os.path.join(exp, "summary.json"), encoding="utf-8") as handle:
        assert json.load(handle)["shard_count"] == 4
    assert sorted(os.listdir(exp)) == [f"{n:05d}.tar" for n in range(4)] + ["summary.json"]


@pytest.mark.parametrize("export_format", ["webdataset", "hf-parquet"])
def test_a_blob_the_export_may_not_read_fails_it_and_leaves_the_earlier_export_whole(tmp_path, export_format):
    """A blob there but refused (permission denied: blobs/ copied from another user, a mount's
    permissions) is the environment failing, not a lost picture. Before, each such row was
    skipped as `unreadable_blob` and the export published the rest over the earlier one, exit 0
    (5 of 6 rows; with blobs/ itself unreadable, 0 of 27 and an empty shard). Now exit 1, one line
    naming the blob, EXP as the earlier export left it; once readable again a rerun exports all."""
    out, exp = str(tmp_path / "out"), str(tmp_path / "exp")
    rows = write_out(out, 6)
    argv = ["--input", out, "--output", exp, "--format", export_format, "--shard-size", "2"]
    assert export.main(["--runner=FnApiRunner", *argv]) == 0
    before = _files(exp)
    refused = rows[3]["blob"]
    os.chmod(refused, 0o000)
    try:
        if not job_process.file_modes_bind(refused):
            pytest.skip("root here cannot be made to obey file modes (no capability to drop)")
        done = job_process.job("export", "--runner=FnApiRunner", *argv, obey_file_modes=True)
    finally:
        os.chmod(refused, 0o644)
    assert_one_line(done, 1, "permission denied", refused)
    assert _files(exp) == before
    assert export.main(["--runner=FnApiRunner", *argv]) == 0
    with open(os.path.join(exp, "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    assert summary["exported"] == 6 and summary["skipped"]["unreadable_blob"] == 0
    assert not [name for name in os.listdir(exp) if name.startswith("_tmp-")]


@pytest.mark.parametrize("job", ["export", "dedup"])
def test_a_table_file_the_job_may_not_read_is_exit_1_permission_denied(tmp_path, job):
    """A part of OUT/images that is there but refused (chmod 000, another user's file) is the
    environment failing (CONTRACT: permission is exit 1), as the refresh already said. Before, the
    export and dedup footer checks called it `not a readable Parquet file (... Permission denied)`,
    exit 2, as if the file were damaged (the next message a reader meets says to restore it)."""
    out = str(tmp_path / "out")
    write_out(out, 3)
    part = os.path.join(out, "images", "part-0.parquet")
    os.chmod(part, 0o000)
    try:
        if not job_process.file_modes_bind(part):
            pytest.skip("root here cannot be made to obey file modes (no capability to drop)")
        options = ["--format", "webdataset"] if job == "export" else []
        done = job_process.job(job, "--input", out, "--output", tmp_path / "result", *options, obey_file_modes=True)
    finally:
        os.chmod(part, 0o644)
    assert_one_line(done, 1, "permission denied", part)

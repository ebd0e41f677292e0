"""A job that reads an OUT while another job publishes a new table into it (docs/integrity.md).

The writer's publish is replayed by hand, step by step, in its own order (its new parts renamed
into images/, then its summary.json, then the previous table's parts deleted), under a real lease
on OUT held by this process (a live writer), with the files of a real ingest rerun. The reader
(export --input, refresh --snapshot, dedup --input) runs in-process, and one of its steps is
wrapped so that the writer's steps land exactly between two of the reader's: no sleep races.

The rule: the reader reads one whole table (the old or the new) and says which, or fails with one
line and exit 1 (the input changed while it was read: rerun); never a mix, behind exit 0.
"""

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from apache_beam.io.filesystems import FileSystems

from pipelines import dedup, export, ingest, refresh
from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg
from tests.conftest import local_options
from tests.table_readers import LOOPBACK, one_line, run_refresh, summary
from transforms.io import checked_parquet
from transforms.io.lease import output_lease

pytestmark = pytest.mark.timeout(300)

OLD_ROWS, NEW_ROWS = 6, 8
REMOVED = "was removed while this job read it"
REWRITTEN = "is being rewritten by ingest"


def _manifest(web, folder, name, count):
    lines = []
    for n in range(count):
        web.routes[f"/p{n}.jpg"] = Reply(200, jpeg(n * 37 + 11), {"Content-Type": "image/jpeg"})
        lines.append(f"photo {n}\t{web.url(f'/p{n}.jpg')}\n")
    path = folder / name
    path.write_text("".join(lines))
    return path


def _ingest(out, manifest):
    args = local_options(
        manifest=f"cc3m={manifest}",
        output=out,
        **{"allow-network": LOOPBACK, "no-progress": True, "no-report": True, "retries": 0},
    )
    assert ingest.main(args) == 0


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """{"old": OUT of a 6-row ingest, "new": a copy of it re-ingested with 8 rows (another run's
    parts and summary.json)}, read-only; the web stays up (the refresh checks the URLs)."""
    folder = tmp_path_factory.mktemp("rw")
    with SampleWebServer() as web:
        old, new = str(folder / "old"), str(folder / "new")
        _ingest(old, _manifest(web, folder, "six.tsv", OLD_ROWS))
        shutil.copytree(old, new)
        _ingest(new, _manifest(web, folder, "eight.tsv", NEW_ROWS))
        yield {"old": old, "new": new}


class Writer:
    """The ingest rerun's publish into OUT, one step at a time, in its order."""

    def __init__(self, out, new):
        self.out, self.new = out, new
        self.old_parts = sorted(os.listdir(os.path.join(out, "images")))
        self.new_parts = sorted(os.listdir(os.path.join(new, "images")))
        assert not set(self.old_parts) & set(self.new_parts)

    def _put(self, source, target):
        shutil.copyfile(source, f"{target}.tmp-w")  # aside, then renamed, as the ingest does
        os.rename(f"{target}.tmp-w", target)

    def parts(self):
        for name in self.new_parts:
            self._put(os.path.join(self.new, "images", name), os.path.join(self.out, "images", name))

    def summary(self):
        self._put(os.path.join(self.new, "summary.json"), os.path.join(self.out, "summary.json"))

    def retire(self):
        for name in self.old_parts:
            os.remove(os.path.join(self.out, "images", name))

    def all(self):
        self.parts()
        self.summary()
        self.retire()


@pytest.fixture
def out(tables, tmp_path):
    """A fresh copy of the old OUT, with its Writer, under a live writer's lease."""
    path = str(tmp_path / "out")
    shutil.copytree(tables["old"], path)
    with output_lease(path, "ingest"):
        yield path, Writer(path, tables["new"])


def _after_check(monkeypatch, module, step):
    """`step` runs right after the reader (`module`) checked OUT/images against its record."""
    real = module.checked_table

    def checked_then_step(*args, **kwargs):
        checked = real(*args, **kwargs)
        step()
        return checked

    monkeypatch.setattr(module, "checked_table", checked_then_step)


def _while_reading(monkeypatch, step):
    """`step` runs once the reader's pipeline has started reading OUT/images' first file."""
    real = checked_parquet._records
    done = []

    def read_then_step(path, columns):
        if not done:
            done.append(path)
            step()
        yield from real(path, columns)

    monkeypatch.setattr(checked_parquet, "_records", read_then_step)


def _export(out, exp):
    return export.main(local_options(input=out, output=str(exp), format="webdataset", include="all"))


# ---- export --input OUT ----------------------------------------------------------------------------


def test_export_order1_table_replaced_after_the_check_fails_in_one_line(out, tmp_path, monkeypatch, capsys):
    out, writer = out
    _after_check(monkeypatch, export, writer.all)
    assert _export(out, tmp_path / "exp") == 1
    line = one_line(capsys, "export")
    assert REMOVED in line and "rerun" in line, line
    assert not (tmp_path / "exp" / "summary.json").exists()


def test_export_order1_new_parts_after_the_check_read_the_old_table_whole(out, tmp_path, monkeypatch, capsys):
    out, writer = out
    _after_check(monkeypatch, export, writer.parts)
    assert _export(out, tmp_path / "exp") == 0
    written = summary(str(tmp_path / "exp"))
    assert written["rows_read"] == OLD_ROWS
    assert written["input_table"]["rows"] == OLD_ROWS and written["input_table"]["written_by"] == "ingest"


@pytest.mark.parametrize("steps", ["parts", "parts+summary"])
def test_export_order2_a_table_half_published_is_refused_as_being_rewritten(out, tmp_path, capsys, steps):
    out, writer = out
    writer.parts()
    if steps == "parts+summary":
        writer.summary()
    assert _export(out, tmp_path / "exp") == 1
    line = one_line(capsys, "export")
    assert REWRITTEN in line and "rerun once it is done" in line, line
    assert not (tmp_path / "exp").exists()
    assert sorted(os.listdir(os.path.join(out, "images"))) == sorted(writer.old_parts + writer.new_parts)


def test_export_order3_writer_finished_while_reading_fails_in_one_line(out, tmp_path, monkeypatch, capsys):
    out, writer = out
    _while_reading(monkeypatch, writer.all)
    assert _export(out, tmp_path / "exp") == 1
    line = one_line(capsys, "export")
    assert REMOVED in line and writer.old_parts[0] in line, line
    assert not (tmp_path / "exp" / "summary.json").exists()
    assert sorted(os.listdir(os.path.join(out, "images"))) == writer.new_parts  # the writer unharmed


def test_export_order1_summary_rewritten_with_another_priority_after_the_check_fails(
    out, tmp_path, monkeypatch, capsys
):
    """The fallback order (dataset priority) comes from OUT/summary.json: one rewritten between the
    check and that read (a rerun with --dataset-priority) would order the old table's clusters by
    the new run's priority. Before: exit 0 with it."""
    out, _ = out
    path = os.path.join(out, "summary.json")

    def rewrite_priority():
        document = json.loads(open(path).read())
        document["duplicates"]["config"]["dataset_priority"] = ["zero", "cc3m"]
        open(path, "w").write(json.dumps(document))

    _after_check(monkeypatch, export, rewrite_priority)
    assert _export(out, tmp_path / "exp") == 1
    line = one_line(capsys, "export")
    assert "summary.json changed while it was read" in line and "rerun" in line, line
    assert not (tmp_path / "exp").exists()


def test_export_after_the_writer_reads_the_new_table_and_says_so(out, tmp_path, capsys):
    out, writer = out
    writer.all()
    assert _export(out, tmp_path / "exp") == 0
    table = summary(str(tmp_path / "exp"))["input_table"]
    assert table["rows"] == NEW_ROWS and table["files"] == len(writer.new_parts)
    assert table["written_by"] == "ingest" and len(table["table_sha256"]) == 64


# ---- refresh --snapshot OUT ------------------------------------------------------------------------


def _refresh_rows(fresh):
    return summary(str(fresh))["books"]


def test_refresh_order1_table_replaced_after_the_check_fails_in_one_line(out, tmp_path, monkeypatch, capsys):
    out, writer = out
    _after_check(monkeypatch, refresh, writer.all)
    assert run_refresh([out], str(tmp_path / "fresh")) == 1
    line = one_line(capsys, "refresh")
    assert REMOVED in line and "rerun" in line, line
    assert not (tmp_path / "fresh" / "status").exists()


def test_refresh_order1_new_parts_after_the_check_read_the_old_table_whole(out, tmp_path, monkeypatch, capsys):
    out, writer = out
    _after_check(monkeypatch, refresh, writer.parts)
    assert run_refresh([out], str(tmp_path / "fresh")) == 0
    books = _refresh_rows(tmp_path / "fresh")
    assert (books["rows_in"], books["merged"], books["rows_out"]) == (OLD_ROWS, 0, OLD_ROWS), books
    (snapshot,) = books["snapshots"]
    assert snapshot["table"]["rows"] == OLD_ROWS and snapshot["table"]["written_by"] == "ingest"


@pytest.mark.parametrize("steps", ["parts", "parts+summary"])
def test_refresh_order2_a_table_half_published_is_refused_as_being_rewritten(out, tmp_path, capsys, steps):
    out, writer = out
    writer.parts()
    if steps == "parts+summary":
        writer.summary()
    assert run_refresh([out], str(tmp_path / "fresh")) == 1
    line = one_line(capsys, "refresh")
    assert REWRITTEN in line and "rerun once it is done" in line, line
    assert not (tmp_path / "fresh").exists()


def test_refresh_order3_writer_finished_while_reading_fails_in_one_line(out, tmp_path, monkeypatch, capsys):
    out, writer = out
    _while_reading(monkeypatch, writer.all)
    assert run_refresh([out], str(tmp_path / "fresh")) == 1
    line = one_line(capsys, "refresh")
    assert REMOVED in line and writer.old_parts[0] in line, line
    assert not (tmp_path / "fresh" / "status").exists()
    assert sorted(os.listdir(os.path.join(out, "images"))) == writer.new_parts


# ---- dedup --input OUT -----------------------------------------------------------------------------


def _dedup(out, out3):
    return dedup.main(local_options(input=out, output=str(out3)))


def test_dedup_order1_table_replaced_after_the_check_fails_in_one_line(out, tmp_path, monkeypatch, capsys):
    out, writer = out
    _after_check(monkeypatch, dedup, writer.all)
    assert _dedup(out, tmp_path / "out3") == 1
    line = one_line(capsys, "dedup")
    assert REMOVED in line and "rerun" in line, line
    assert not os.path.exists(tmp_path / "out3" / "summary.json")


def test_dedup_order1_new_parts_after_the_check_read_the_old_table_whole(out, tmp_path, monkeypatch, capsys):
    out, writer = out
    _after_check(monkeypatch, dedup, writer.parts)
    assert _dedup(out, tmp_path / "out3") == 0
    written = summary(str(tmp_path / "out3"))
    assert written["rows"] == OLD_ROWS and written["table"]["rows"] == OLD_ROWS
    (read,) = written["books"]["inputs"]
    assert read["rows"] == OLD_ROWS and read["table"]["rows"] == OLD_ROWS


def test_dedup_order2_a_table_half_published_is_refused_as_being_rewritten(out, tmp_path, capsys):
    out, writer = out
    writer.parts()
    assert _dedup(out, tmp_path / "out3") == 1
    line = one_line(capsys, "dedup")
    assert REWRITTEN in line and "rerun once it is done" in line, line


def test_dedup_order3_writer_finished_while_reading_fails_in_one_line(out, tmp_path, monkeypatch, capsys):
    out, writer = out
    from transforms.clustering import table_dedup  # noqa: PLC0415

    real = table_dedup._open_parquet
    done = []

    def open_then_step(path):
        if not done:
            done.append(path)
            writer.all()
        return real(path)

    monkeypatch.setattr(table_dedup, "_open_parquet", open_then_step)
    assert _dedup(out, tmp_path / "out3") == 1
    line = one_line(capsys, "dedup")
    assert REMOVED in line, line
    assert not os.path.exists(tmp_path / "out3" / "summary.json")


# ---- on gs:// --------------------------------------------------------------------------------------


def test_on_gs_a_half_published_table_and_a_part_retired_while_reading_are_one_line_each(
    tables, gcs_emulator, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the local spill of a gs:// OUT
    bucket = gcs_emulator.bucket("readers-writers")
    for root, _, names in os.walk(tables["old"]):
        for name in names:
            relative = os.path.relpath(os.path.join(root, name), tables["old"])
            bucket.blob(f"out/{relative}").upload_from_filename(os.path.join(root, name))
    out = "gs://readers-writers/out"
    (part,) = [b for b in bucket.list_blobs(prefix="out/images/") if b.name.endswith(".parquet")]
    with output_lease(out, "ingest"):
        bucket.copy_blob(part, bucket, "out/images/part-new-run.parquet")  # (2): a new part, no summary yet
        assert _export(out, tmp_path / "exp") == 1
        line = one_line(capsys, "export")
        assert REWRITTEN in line and "part-new-run.parquet" in line, line
        bucket.blob("out/images/part-new-run.parquet").delete()
        # (3): the old part retired while the export reads (a step Beam can pickle: no client in it)
        _while_reading(monkeypatch, functools.partial(FileSystems.delete, [f"gs://readers-writers/{part.name}"]))
        assert _export(out, tmp_path / "exp") == 1
        line = one_line(capsys, "export")
        assert REMOVED in line and part.name.rsplit("/", 1)[-1] in line, line
    assert not (tmp_path / "exp" / "summary.json").exists()


# ---- the books: rows read = the rows of the table checked before the run -------------------------


def test_every_readers_books_fail_a_read_short_of_the_checked_table(tmp_path):
    import time  # noqa: PLC0415

    from transforms.clustering.dedup_books import dedup_books  # noqa: PLC0415
    from transforms.errors import BooksUnbalanced  # noqa: PLC0415
    from transforms.export import export_books  # noqa: PLC0415
    from transforms.export.resize import ResizeConfig  # noqa: PLC0415
    from transforms.liveness.summary import refresh_books  # noqa: PLC0415

    table = {"path": "OUT", "written_by": "ingest", "files": 1, "rows": OLD_ROWS, "table_sha256": "0" * 64}
    # why: a part matched as no file was read as 0 rows, and 0 read = 0 exported + 0 skipped balanced
    config = export.ExportConfig(
        "OUT", str(tmp_path / "exp"), "webdataset", "all", 10, ResizeConfig(), input_table=table
    )
    with pytest.raises(BooksUnbalanced, match=f"0 rows read of the {OLD_ROWS} rows of OUT's table"):
        export_books.check_books(None, config, time.time(), 0, [], [], str(tmp_path / "tmp"))
    assert not dedup_books([(0, 0)], [], 0, ["OUT"], tables=[table])["balanced"]
    assert dedup_books([(0, OLD_ROWS)], [{"rows": OLD_ROWS}], 0, ["OUT"], tables=[table])["balanced"]
    assert not refresh_books([("OUT", 0)], 0, [], {"OUT": table})["balanced"]


def test_a_half_published_table_of_a_killed_writer_stays_bad_input(tables, tmp_path, capsys):
    out = str(tmp_path / "out")
    shutil.copytree(tables["old"], out)
    Writer(out, tables["new"]).parts()
    # a writer killed between its renames: its lease stays, naming a PID that is gone
    killed = (
        "import os, sys; from transforms.io.lease import output_lease\n"
        "with output_lease(sys.argv[1], 'ingest'): os._exit(9)"
    )
    assert subprocess.run([sys.executable, "-c", killed, out], cwd=os.getcwd(), check=False).returncode == 9
    assert os.path.exists(os.path.join(out, "_LEASE"))
    assert _export(out, tmp_path / "exp") == 2
    line = one_line(capsys, "export")
    assert "not written by it" in line and REWRITTEN not in line, line


@pytest.mark.parametrize("writer", ["alive", "killed"])
def test_a_first_table_still_being_published_is_exit_1_and_a_killed_ones_exit_2(tables, tmp_path, capsys, writer):
    """A first run publishes its parts, then summary.json: a reader between the two finds parts and
    no summary. Its writer alive, nothing is wrong with the input (exit 1: rerun once it is done);
    killed, the table is unfinished (exit 2: rerun the writer). Before, both were exit 2."""
    out = str(tmp_path / "out")
    shutil.copytree(tables["old"], out)
    os.remove(os.path.join(out, "summary.json"))
    if writer == "killed":
        killed = (
            "import os, sys; from transforms.io.lease import output_lease\n"
            "with output_lease(sys.argv[1], 'ingest'): os._exit(9)"
        )
        assert subprocess.run([sys.executable, "-c", killed, out], check=False).returncode == 9
        assert _export(out, tmp_path / "exp") == 2
        assert "its table is unfinished" in one_line(capsys, "export")
        return
    with output_lease(out, "ingest"):
        assert _export(out, tmp_path / "exp") == 1
    line = one_line(capsys, "export")
    assert "its first table is being written by ingest" in line and "rerun once it is done" in line, line
    assert not (tmp_path / "exp").exists()

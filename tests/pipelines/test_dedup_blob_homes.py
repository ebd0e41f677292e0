"""The dedup job re-points an ingest output's blobs to that output's own blobs/ folder
(transforms/io/blob_homes.py): OUT3 holds no blobs, so its export reads them where its rows say.

Before, an OUT moved or copied since its ingest (`mv`, `cp -r`), or written by a version before
2026-12-02 with a relative --output (blobs `OUT/blobs/...`, relative to the ingest's working
directory), passed its stale blob paths on to OUT3: the export of the OUT itself found them under
its own blobs/, the export of OUT3 found none: 3 rows, 0 exported, 3 `unreadable_blob`, exit 0.
"""

import glob
import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from pipelines import dedup, export
from pipelines.demo.sample_site import jpeg
from tests.conftest import local_options
from tests.synthetic_out import row_with_blob, write_out

pytestmark = pytest.mark.timeout(180)


def _blobs(out):
    rows = [r for path in glob.glob(os.path.join(out, "images", "*.parquet")) for r in pq.read_table(path).to_pylist()]
    return {r["key"]: r["blob"] for r in rows}


def _exported(tmp_path, out, name):
    exp = str(tmp_path / name)
    assert export.main(local_options(input=out, output=exp, format="webdataset")) == 0
    with open(os.path.join(exp, "summary.json")) as handle:
        summary = json.load(handle)
    return summary["exported"], summary["skipped"].get("unreadable_blob", 0)


def test_an_ingest_output_moved_or_with_relative_blobs_keeps_its_pictures_through_dedup(tmp_path, monkeypatch):
    written = str(tmp_path / "written")
    rows = [row_with_blob(written, "cc3m", f"cc3m:{n}", jpeg(n, (160 + 16 * n, 120))) for n in range(3)]
    # the second and third as an older version wrote them: relative to the ingest's working directory
    for row in rows[1:]:
        row["blob"] = os.path.relpath(row["blob"], str(tmp_path))
    for row in rows:
        row.update(cluster_id=None, is_canonical=True, is_placeholder=False)
    write_out(written, rows)
    moved = str(tmp_path / "archive" / "moved")
    os.makedirs(os.path.dirname(moved))
    shutil.move(written, moved)  # a data team's reorganisation: the rows still name tmp/written
    monkeypatch.chdir(tmp_path / "archive")  # the relative blobs name nothing from here

    out3 = str(tmp_path / "out3")
    assert dedup.main(local_options(input=moved, output=out3)) == 0
    assert all(blob.startswith(os.path.join(moved, "blobs") + "/") for blob in _blobs(out3).values()), _blobs(out3)
    assert _exported(tmp_path, out3, "exp3") == (3, 0)

    # a dedup output's rows keep the blobs they name (the ingest output's; OUT3 has none)
    out4 = str(tmp_path / "out4")
    assert dedup.main(local_options(input=out3, output=out4)) == 0
    assert _blobs(out4) == _blobs(out3)
    assert _exported(tmp_path, out4, "exp4") == (3, 0)

"""Export mishaps of a tired operator: EXP spelt as OUT another way or put inside OUT/images, an
export interrupted while an earlier export's shards are in EXP."""

import hashlib
import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines import export
from tests.conftest import local_options
from transforms import schema
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
    for name in sorted(os.listdir(directory)):
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

"""Which rows an export holds, and the checks that an input is an ingest output."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transforms import schema
from transforms.errors import BadInput
from transforms.export import selection


def row(key, status="ok", cluster_id=None, is_canonical=True, is_placeholder=False):
    return schema.new_row(
        "cc3m",
        key,
        f"http://a.example/{key}.jpg",
        "a caption",
        status=status,
        cluster_id=cluster_id,
        is_canonical=is_canonical,
        is_placeholder=is_placeholder,
    )


@pytest.mark.parametrize(
    "r, canonical, everything",
    [
        (row("a"), None, None),  # in no cluster
        (row("b", cluster_id="c1", is_canonical=True), None, None),  # canonical of its cluster
        (row("c", cluster_id="c1", is_canonical=False), selection.NON_CANONICAL, None),
        (row("d", status=schema.HTTP_ERROR), selection.NOT_OK, selection.NOT_OK),
        (row("e", status=schema.DECODE_ERROR, cluster_id="c2"), selection.NOT_OK, selection.NOT_OK),
        (row("f", is_placeholder=True), selection.PLACEHOLDER, selection.PLACEHOLDER),
        (
            row("g", cluster_id="c3", is_canonical=False, is_placeholder=True),
            selection.PLACEHOLDER,
            selection.PLACEHOLDER,
        ),
        (row("h", is_placeholder=None), None, None),  # tables older than the flag
    ],
)
def test_skip_reason(r, canonical, everything):
    assert selection.skip_reason(r) == canonical
    assert selection.skip_reason(r, "canonical") == canonical
    assert selection.skip_reason(r, "all") == everything


def test_export_record_keeps_only_what_an_export_needs():
    r = row("a", cluster_id="c1")
    r.update(labels=None, blob="/out/blobs/ab/cd/x.jpg", format="JPEG", long_captions={"raw": "long"})
    record = selection.export_record(r)
    assert set(record) == set(selection.EXPORT_COLUMNS) and record["labels"] == []
    assert record["blob"] == "/out/blobs/ab/cd/x.jpg"


def test_count_reasons_lists_every_reason_in_order():
    assert selection.count_reasons([(selection.PLACEHOLDER, 2)]) == {
        "not_ok": 0,
        "placeholder": 2,
        "non_canonical": 0,
        "unreadable_blob": 0,
        "too_large": 0,
    }


def test_check_table_files(tmp_path):
    with pytest.raises(BadInput, match="no images/"):
        selection.check_table_files(str(tmp_path / "missing"))
    (tmp_path / "images").mkdir()
    pq.write_table(schema.IMAGE_SCHEMA.empty_table(), str(tmp_path / "images" / "part-0.parquet"))
    assert selection.check_table_files(str(tmp_path)) == [str(tmp_path / "images" / "part-0.parquet")]
    pq.write_table(pa.table({"key": ["a"], "status": ["ok"]}), str(tmp_path / "images" / "part-1.parquet"))
    with pytest.raises(BadInput, match=r"part-1.parquet: not an ingest output table, missing column\(s\) dataset"):
        selection.check_table_files(str(tmp_path))
    (tmp_path / "images" / "part-1.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(BadInput, match="part-1.parquet: not a readable Parquet file"):
        selection.check_table_files(str(tmp_path))

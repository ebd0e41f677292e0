"""A duplicate cluster whose canonical row's blob is unreadable is exported through the next member
whose blob can be read, in dedup's order (transforms/export/cluster_fallback.py), with exact books.
Real pipeline and files: an ingest-shaped table whose rows point at real JPEG blobs, read back with
the real `webdataset` reader."""

import glob
import hashlib
import json
import os

import pytest

from pipelines import export
from pipelines.demo.sample_site import encode, jpeg, picture
from tests.conftest import local_options
from tests.synthetic_out import row_with_blob, write_snapshot_table
from transforms import schema
from transforms.clustering.clusters import DEFAULT_DATASET_PRIORITY, canonical_sort_key
from transforms.export import cluster_fallback

pytestmark = pytest.mark.timeout(180)

CANONICAL = "openimages:9"
# why this cluster: by key the first member would be cc12m:1; dedup's order (same area, dataset
# priority openimages before cc12m) puts openimages:5 first, so the two orders tell apart
NEXT = "openimages:5"
LAST = "cc12m:1"


def _near_cluster(out):
    """A near cluster of 3 different files: the picture, two smaller re-encodes of one size."""
    scene = picture(3, (320, 240))
    return [
        row_with_blob(out, "openimages", CANONICAL, jpeg(3, (320, 240))),
        row_with_blob(out, "cc12m", LAST, encode(scene.resize((200, 150)), "JPEG", quality=70)),
        row_with_blob(out, "openimages", NEXT, encode(scene.resize((200, 150)), "JPEG", quality=80)),
    ]


def _exact_cluster(out):
    """An exact cluster: three rows of one picture, sharing one content-addressed blob."""
    body = jpeg(5, (300, 200))
    return [row_with_blob(out, "cc3m", f"cc3m:{n}", body) for n in (7, 8, 9)]


def write_out(out, cluster):
    """OUT with one cluster (cluster columns set as dedup sets them), a row alone and a failure."""
    members = cluster(out)
    members.sort(key=canonical_sort_key)
    for position, row in enumerate(members):
        row.update(cluster_id="c0ffee", is_canonical=position == 0)
    alone = row_with_blob(out, "cc3m", "cc3m:1", jpeg(7, (250, 250)))
    alone.update(cluster_id=None, is_canonical=True)
    failed = schema.new_row("cc3m", "cc3m:2", "http://a.example/dead.jpg", "dead", status=schema.HTTP_ERROR)
    write_snapshot_table(out, [*members, alone, failed])
    return members


def spoil(row, how):
    if how == "missing":
        os.remove(row["blob"])
    else:  # the bytes changed: no longer the row's sha256
        with open(row["blob"], "r+b") as handle:
            handle.seek(200)
            handle.write(b"\x00" * 64)


def run_export(tmp_path, out, *extra):
    exp = str(tmp_path / "exp")
    assert (
        export.main(local_options(input=out, output=exp, format="webdataset", **{"shard-size": 2}) + list(extra)) == 0
    )
    with open(os.path.join(exp, "summary.json")) as handle:
        summary = json.load(handle)
    import webdataset as wds

    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(exp, "*.tar"))), shardshuffle=False))
    assert summary["rows_read"] == summary["exported"] + sum(summary["skipped"].values())
    assert summary["books_balanced"] and summary["exported"] == len(samples)
    return summary, {json.loads(s["json"])["key"]: s for s in samples}


@pytest.mark.parametrize("how", ["missing", "corrupt"])
def test_a_near_cluster_whose_canonical_blob_is_unreadable_is_exported_through_the_next_member(tmp_path, capsys, how):
    """Before: the cluster lost its picture (exported 1: the row alone; unreadable_blob 1,
    non_canonical 2). Now its next member in dedup's order stands in for the canonical row."""
    out = str(tmp_path / "out")
    members = write_out(out, _near_cluster)
    assert [r["key"] for r in members] == [CANONICAL, NEXT, LAST]
    spoil(members[0], how)

    summary, samples = run_export(tmp_path, out)

    assert sorted(samples) == sorted(["cc3m:1", NEXT])
    stand_in = samples[NEXT]
    assert hashlib.sha256(stand_in["jpg"]).hexdigest() == members[1]["sha256"]
    assert json.loads(stand_in["json"])["cluster_id"] == "c0ffee"
    assert summary["rows_read"] == 5 and summary["exported"] == 2
    assert summary["skipped"] == {
        "not_ok": 1,
        "placeholder": 0,
        "non_canonical": 1,  # LAST; NEXT is exported, not non_canonical
        "unreadable_blob": 1,  # the canonical row
        "too_large": 0,
    }
    assert summary["fallback_members"] == 1
    printed = capsys.readouterr()
    assert f"cluster c0ffee: canonical {CANONICAL} unreadable, exported {NEXT} in its place" in printed.err
    assert "2 exported (webdataset, 1 through a fallback member)" in printed.out


def _panorama_cluster(out):
    """A cluster whose canonical row (the largest area) is a 7400 x 100 panorama: at --resize 224
    --upscale as webp it would be 16576 px wide, over WebP's 16383; its member fits."""
    return [
        row_with_blob(out, "cc3m", "cc3m:5", jpeg(9, (7400, 100))),
        row_with_blob(out, "cc12m", "cc12m:6", jpeg(9, (320, 240))),
    ]


def test_a_cluster_whose_canonical_picture_is_too_large_to_export_is_exported_through_its_member(tmp_path):
    """Before, only an unreadable blob had a fallback: a canonical too large for the export's size
    or format left its cluster out (`too_large`), though a member could be exported."""
    out = str(tmp_path / "out")
    members = write_out(out, _panorama_cluster)
    assert members[0]["key"] == "cc3m:5"  # the canonical row: the panorama

    options = ("--resize=224", "--resize-mode=keep_ratio", "--upscale", "--encode-format=webp")
    summary, samples = run_export(tmp_path, out, *options)

    assert sorted(samples) == ["cc12m:6", "cc3m:1"]
    assert summary["skipped"]["too_large"] == 1 and summary["skipped"]["non_canonical"] == 0
    assert summary["fallback_members"] == 1


def test_a_cluster_whose_every_blob_is_missing_is_skipped_without_a_fallback(tmp_path):
    out = str(tmp_path / "out")
    members = write_out(out, _near_cluster)
    for row in members:
        spoil(row, "missing")

    summary, samples = run_export(tmp_path, out)

    assert sorted(samples) == ["cc3m:1"]
    assert summary["skipped"]["unreadable_blob"] == 1 and summary["skipped"]["non_canonical"] == 2
    assert summary["fallback_members"] == 0


def test_an_exact_cluster_whose_shared_blob_is_missing_is_skipped_as_before(tmp_path):
    out = str(tmp_path / "out")
    members = write_out(out, _exact_cluster)
    assert len({r["blob"] for r in members}) == 1
    spoil(members[0], "missing")

    summary, samples = run_export(tmp_path, out)

    assert sorted(samples) == ["cc3m:1"]
    assert summary["skipped"]["unreadable_blob"] == 1 and summary["skipped"]["non_canonical"] == 2
    assert summary["fallback_members"] == 0


def test_include_all_exports_every_readable_member_and_no_fallback(tmp_path):
    out = str(tmp_path / "out")
    members = write_out(out, _near_cluster)
    spoil(members[0], "missing")

    summary, samples = run_export(tmp_path, out, "--include=all")

    assert sorted(samples) == sorted(["cc3m:1", NEXT, LAST])
    assert summary["skipped"]["unreadable_blob"] == 1 and summary["skipped"]["non_canonical"] == 0
    assert summary["fallback_members"] == 0


def test_the_fallback_order_is_the_priority_dedup_recorded(tmp_path):
    """An ingest records the priority in duplicates.config, a dedup in config; none: the default."""
    assert cluster_fallback.recorded_dataset_priority(str(tmp_path)) == DEFAULT_DATASET_PRIORITY
    (tmp_path / "summary.json").write_text(json.dumps({"duplicates": {"config": {"dataset_priority": ["cc12m"]}}}))
    assert cluster_fallback.recorded_dataset_priority(str(tmp_path)) == ("cc12m",)
    (tmp_path / "summary.json").write_text(json.dumps({"job": "dedup", "config": {"dataset_priority": ["zero"]}}))
    assert cluster_fallback.recorded_dataset_priority(str(tmp_path)) == ("zero",)

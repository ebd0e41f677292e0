"""Side files given as globs, locally and on gs:// (the GCS emulator): each file read once, and a
Cloud Console folder placeholder is no side file, as it is no manifest (transforms/io/file_matches.py)."""

import io
import json

import pyarrow.parquet as pq

from pipelines import ingest
from tests.conftest import local_options
from transforms.io import table as table_module

# why: nothing serves these URLs (connection refused, no retry): side files are joined before the fetch
URLS = [f"http://127.0.0.2/s{n}.jpg" for n in range(2)]
IMAGE_IDS = [f"{n + 1:016x}" for n in range(2)]
CC3M_LABELS = "".join(f"photo {n}\t{url}\tcat,dog\t/m/01,/m/02\t0.9,0.8\n" for n, url in enumerate(URLS))
OPENIMAGES = "ImageID,OriginalURL\n" + "".join(f"{i},{url}\n" for i, url in zip(IMAGE_IDS, URLS, strict=True))
OPENIMAGES_LABELS = "ImageID,Source,LabelName,Confidence\n" + "".join(
    f"{i},verification,/m/0{n},1\n" for n, i in enumerate(IMAGE_IDS)
)


def _ingest(out, manifest, **options):
    return ingest.main(
        local_options(
            manifest=manifest,
            output=out,
            **{"allow-network": "127.0.0.0/8", "no-progress": True, "no-report": True, "retries": 0, **options},
        )
    )


def _gs_rows_and_summary(bucket, out):
    names = [b.name for b in bucket.list_blobs(prefix=f"{out}/images/") if b.name.endswith(".parquet")]
    rows = [r for n in names for r in pq.read_table(io.BytesIO(bucket.blob(n).download_as_bytes())).to_pylist()]
    return rows, json.loads(bucket.blob(f"{out}/summary.json").download_as_bytes())


def _labels(rows):
    return {r["key"]: [label["id"] for label in r["labels"] or []] for r in rows}


def test_a_folder_placeholder_in_a_gs_side_file_glob_is_no_side_file(gcs_emulator):
    """`--cc3m-labels 'gs://b/lab/*'` over a folder made in the Cloud Console (`lab/`, an empty
    object): the placeholder was read as a labels file and the ingest failed (exit 1, on the
    emulator `unexpected MethodNotImplemented`). Now: exit 0, both rows, each labelled once."""
    bucket = gcs_emulator.bucket("side-placeholder")
    bucket.blob("in/m.tsv").upload_from_string("".join(f"photo {n}\t{url}\n" for n, url in enumerate(URLS)))
    bucket.blob("lab/").upload_from_string(b"")
    bucket.blob("lab/labels.tsv").upload_from_string(CC3M_LABELS)
    status = _ingest(
        "gs://side-placeholder/out",
        "cc3m=gs://side-placeholder/in/m.tsv",
        **{"cc3m-labels": "gs://side-placeholder/lab/*"},
    )
    assert status == 0
    rows, summary = _gs_rows_and_summary(bucket, "out")
    assert _labels(rows) == {"cc3m:1": ["/m/01", "/m/02"], "cc3m:2": ["/m/01", "/m/02"]}
    assert summary["books"]["rows_in"] == summary["books"]["rows_out"] == 2


def test_overlapping_gs_label_globs_read_each_file_once_past_a_placeholder(gcs_emulator):
    """Two `--openimages-labels` globs matching one gs:// labels file, in a folder with its Console
    placeholder: exit 1 before (the placeholder); each label once and the file's 2 lines counted
    once now."""
    bucket = gcs_emulator.bucket("side-overlap")
    bucket.blob("oi/images.csv").upload_from_string(OPENIMAGES)
    bucket.blob("ol/").upload_from_string(b"")
    bucket.blob("ol/labels.csv").upload_from_string(OPENIMAGES_LABELS)
    status = _ingest(
        "gs://side-overlap/out",
        "openimages=gs://side-overlap/oi/images.csv",
        **{"openimages-labels": ["gs://side-overlap/ol/*", "gs://side-overlap/ol/labels.csv"]},
    )
    assert status == 0
    rows, summary = _gs_rows_and_summary(bucket, "out")
    assert _labels(rows) == {f"openimages:{IMAGE_IDS[0]}": ["/m/00"], f"openimages:{IMAGE_IDS[1]}": ["/m/01"]}
    assert summary["metrics"]["counters"]["labels"]["openimages_labels_parsed"] == 2


def test_a_local_labels_file_matched_by_two_globs_and_two_names_is_read_once(tmp_path):
    """`--openimages-labels 'ol*' --openimages-labels '*s.csv' --openimages-labels sub/../labels.csv`:
    one file, three times. Before: exit 0, labels right (the join collapses repeats) but the file's
    2 lines counted 6 times in summary.json (openimages_labels_parsed 6). Now: 2."""
    (tmp_path / "images.csv").write_text(OPENIMAGES)
    (tmp_path / "ol").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "ol" / "labels.csv").write_text(OPENIMAGES_LABELS)
    folder = tmp_path / "ol"
    out = str(tmp_path / "out")
    status = _ingest(
        out,
        f"openimages={tmp_path}/images.csv",
        **{"openimages-labels": [f"{folder}/l*", f"{folder}/*s.csv", f"{folder}/../ol/labels.csv"]},
    )
    assert status == 0
    rows = pq.read_table(table_module.list_table_files(out)).to_pylist()
    assert _labels(rows) == {f"openimages:{IMAGE_IDS[0]}": ["/m/00"], f"openimages:{IMAGE_IDS[1]}": ["/m/01"]}
    with open(f"{out}/summary.json", encoding="utf-8") as handle:
        summary = json.load(handle)
    assert summary["metrics"]["counters"]["labels"]["openimages_labels_parsed"] == 2
    assert summary["books"]["rows_in"] == summary["books"]["rows_out"] == 2

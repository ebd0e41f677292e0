"""The side files and JSON manifests read from gs:// (gcp-storage-emulator on loopback)."""

import gzip
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.paths import FIXTURES
from transforms import schema
from transforms.io import labels, manifests, readers

BUCKET = "formats-test"


@pytest.fixture
def gcs(gcs_emulator):
    """Uploads a fixture file (optionally gzipped) and returns its gs:// path."""
    bucket = gcs_emulator.bucket(BUCKET)

    def upload(name, blob_name, compress=False):
        with open(os.path.join(FIXTURES, name), "rb") as f:
            data = f.read()
        bucket.blob(blob_name).upload_from_string(gzip.compress(data) if compress else data)
        return f"gs://{BUCKET}/{blob_name}"

    return upload


def test_joins_read_side_files_from_gcs(gcs):
    gcs("openimages_labels_old.csv", "oi/labels/old.csv")
    gcs("human_ann_2016_08_labels.csv", "oi/labels/human_ann_2016_08.csv.gz", compress=True)
    classes = gcs("openimages_v1_dict.csv", "oi/dict.csv.gz", compress=True)
    cc3m = gcs("cc3m_labels.tsv", "cc3m/labels.tsv")
    dreamlip = gcs("dreamlip_long_captions.csv", "dreamlip/cc3m.csv.gz", compress=True)
    rows = [
        schema.new_row("openimages", "openimages:001ad258e358b14a", url="http://127.0.0.1/a.jpg"),
        schema.new_row("openimages", "openimages:000060e3121c7305", url="http://127.0.0.1/b.jpg"),
        schema.new_row("cc3m", "cc3m:1", url="http://127.0.0.1/cc3m/premiere.jpg"),
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(rows)
            | labels.JoinOpenImagesLabels(f"gs://{BUCKET}/oi/labels/*", classes)
            | labels.JoinCC3MLabels(cc3m)
            | labels.JoinLongCaptions(dreamlip)
            | beam.Map(
                lambda r: (
                    r["key"],
                    [(item["name"], item["source"]) for item in r["labels"]],
                    [item["name"] for item in r["negative_labels"]],
                    (r["long_captions"] or {}).get("raw"),
                )
            )
        )
        assert_that(
            out,
            equal_to(
                [
                    ("openimages:001ad258e358b14a", [("flower", "human"), ("property", "machine")], ["person"], None),
                    # wide form from gs://: its source comes from the object name (human_ann...)
                    ("openimages:000060e3121c7305", [("room", "human")], ["apartment"], None),
                    (
                        "cc3m:1",
                        [("person", "cc3m"), ("premiere", "cc3m"), ("event", "cc3m")],
                        [],
                        "actor attends the premiere of the film",
                    ),
                ]
            ),
        )


def test_json_manifests_from_gcs(gcs):
    zero = gcs("zero.jsonl", "zero/part-0.jsonl.gz", compress=True)
    captions = gcs("imagenet_captions.json", "imagenet/imagenet_captions.json")
    synsets = gcs("LOC_synset_mapping.txt", "imagenet/LOC_synset_mapping.txt")
    with TestPipeline(runner="FnApiRunner") as p:
        z = p | "Zero" >> manifests.ReadZero(zero)
        assert_that(
            z | beam.Map(lambda r: (r["key"], r["caption"], r["source_file"])),
            equal_to(
                [
                    ("zero:a1b2c3d4e5f60001", "西湖春天的美景，游客如织", zero),
                    ("zero:a1b2c3d4e5f60002", "熊猫宝宝吃竹子", zero),
                    ("zero:12345", None, zero),
                    ("zero:a1b2c3d4e5f60004", "原始\t制表符与回车\r保留", zero),
                ]
            ),
            label="zero",
        )
        i = p | "ImageNet" >> manifests.ReadImageNetCaptions(
            captions, f"gs://{BUCKET}/imagenet/train", synsets_path=synsets
        )
        assert_that(
            i | beam.Map(lambda r: (r["_read_path"], r["labels"][0]["name"])),
            equal_to(
                [
                    (f"gs://{BUCKET}/imagenet/train/n03146219/n03146219_27278.JPEG", "cuirass"),
                    (f"gs://{BUCKET}/imagenet/train/n01440764/n01440764_10026.JPEG", "tench, Tinca tinca"),
                    (f"gs://{BUCKET}/imagenet/train/n01443537/n01443537_1000.JPEG", "goldfish, Carassius auratus"),
                    (f"gs://{BUCKET}/imagenet/train/n09999999/n09999999_1.JPEG", None),
                ]
            ),
            label="imagenet",
        )


def test_an_empty_gz_on_gcs_is_refused_and_a_gzip_of_no_data_is_empty(gcs_emulator):
    bucket = gcs_emulator.bucket(BUCKET)
    bucket.blob("empty/zero-bytes.tsv.gz").upload_from_string(b"")
    bucket.blob("empty/no-data.tsv.gz").upload_from_string(gzip.compress(b""))
    with pytest.raises(readers.CompressedInputError, match="empty"):
        readers.open_path(f"gs://{BUCKET}/empty/zero-bytes.tsv.gz").read()
    assert readers.open_path(f"gs://{BUCKET}/empty/no-data.tsv.gz").read() == b""

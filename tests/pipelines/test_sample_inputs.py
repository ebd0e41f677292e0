"""The demo's sample side files parse in their formats and reference the documented ids/URLs."""

import os

from tests.paths import REPO
from transforms.io import json_manifests, labels, readers

SAMPLE = os.path.join(REPO, "pipelines", "demo", "sample")
PORT = "http://127.0.0.1:{port}/"


def sample(name):
    return os.path.join(SAMPLE, name)


def test_openimages_sample_labels_every_form():
    records = []
    for name in ("openimages-labels-machine.csv", "openimages-labels-human.csv", "machine_ann_2016_08-labels.csv"):
        with open(sample(name), encoding="utf-8") as f:
            lines = f.read().splitlines()
        got = [r for line in lines for r in labels.parse_openimages_label_line(line, labels.source_from_path(name))]
        assert got, name
        records += got
    assert {r[0] for r in records} == {"0006400c1c224e19", "000adef7197e3118", "001ad258e358b14a", "00416784a9cb1756"}
    assert sum(labels.is_negative(r[3], r[2]) for r in records) == 2
    with readers.open_path(sample("openimages-class-descriptions.csv")) as f:
        names = dict(labels.parse_class_descriptions(f))
    assert {r[1] for r in records} <= set(names)


def test_cc3m_and_dreamlip_samples():
    with open(sample("cc3m-labels.tsv"), encoding="utf-8") as f:
        parsed = [labels.parse_cc3m_labels_line(line) for line in f]
    assert [url for url, _ in parsed] == [PORT + f"cc3m/{i}.jpg" for i in range(3)]
    assert [len(lbls) for _, lbls in parsed] == [3, 0, 2]
    with readers.open_path(sample("dreamlip-long-captions.csv")) as f:
        captions = list(labels.parse_long_captions(f))
    assert [url for url, _ in captions] == [PORT + "cc3m/0.jpg", PORT + "cc12m/0.jpg"]
    assert all("\n" in c["long_instructblip"] for _, c in captions)


def test_json_samples():
    synsets = labels.load_synsets(sample("LOC_synset_mapping.txt"))
    with readers.open_path(sample("imagenet_captions.json")) as f:
        rows = list(json_manifests.parse_imagenet_captions(f, "s", "/root", synsets))
    assert [r["_read_path"] for r in rows] == [
        "/root/n01440764/n01440764_10026.JPEG",
        "/root/n01443537/n01443537_1000.JPEG",
        "/root/n02085620/n02085620_10074.JPEG",
    ]
    assert all(r["status"] is None and r["labels"][0]["name"] for r in rows)
    with readers.open_path(sample("zero.jsonl")) as f:
        rows = list(json_manifests.parse_zero(f, "s"))
    assert [r["url"] for r in rows] == [PORT + f"zero/{i}.jpg" for i in range(3)]
    assert all(r["status"] is None and r["caption"] for r in rows)


SIDE_FILES = (
    "openimages-labels-machine.csv",
    "openimages-labels-human.csv",
    "machine_ann_2016_08-labels.csv",
    "openimages-class-descriptions.csv",
    "cc3m-labels.tsv",
    "dreamlip-long-captions.csv",
    "LOC_synset_mapping.txt",
    "imagenet_captions.json",
    "zero.jsonl",
)


def test_samples_stay_small():
    for name in SIDE_FILES:
        assert os.path.getsize(sample(name)) < 4096, name

"""Deterministic shard assignment, the two-phase shard write, and the Hugging Face schema metadata."""

import hashlib
import io
import json
import os
import random
import tarfile

import apache_beam as beam
import pytest

from pipelines.demo.sample_site import jpeg
from transforms.export.hf_parquet_shards import HF_SCHEMA, HfParquetShardDoFn
from transforms.export.resize import ResizeConfig
from transforms.export.shard_writer import AssignShards, original_extension, publish_shard, sample_key
from transforms.export.webdataset_shards import WebDatasetShardDoFn


def assign(keys, shard_size, bucket_rows, tmp_path):
    """{shard: [(index, key), ...]} as AssignShards makes them (written out by the pipeline)."""
    out = tmp_path / f"assigned-{random.random()}"
    out.mkdir()

    def dump(shard, items):
        (out / f"{shard}.json").write_text(json.dumps(sorted((i, r["key"]) for i, r in items)))

    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        _ = (
            pipeline
            | beam.Create([{"key": k} for k in keys])
            | AssignShards(shard_size, bucket_rows=bucket_rows)
            | beam.MapTuple(dump)
        )
    return {int(p.stem): [tuple(x) for x in json.loads(p.read_text())] for p in out.iterdir()}


def test_shards_are_exact_consecutive_and_deterministic(tmp_path):
    keys = [f"cc3m:{n}" for n in range(23)]
    first = assign(keys, shard_size=5, bucket_rows=4, tmp_path=tmp_path)  # 6 buckets: shards straddle buckets
    assert sorted(first) == [0, 1, 2, 3, 4]
    assert [len(first[s]) for s in range(5)] == [5, 5, 5, 5, 3]
    indexes = [i for s in range(5) for i, _ in first[s]]
    assert indexes == list(range(23))
    assert all(i // 5 == s for s in first for i, _ in first[s])
    assert sorted(k for s in first for _, k in first[s]) == sorted(keys)
    shuffled = keys[:]
    random.Random(3).shuffle(shuffled)
    assert assign(shuffled, shard_size=5, bucket_rows=4, tmp_path=tmp_path) == first  # input order does not matter
    # datasets are mixed: the first shard is not simply the first keys
    assert [k for _, k in first[0]] != sorted(keys)[:5]


def test_sample_keys_have_no_dots():
    assert sample_key(12) == "000000012" and "." not in sample_key(10**10)


@pytest.fixture
def blobs(tmp_path):
    """Three records: two readable blobs and one whose bytes are not its sha256."""
    records = []
    for n, size in enumerate([(320, 240), (200, 300), (250, 250)]):
        data = jpeg(n, size)
        path = tmp_path / "blobs" / f"{n}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data if n != 2 else data[:-10] + b"0123456789")
        records.append(
            {
                "key": f"cc3m:{n}",
                "dataset": "cc3m",
                "url": f"http://a.example/{n}.jpg",
                "caption": f"caption {n}",
                "sha256": hashlib.sha256(data).hexdigest(),
                "phash": "0" * 16,
                "width": size[0],
                "height": size[1],
                "labels": [],
                "cluster_id": None,
                "blob": str(path),
                "format": "JPEG",
            }
        )
    return records


def write_shard(dofn, items, publish=True):
    dofn.setup()
    try:
        records = list(dofn.process((0, items)))
    finally:
        dofn.teardown()
    return [publish_shard(r) for r in records] if publish else records


def test_webdataset_shard_is_written_aside_then_renamed_and_a_retry_replaces_it(tmp_path, blobs):
    exp, tmp = tmp_path / "exp", tmp_path / "exp" / "_tmp-run"
    items = [(7, blobs[0]), (5, blobs[1]), (6, blobs[2])]
    dofn = WebDatasetShardDoFn(str(exp), str(tmp), ResizeConfig(size=100, mode="center_crop"), threads=2)
    (record,) = write_shard(dofn, items)
    assert record["name"] == "00000.tar" and record["samples"] == 2 and record["unreadable_blob"] == 1
    first = (exp / "00000.tar").read_bytes()
    assert record["bytes"] == len(first)
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile("000000007.json"))
    assert names == [
        "000000005.jpg",
        "000000005.txt",
        "000000005.json",
        "000000007.jpg",
        "000000007.txt",
        "000000007.json",
    ]
    assert meta["key"] == "cc3m:0" and (meta["width"], meta["height"]) == (100, 100)
    assert (meta["original_width"], meta["original_height"]) == (320, 240)
    # a retried bundle: the same shard again, aside until published, then renamed onto the same name
    (again,) = write_shard(dofn, list(reversed(items)), publish=False)
    assert os.listdir(tmp) == [os.path.basename(again["temporary"])]
    assert publish_shard(again) == record and publish_shard(again) == record  # a retried rename too
    assert (exp / "00000.tar").read_bytes() == first
    assert sorted(os.listdir(exp)) == ["00000.tar", "_tmp-run"] and os.listdir(tmp) == []


def test_hf_schema_carries_the_image_feature():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features.from_arrow_schema(HF_SCHEMA)
    assert isinstance(features["image"], datasets.Image)
    assert features["key"] == datasets.Value("string") and features["width"] == datasets.Value("int32")
    assert features["labels"].feature["confidence"] == datasets.Value("float32")


def test_hf_shard_rows(tmp_path, blobs):
    import pyarrow.parquet as pq

    dofn = HfParquetShardDoFn(str(tmp_path / "exp"), str(tmp_path / "exp" / "_tmp"), ResizeConfig(), threads=2)
    (record,) = write_shard(dofn, [(0, blobs[0]), (1, blobs[1])])
    table = pq.read_table(str(tmp_path / "exp" / "00000.parquet"))
    assert record["samples"] == 2 == table.num_rows and table.schema.metadata[b"huggingface"]
    images = table.column("image").to_pylist()
    assert [i["path"] for i in images] == ["000000000.jpg", "000000001.jpg"]
    assert [hashlib.sha256(i["bytes"]).hexdigest() for i in images] == [b["sha256"] for b in blobs[:2]]


def test_a_moved_output_is_read_from_its_own_blobs(tmp_path, blobs):
    """OUT copied elsewhere: the rows' blob paths are stale, OUT/blobs/ab/cd/<sha256>.jpg is read."""
    from transforms.io.sinks import blob_uri

    moved = blobs[0]
    target = blob_uri(str(tmp_path / "copied-out"), moved["sha256"], "JPEG")
    os.makedirs(os.path.dirname(target))
    os.rename(moved["blob"], target)
    dofn = WebDatasetShardDoFn(
        str(tmp_path / "exp"),
        str(tmp_path / "exp" / "_tmp"),
        ResizeConfig(),
        threads=1,
        input_dir=str(tmp_path / "copied-out"),
    )
    (record,) = write_shard(dofn, [(0, moved)])
    assert record["samples"] == 1 and record["unreadable_blob"] == 0
    dofn = WebDatasetShardDoFn(str(tmp_path / "exp2"), str(tmp_path / "exp2" / "_tmp"), ResizeConfig(), threads=1)
    (record,) = write_shard(dofn, [(0, moved)])
    assert record["samples"] == 0 and record["unreadable_blob"] == 1


@pytest.mark.parametrize(
    "fmt, blob, extension",
    [
        ("JPEG", "x.jpg", "jpg"),
        ("MPO", "x.jpg", "jpg"),
        ("TIFF", "x.tif", "tiff"),
        ("PPM", "x.bin", "ppm"),  # before: bin, which webdataset's decode("pil") leaves as bytes
        ("TGA", "x.bin", "tga"),
        ("JPEG2000", "x.bin", "jp2"),
        ("NOT-A-PILLOW-FORMAT", "x.heic", "heic"),  # a format Pillow does not know: the blob's name
        (None, "x.png", "png"),
    ],
)
def test_original_extension_names_the_format(fmt, blob, extension):
    assert original_extension({"format": fmt, "blob": f"/out/blobs/ab/cd/{blob}"}) == extension

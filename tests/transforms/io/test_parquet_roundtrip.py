"""Joined rows of every format through WriteToParquet(IMAGE_SCHEMA) and back with pyarrow."""

import glob
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline

from tests.paths import FIXTURES
from transforms import schema
from transforms.io import labels, manifests


def fixture(name):
    return os.path.join(FIXTURES, name)


def test_joined_rows_round_trip_through_parquet(tmp_path):
    manifest_rows = [
        schema.new_row(
            "openimages",
            "openimages:0006400c1c224e19",
            url="http://127.0.0.1/oi/0006400c1c224e19.jpg",
            caption='Fireworks and Morey\'s Pier, "North" Wildwood',
            rotation=90.0,
        ),
        schema.new_row(
            "cc3m",
            "cc3m:1",
            url="http://127.0.0.1/cc3m/premiere.jpg",
            caption="# actor attends the premiere of the film",
        ),
        schema.new_row("cc12m", "cc12m:1", url="http://127.0.0.1/cc12m/only.jpg", caption="<PERSON> at a party"),
    ]
    out = tmp_path / "images"
    with TestPipeline(runner="FnApiRunner") as p:
        rows = (
            (
                p | "Manifest" >> beam.Create(manifest_rows),
                p | "Zero" >> manifests.ReadZero(fixture("zero.jsonl")),
                p
                | "ImageNet"
                >> manifests.ReadImageNetCaptions(
                    fixture("imagenet_captions.json"),
                    str(tmp_path / "train"),
                    synsets_path=fixture("LOC_synset_mapping.txt"),
                ),
            )
            | beam.Flatten()
            | labels.JoinOpenImagesLabels(
                [fixture("openimages_labels_machine.csv"), fixture("openimages_labels_human.csv")],
                fixture("openimages_class-descriptions.csv"),
            )
            | labels.JoinCC3MLabels(fixture("cc3m_labels.tsv"))
            | labels.JoinLongCaptions(fixture("dreamlip_long_captions.csv"))
        )
        _ = (
            rows
            | beam.Map(schema.to_parquet_record)
            | beam.io.WriteToParquet(str(out), schema.IMAGE_SCHEMA, file_name_suffix=".parquet")
        )

    files = glob.glob(str(out) + "*.parquet")
    assert files
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert table.schema.field("labels").type == schema.IMAGE_SCHEMA.field("labels").type
    assert table.schema.field("long_captions").type == schema.LONG_CAPTIONS_TYPE
    got = {r["key"]: r for r in table.to_pylist()}
    # every row exactly once: 3 manifest rows, 4 Zero lines, 4 ImageNet records
    assert table.num_rows == len(got) == 3 + 4 + 4

    oi = got["openimages:0006400c1c224e19"]
    assert oi["caption"] == 'Fireworks and Morey\'s Pier, "North" Wildwood'
    assert oi["rotation"] == 90.0
    assert [(item["id"], item["name"], item["source"]) for item in oi["labels"]] == [
        ("/m/07j7r", "Tree", "verification"),
        ("/m/07j7r", "Tree", "machine"),
        ("/m/0cgh4", None, "machine"),
    ]
    assert [(item["id"], item["name"], item["confidence"]) for item in oi["negative_labels"]] == [
        ("/m/0bt9lr", "Dog", 0.0)
    ]
    assert abs(oi["labels"][1]["confidence"] - 0.9) < 1e-6  # float32 column

    cc3m = got["cc3m:1"]
    assert [item["name"] for item in cc3m["labels"]] == ["person", "premiere", "event"]
    assert cc3m["long_captions"]["long_sharegpt4v"] == (
        "The image shows a man, dressed formally,\nat a film premiere.\n\nPhotographers line the carpet."
    )
    assert cc3m["long_captions"]["long_llava"].endswith("“quotes”, 中文字幕 and 🎬.")
    assert cc3m["long_captions"]["long_instructblip"].endswith('reads "PREMIERE".')
    assert got["cc12m:1"]["long_captions"]["raw"] == "raw, with comma"
    assert got["cc12m:1"]["long_captions"]["short_sharegpt4v"] is None

    zero = got["zero:a1b2c3d4e5f60001"]
    assert zero["caption"] == "西湖春天的美景，游客如织"
    assert zero["description"] == '杭州西湖，“人间天堂”。\n春天桃花盛开，"游人"如织。'
    assert zero["source_line"] == 1
    assert got["zero:a1b2c3d4e5f60004"]["title"] == "原始\t制表符与回车\r保留"

    tench = got["imagenet_captions:n01440764_10026.JPEG"]
    assert tench["title"] == "Tench\r\n(Tinca tinca)"
    assert tench["description"] == ""
    assert tench["tags"] == []
    assert tench["labels"] == [
        {"id": "n01440764", "name": "tench, Tinca tinca", "confidence": 1.0, "source": "imagenet"}
    ]
    cuirass = got["imagenet_captions:n03146219_27278.JPEG"]
    assert cuirass["tags"] == ["cuirasse", "musée-de-la-préhistoire", "saint-germain-en-laye"]
    assert "_read_path" not in cuirass  # internal keys never reach Parquet


def test_table_shards_roll_over_and_finalise_every_row_once(tmp_path):
    """One bundle of 23 rows, shards of 5 rows: 5 part files, each row once, cluster columns joined."""
    from transforms.io.table import FinalizeTable, WriteTableShards

    out = str(tmp_path / "out")
    rows = [schema.new_row("cc3m", f"cc3m:{i}", f"http://h/{i}.jpg", status="ok") for i in range(23)]
    with TestPipeline(runner="FnApiRunner") as p:
        shards = p | beam.Create(rows, reshuffle=False) | WriteTableShards(out, "run", shard_rows=5)
        clusters = p | "Clusters" >> beam.Create([("cc3m:3", ("c1", True, False)), ("cc3m:17", ("c1", False, False))])
        _ = shards | FinalizeTable(out, "run", clusters)
    files = sorted(glob.glob(os.path.join(out, "images", "*.parquet")))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    assert len(files) == 5
    assert sorted(table.column("key").to_pylist()) == sorted(r["key"] for r in rows)
    found = {r["key"]: (r["cluster_id"], r["is_canonical"]) for r in table.to_pylist()}
    assert found["cc3m:3"] == ("c1", True) and found["cc3m:17"] == ("c1", False)
    assert found["cc3m:0"] == (None, True)
    assert not glob.glob(os.path.join(out, "_tmp-*"))  # the temporary shards are gone


def test_finalising_a_shard_streams_it_in_batches(tmp_path):
    """A shard read back in batches smaller than it: every row once, in order, its cluster columns
    from its own batch (a row in the third batch gets its cluster, not a neighbour's)."""
    from transforms.io.table import finalize_shard

    rows = [schema.new_row("cc3m", f"cc3m:{i}", f"http://h/{i}.jpg", status="ok") for i in range(11)]
    shard = str(tmp_path / "shard.parquet")
    pq.write_table(
        pa.Table.from_pylist([schema.to_parquet_record(r) for r in rows], schema=schema.IMAGE_SCHEMA),
        shard,
        row_group_size=4,
    )
    images = tmp_path / "images"
    images.mkdir()
    written = finalize_shard(
        shard, {"cc3m:1": ("c1", True, False), "cc3m:9": ("c1", False, True)}, str(images), "run", batch_rows=3
    )
    target = written["path"]
    assert written["rows"] == 11 and written["per_file"] == {"": 11}  # the books' count (no source_file)
    table = pq.read_table(target)
    assert table.schema.equals(schema.IMAGE_SCHEMA, check_metadata=False)
    got = table.to_pylist()
    assert [r["key"] for r in got] == [r["key"] for r in rows]
    assert [(r["cluster_id"], r["is_canonical"], r["is_placeholder"]) for r in got] == [
        ("c1", True, False)
        if r["key"] == "cc3m:1"
        else ("c1", False, True)
        if r["key"] == "cc3m:9"
        else (None, True, False)
        for r in rows
    ]
    assert os.listdir(images) == [os.path.basename(target)]  # no temporary file left

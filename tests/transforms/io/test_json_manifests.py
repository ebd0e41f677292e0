"""ImageNet-Captions and CCMB Zero manifests: streaming parsers and their Beam wrappers."""

import gzip
import io
import itertools
import json
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.paths import FIXTURES
from transforms import schema
from transforms.errors import BadInput
from transforms.io import json_manifests, labels, manifests, readers


def fixture(name):
    return os.path.join(FIXTURES, name)


def imagenet_rows(name, root="/data/ilsvrc/train", synsets=None):
    with readers.open_path(fixture(name)) as f:
        return list(json_manifests.parse_imagenet_captions(f, name, root, synsets))


def zero_rows(path, name=None):
    with readers.open_path(path) as f:
        return list(json_manifests.parse_zero(f, name or os.path.basename(path)))


SYNSETS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus", "n03146219": "cuirass"}


# ---------------------------------------------------------------------------------------------
# ImageNet-Captions


def test_imagenet_captions_rows():
    rows = imagenet_rows("imagenet_captions.json", synsets=SYNSETS)
    by_key = {r["key"]: r for r in rows}
    assert list(by_key) == [
        "imagenet_captions:n03146219_27278.JPEG",
        "imagenet_captions:n01440764_10026.JPEG",
        "imagenet_captions:n01443537_1000.JPEG",
        "imagenet_captions:n09999999_1.JPEG",
    ]
    assert all(r["status"] is None and r["error"] is None for r in rows)
    assert all(set(schema.IMAGE_COLUMNS) <= set(r) for r in rows)

    cuirass = by_key["imagenet_captions:n03146219_27278.JPEG"]
    path = "/data/ilsvrc/train/n03146219/n03146219_27278.JPEG"
    assert cuirass["url"] == cuirass["_read_path"] == path
    assert cuirass["dataset"] == "imagenet_captions"
    assert cuirass["tags"] == ["cuirasse", "musée-de-la-préhistoire", "saint-germain-en-laye"]
    assert cuirass["caption"] == (
        "cuirasses cuirasse musée-de-la-préhistoire saint-germain-en-laye"
        " musée des antiquités nationales de Saint Germain en Laye"
    )
    assert cuirass["labels"] == [{"id": "n03146219", "name": "cuirass", "confidence": 1.0, "source": "imagenet"}]
    assert cuirass["source_file"] == "imagenet_captions.json"

    tench = by_key["imagenet_captions:n01440764_10026.JPEG"]
    assert tench["title"] == "Tench\r\n(Tinca tinca)"  # kept exactly
    assert tench["description"] == ""  # empty string stays an empty string
    assert tench["tags"] == []
    assert tench["caption"] == "Tench (Tinca tinca)"  # whitespace runs squashed in the caption
    assert tench["labels"][0]["name"] == "tench, Tinca tinca"

    goldfish = by_key["imagenet_captions:n01443537_1000.JPEG"]
    assert goldfish["title"] == ""
    assert goldfish["description"] == 'Line one\nline two, "quoted"\r\n\ttabbed'
    assert goldfish["caption"] == 'goldfish aquarium, tank Line one line two, "quoted" tabbed'

    unknown = by_key["imagenet_captions:n09999999_1.JPEG"]
    assert unknown["labels"] == [{"id": "n09999999", "name": None, "confidence": 1.0, "source": "imagenet"}]


@pytest.mark.parametrize(
    "title, tags, description, caption",
    [
        ("A", ["b", "c"], "D", "A b c D"),
        ("", [], "", None),
        (" \r\n", [""], "\t", None),
        ("t", [], "line\r\nnext", "t line next"),
        (None, None, "only", "only"),
    ],
)
def test_imagenet_caption_rule(title, tags, description, caption):
    assert json_manifests.imagenet_caption(title, tags, description) == caption


def test_imagenet_root_on_gcs_joins_paths():
    rows = imagenet_rows("imagenet_captions.json", root="gs://bucket/ILSVRC/train/")
    assert rows[0]["_read_path"] == "gs://bucket/ILSVRC/train/n03146219/n03146219_27278.JPEG"


def test_imagenet_without_root_marks_rows_invalid():
    rows = imagenet_rows("imagenet_captions.json", root=None)
    assert len(rows) == 4
    assert {r["status"] for r in rows} == {schema.INVALID_URL}
    assert {r["error"] for r in rows} == {"no --imagenet-root given"}
    assert rows[0]["title"] == "cuirasses"  # still carries its metadata


def test_imagenet_malformed_records_become_invalid_rows():
    rows = imagenet_rows("imagenet_captions_bad.json", synsets=SYNSETS)
    got = [(r["key"], r["status"], r["error"]) for r in rows]
    assert got[0] == ("imagenet_captions:n01440764_1.JPEG", None, None)
    assert got[1] == ("imagenet_captions:imagenet_captions_bad.json#1", "invalid_url", "missing filename")
    assert got[2][1] == "invalid_url" and "not a plain file name" in got[2][2]
    assert rows[2]["_read_path"] is None  # ../../etc/passwd never becomes a path to read
    assert got[3] == (
        "imagenet_captions:imagenet_captions_bad.json#3",
        "invalid_url",
        "record is a JSON int, not an object",
    )
    assert got[4] == ("imagenet_captions:n01443537_2.JPEG", None, None)
    assert rows[4]["tags"] == ["single tag"] and rows[4]["description"] is None
    # the truncated tail: one row saying where reading stopped
    assert got[5][0] == "imagenet_captions:imagenet_captions_bad.json#5-"
    assert got[5][1] == "invalid_url" and got[5][2].startswith("not JSON after 5 records")
    assert len(rows) == 6
    assert len({r["key"] for r in rows}) == 6


def test_imagenet_array_is_streamed_not_loaded():
    """An endless array: json.load would never return; a streaming parser yields at once."""
    record = json.dumps(
        {"filename": "n01440764_{}.JPEG", "wnid": "n01440764", "title": "t", "tags": [], "description": ""}
    ).encode()

    class EndlessArray(io.RawIOBase):
        def __init__(self):
            self.served = 0
            self.n = 0

        def readable(self):
            return True

        def readinto(self, buf):
            if self.served > 50_000_000:
                raise AssertionError("parser read far ahead: not streaming")
            chunk = b"[" if self.n == 0 else b""
            while len(chunk) < len(buf):
                chunk += record.replace(b"{}", str(self.n).encode()) + b",\n"
                self.n += 1
            chunk = chunk[: len(buf)]
            self.served += len(chunk)
            buf[: len(chunk)] = chunk
            return len(chunk)

    source = EndlessArray()
    rows = list(itertools.islice(json_manifests.parse_imagenet_captions(source, "endless.json", "/r"), 3))
    assert [r["key"] for r in rows] == [f"imagenet_captions:n01440764_{i}.JPEG" for i in range(3)]
    assert source.served < 10_000_000


def test_imagenet_json_lines_accepted(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text(
        json.dumps(
            {"filename": "n01440764_7.JPEG", "wnid": "n01440764", "title": "x", "tags": ["y"], "description": "z"}
        )
        + "\n"
    )
    with readers.open_path(str(path)) as f:
        rows = list(json_manifests.parse_imagenet_captions(f, str(path), "/r"))
    assert [(r["key"], r["caption"], r["source_line"]) for r in rows] == [
        ("imagenet_captions:n01440764_7.JPEG", "x y z", 1)
    ]


# ---------------------------------------------------------------------------------------------
# CCMB Zero


def test_zero_json_lines_chinese_intact():
    rows = zero_rows(fixture("zero.jsonl"))
    by_key = {r["key"]: r for r in rows}
    assert list(by_key) == ["zero:a1b2c3d4e5f60001", "zero:a1b2c3d4e5f60002", "zero:12345", "zero:a1b2c3d4e5f60004"]
    assert all(r["status"] is None for r in rows)
    first = by_key["zero:a1b2c3d4e5f60001"]
    assert first["dataset"] == "zero"
    assert first["url"] == "http://127.0.0.1/zero/1.jpg"
    assert first["caption"] == first["title"] == "西湖春天的美景，游客如织"
    assert first["description"] == '杭州西湖，“人间天堂”。\n春天桃花盛开，"游人"如织。'
    assert first["keywords"] == "西湖,春天,旅游"
    assert first["page_url"] == "http://127.0.0.1/page/1.html"
    assert first["query"] == "西湖 春天"
    assert (first["source_file"], first["source_line"]) == ("zero.jsonl", 1)
    assert by_key["zero:a1b2c3d4e5f60002"]["keywords"] == "熊猫,竹子"  # a list, joined
    third = by_key["zero:12345"]  # numeric ImageKey; the blank line 3 is skipped
    assert third["source_line"] == 4
    assert third["caption"] is None and third["title"] == ""
    assert third["description"] == "没有标题的图片\r\n第二行"
    raw = by_key["zero:a1b2c3d4e5f60004"]  # raw TAB and CR inside the JSON strings
    assert raw["caption"] == "原始\t制表符与回车\r保留"
    assert raw["description"] == "第一行\r第二行"
    assert raw["source_line"] == 5


def test_zero_json_array():
    rows = zero_rows(fixture("zero_array.json"))
    assert [(r["key"], r["caption"], r["source_line"]) for r in rows] == [
        ("zero:b000000000000010", "长城，雪后初晴", None),
        ("zero:b000000000000011", '故宫的"角楼"', None),
    ]
    assert rows[0]["description"] == "八达岭长城\n雪景"


def test_zero_malformed_records_become_invalid_rows():
    rows = zero_rows(fixture("zero_bad.jsonl"))
    got = [(r["key"], r["status"], r["error"], r["source_line"]) for r in rows]
    assert got == [
        ("zero:zero_bad.jsonl#1", "invalid_url", "missing ImageKey", 1),
        ("zero:c000000000000001", "invalid_url", "missing ImageUrl", 2),
        ("zero:zero_bad.jsonl#3", "invalid_url", got[2][2], 3),
        ("zero:zero_bad.jsonl#4", "invalid_url", "record is a JSON list, not an object", 4),
        ("zero:c000000000000003", "invalid_url", "Title is dict, not a string", 5),
        ("zero:c000000000000004", None, None, 6),
    ]
    assert got[2][2].startswith("line 3 is not JSON")
    assert rows[0]["title"] == "没有ImageKey"  # what could be read is kept


def test_zero_gzip_and_bom(tmp_path):
    path = tmp_path / "zero.jsonl.gz"
    with open(fixture("zero.jsonl"), "rb") as f:
        path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + f.read()))
    rows = zero_rows(str(path))
    assert [r["key"] for r in rows][:2] == ["zero:a1b2c3d4e5f60001", "zero:a1b2c3d4e5f60002"]
    assert all(r["status"] is None for r in rows)
    array = tmp_path / "zero_array.json.gz"
    with open(fixture("zero_array.json"), "rb") as f:
        array.write_bytes(gzip.compress(b"\xef\xbb\xbf \n" + f.read()))
    assert [r["key"] for r in zero_rows(str(array))] == ["zero:b000000000000010", "zero:b000000000000011"]


def test_zero_array_truncated_keeps_what_was_read(tmp_path):
    path = tmp_path / "cut.json"
    with open(fixture("zero_array.json"), "rb") as f:
        path.write_bytes(f.read()[:-40])
    rows = zero_rows(str(path))
    assert [(r["key"], r["status"]) for r in rows] == [
        ("zero:b000000000000010", None),
        ("zero:cut.json#1-", "invalid_url"),
    ]


def test_bytes_that_are_not_utf8_in_a_json_array_are_replaced_not_the_end_of_the_file(tmp_path):
    # A cp1252 title inside a JSON array (ImageNet-Captions is one array of 463K records): before,
    # yajl stopped there, "not JSON after 1 records: invalid bytes in UTF8 string", and every
    # record after it was lost to that one invalid row, exit 0. JSON lines replace such bytes.
    records = [{"ImageKey": f"k{n}", "ImageUrl": f"http://a/{n}.jpg", "Title": f"caf\u00e9 {n}"} for n in range(3)]
    text = json.dumps(records, ensure_ascii=False).encode("cp1252")
    for name, data in (("zero.json", text), ("zero.jsonl", b"\n".join(json.dumps(r).encode() for r in records))):
        path = tmp_path / name
        path.write_bytes(data)
        rows = zero_rows(str(path))
        assert [(r["key"], r["status"]) for r in rows] == [(f"zero:k{n}", None) for n in range(3)], name
    assert [r["caption"] for r in zero_rows(str(tmp_path / "zero.json"))] == [f"caf\ufffd {n}" for n in range(3)]
    imagenet = tmp_path / "imagenet_captions.json"
    imagenet.write_bytes(b'[{"filename": "a.JPEG", "wnid": "n01440764", "title": "\xe9"}, {"filename": "b.JPEG"}]')
    with readers.open_path(str(imagenet)) as f:
        rows = list(json_manifests.parse_imagenet_captions(f, "i", "/root"))
    assert [(r["key"], r["title"]) for r in rows] == [
        ("imagenet_captions:a.JPEG", "\ufffd"),
        ("imagenet_captions:b.JPEG", None),
    ]


# ---------------------------------------------------------------------------------------------
# Beam wrappers


def test_read_zero_pipeline_both_forms():
    with TestPipeline(runner="FnApiRunner") as p:
        rows = p | manifests.ReadZero(os.path.join(FIXTURES, "zero*.json*"))
        assert_that(
            rows | beam.Map(lambda r: (r["key"], r["status"])),
            equal_to(
                [
                    ("zero:a1b2c3d4e5f60001", None),
                    ("zero:a1b2c3d4e5f60002", None),
                    ("zero:12345", None),
                    ("zero:a1b2c3d4e5f60004", None),
                    ("zero:b000000000000010", None),
                    ("zero:b000000000000011", None),
                    ("zero:" + fixture("zero_bad.jsonl") + "#1", "invalid_url"),
                    ("zero:c000000000000001", "invalid_url"),
                    ("zero:" + fixture("zero_bad.jsonl") + "#3", "invalid_url"),
                    ("zero:" + fixture("zero_bad.jsonl") + "#4", "invalid_url"),
                    ("zero:c000000000000003", "invalid_url"),
                    ("zero:c000000000000004", None),
                ]
            ),
        )


def test_read_imagenet_captions_pipeline_with_synsets():
    with TestPipeline(runner="FnApiRunner") as p:
        rows = p | manifests.ReadImageNetCaptions(
            fixture("imagenet_captions.json"), "gs://bucket/train", synsets_path=fixture("LOC_synset_mapping.txt")
        )
        assert_that(
            rows | beam.Map(lambda r: (r["key"], r["_read_path"], r["labels"][0]["name"], r["source_file"])),
            equal_to(
                [
                    (
                        "imagenet_captions:n03146219_27278.JPEG",
                        "gs://bucket/train/n03146219/n03146219_27278.JPEG",
                        "cuirass",
                        fixture("imagenet_captions.json"),
                    ),
                    (
                        "imagenet_captions:n01440764_10026.JPEG",
                        "gs://bucket/train/n01440764/n01440764_10026.JPEG",
                        "tench, Tinca tinca",
                        fixture("imagenet_captions.json"),
                    ),
                    (
                        "imagenet_captions:n01443537_1000.JPEG",
                        "gs://bucket/train/n01443537/n01443537_1000.JPEG",
                        "goldfish, Carassius auratus",
                        fixture("imagenet_captions.json"),
                    ),
                    (
                        "imagenet_captions:n09999999_1.JPEG",
                        "gs://bucket/train/n09999999/n09999999_1.JPEG",
                        None,
                        fixture("imagenet_captions.json"),
                    ),
                ]
            ),
        )


def test_synset_names_match_labels_module():
    with readers.open_path(fixture("LOC_synset_mapping.txt")) as f:
        synsets = dict(labels.parse_synsets(f))
    rows = imagenet_rows("imagenet_captions.json", synsets=synsets)
    assert [r["labels"][0]["name"] for r in rows] == [
        "cuirass",
        "tench, Tinca tinca",
        "goldfish, Carassius auratus",
        None,
    ]


def _zero_keys(data: bytes):
    return [(r["key"], r["status"]) for r in json_manifests.parse_zero(io.BytesIO(data), "z.json")]


@pytest.mark.parametrize("shift", range(-3, 4))
def test_zero_arrays_in_a_row_all_read_wherever_a_read_ends(shift):
    # the second array starts around the end of ijson's first 64 KiB read
    pad = 65536 - len('[{"ImageKey": "1", "ImageUrl": "http://a/1.jpg", "Title": ""}]') + shift
    first = json.dumps({"ImageKey": "1", "ImageUrl": "http://a/1.jpg", "Title": "x" * pad})
    data = f'[{first}]\n[{{"ImageKey": "2", "ImageUrl": "http://a/2.jpg", "Title": "] [b"}}]  '.encode()
    assert _zero_keys(data) == [("zero:1", None), ("zero:2", None)]


@pytest.mark.parametrize("after", ['{"ImageKey": "2", "ImageUrl": "http://a/2"}', "7", ', [{"ImageKey": "2"}]', "]"])
def test_zero_array_followed_by_a_value_that_is_not_an_array_is_bad_input(after):
    data = f'[{{"ImageKey": "1", "ImageUrl": "http://a/1", "Title": "a] b"}}]\n{after}\n'.encode()
    with pytest.raises(BadInput, match=r"manifest z\.json: .* not an array .* record 1;"):
        _zero_keys(data)


def test_zero_array_nesting_is_bounded_and_wide_records_still_read():
    deep_objects = b'[{"ImageKey": "1", "ImageUrl": "http://a/1"}, ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"]"
    assert _zero_keys(deep_objects) == [("zero:1", None), ("zero:z.json#1-", "invalid_url")]
    # thousands of brackets that are not deep: lists of objects, `[` inside text
    keywords = [{"k": k} for k in range(5000)]
    wide = [
        {"ImageKey": str(n), "ImageUrl": f"http://a/{n}", "Keywords": keywords, "Title": "[" * 600} for n in range(3)
    ]
    assert _zero_keys(json.dumps(wide).encode()) == [("zero:0", None), ("zero:1", None), ("zero:2", None)]

import gzip
import io
import os

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.paths import FIXTURES
from transforms import schema
from transforms.errors import BadInput
from transforms.io.manifests import (
    ManifestParsers,
    ReadManifests,
    expand_manifests,
    md5_hex,
    parse_cc3m,
    parse_cc12m,
    parse_openimages,
    sha256_hex,
)


def parse(parser, text, prefix):
    return list(parser(io.BytesIO(text.encode("utf-8")), "mem", prefix))


def test_cc3m_caption_first_split_on_last_tab_and_hash_is_not_a_comment():
    rows = parse(
        parse_cc3m,
        "# a caption\twith a tab\thttp://a/1.jpg\n... dots\thttp://a/2.jpg\r\nno tab here\n\n\thttp://a/4.jpg\n",
        "cc3m:",
    )
    assert [(r["key"], r["caption"], r["url"], r["status"]) for r in rows] == [
        ("cc3m:1", "# a caption\twith a tab", "http://a/1.jpg", None),
        ("cc3m:2", "... dots", "http://a/2.jpg", None),
        ("cc3m:3", "no tab here", None, schema.INVALID_URL),
        ("cc3m:5", None, "http://a/4.jpg", None),
    ]
    assert rows[2]["error"].startswith("malformed line")


def test_cc12m_url_first_split_on_first_tab():
    rows = parse(parse_cc12m, "http://a/1.jpg\t<PERSON> with\ttab\nhttp://a/2.jpg\n", "cc12m:")
    assert (rows[0]["url"], rows[0]["caption"]) == ("http://a/1.jpg", "<PERSON> with\ttab")
    assert rows[1]["status"] == schema.INVALID_URL and rows[1]["url"] == "http://a/2.jpg"


def test_utf8_bom_is_not_part_of_the_first_row():
    rows = list(parse_cc12m(io.BytesIO(b"\xef\xbb\xbfhttp://a/1.jpg\tcap\n"), "mem", "cc12m:"))
    assert rows[0]["url"] == "http://a/1.jpg"


def test_bad_utf8_is_replaced_not_fatal():
    rows = list(parse_cc3m(io.BytesIO(b"caf\xe9\thttp://a/1.jpg\n"), "mem", "cc3m:"))
    assert rows[0]["caption"] == "caf\ufffd" and rows[0]["status"] is None


def test_openimages_real_rows_by_header_name():
    with open(os.path.join(FIXTURES, "openimages_image_ids_sample.csv"), "rb") as handle:
        rows = list(parse_openimages(handle, "f", "openimages:"))
    assert len(rows) == 18 and all(r["status"] is None for r in rows)
    first = rows[0]
    assert first["key"] == "openimages:0006400c1c224e19"
    assert first["url"].startswith("https://c2.staticflickr.com/")
    assert first["expected_md5"] == md5_hex("pDSYaFytmWu7/qeVPjoryQ==")
    assert first["rotation"] == 0.0 and rows[2]["rotation"] is None  # NaN
    assert first["title"] == "Fireworks and Morey's Pier in North Wildwood July 2007"


def test_openimages_oldest_column_set_and_quoted_fields():
    text = (
        "ImageID,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title\n"
        '000002b66c9c498e,http://a/1.jpg,http://p,lic,http://u,"Doe, ""J""","Zoë\nline two"\n'
        "000002b97e5471a0,http://a/2.jpg,http://p,lic\n"
    )
    rows = parse(parse_openimages, text, "openimages:")
    assert rows[0]["author"] == 'Doe, "J"' and rows[0]["title"] == "Zoë\nline two"
    assert rows[0]["expected_md5"] is None and rows[0]["status"] is None
    assert rows[1]["source_line"] == 4  # the quoted newline moved it down a line
    assert rows[1]["status"] == schema.INVALID_URL and "4 fields" in rows[1]["error"]


def test_md5_and_sha256_accept_hex_and_base64():
    assert md5_hex("0Sad+xMj2ttXM1U8meEJ0A==") == "d1269dfb1323dadb5733553c99e109d0"
    assert md5_hex("D1269DFB1323DADB5733553C99E109D0") == "d1269dfb1323dadb5733553c99e109d0"
    assert md5_hex("nonsense") is None
    digest = bytes(range(32))
    import base64

    assert sha256_hex(base64.b64encode(digest).decode()) == digest.hex()
    assert sha256_hex(digest.hex()) == digest.hex()


def test_read_manifests_gz_and_keys_unique_across_files(tmp_path):
    (tmp_path / "a.tsv").write_text("cap\thttp://a/1.jpg\ncap\thttp://a/2.jpg\n")
    with gzip.open(tmp_path / "b.tsv.gz", "wt") as handle:
        handle.write("cap\thttp://b/1.jpg\n")
    (tmp_path / "c.txt").write_text("http://c/1.jpg\tcap\n")
    with TestPipeline(runner="FnApiRunner") as p:
        rows = p | ReadManifests(
            [("cc3m", str(tmp_path / "*.tsv*")), ("cc12m", str(tmp_path / "c.txt"))], ManifestParsers()
        )
        assert_that(
            rows | beam.Map(lambda r: (r["key"], r["url"])),
            equal_to(
                [
                    ("cc3m:a.tsv:1", "http://a/1.jpg"),
                    ("cc3m:a.tsv:2", "http://a/2.jpg"),
                    ("cc3m:b.tsv.gz:1", "http://b/1.jpg"),
                    ("cc12m:1", "http://c/1.jpg"),
                ]
            ),
        )


def test_unmatched_manifest_fails_at_construction(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="no file matches"):
        ReadManifests([("cc3m", str(tmp_path / "missing.tsv"))])
    with pytest.raises(ValueError, match="unknown manifest kind"):
        ReadManifests([("laion", str(tmp_path))])


@pytest.mark.parametrize("spread_rows", [True, False], ids=["spread", "streamed"])
def test_repeated_ids_and_repeated_files_keep_keys_unique(tmp_path, spread_rows):
    header = "ImageID,OriginalURL\n"
    (tmp_path / "a.csv").write_text(
        header + "00000000000000aa,http://a/1.jpg\n00000000000000bb,http://a/2.jpg\n00000000000000aa,http://a/3.jpg\n"
    )
    (tmp_path / "c.tsv").write_text("cap\thttp://c/1.jpg\n")
    with TestPipeline(runner="FnApiRunner") as p:
        rows = p | ReadManifests(
            [
                ("openimages", str(tmp_path / "a.csv")),
                ("cc3m", str(tmp_path / "c.tsv")),
                ("cc3m", str(tmp_path / "c.tsv")),
            ],
            ManifestParsers(),
            spread_rows,
        )
        assert_that(
            rows | beam.Map(lambda r: (r["key"], r["url"])),
            equal_to(
                [
                    ("openimages:00000000000000aa", "http://a/1.jpg"),
                    ("openimages:00000000000000bb", "http://a/2.jpg"),
                    ("openimages:00000000000000aa@a.csv:4", "http://a/3.jpg"),
                    ("cc3m:1", "http://c/1.jpg"),
                ]
            ),
        )


def test_repeated_keys_inside_a_json_array_are_made_unique(tmp_path):
    (tmp_path / "z.json").write_text(
        '[{"ImageKey": "k1", "ImageUrl": "http://z/1.jpg"}, {"ImageKey": "k1", "ImageUrl": "http://z/2.jpg"}]'
    )
    with TestPipeline(runner="FnApiRunner") as p:
        rows = p | ReadManifests([("zero", str(tmp_path / "z.json"))], ManifestParsers())
        assert_that(
            rows | beam.Map(lambda r: (r["key"], r["url"])),
            equal_to([("zero:k1", "http://z/1.jpg"), ("zero:k1@z.json:#2", "http://z/2.jpg")]),
        )


@pytest.mark.parametrize("spread_rows", [True, False], ids=["spread", "streamed"])
def test_a_rename_never_takes_a_native_key_that_reads_like_it(tmp_path, spread_rows):
    """A repeat's later record is renamed `id@file:line`; a native ID that reads so keeps it, and
    the rename takes `#2` (before: two rows of one key, in Zero, ImageNet-Captions, Open Images)."""
    (tmp_path / "a.jsonl").write_text(
        '{"ImageKey": "1@z.jsonl:2", "ImageUrl": "http://a/1.jpg"}\n'
        '{"ImageKey": "1@z.jsonl:2#2", "ImageUrl": "http://a/2.jpg"}\n'
    )
    (tmp_path / "z.jsonl").write_text(
        '{"ImageKey": "1", "ImageUrl": "http://z/1.jpg"}\n{"ImageKey": 1, "ImageUrl": "http://z/2.jpg"}\n'
    )
    (tmp_path / "captions.json").write_text(
        '[{"filename": "x.JPEG", "wnid": "n1"}, {"filename": "x.JPEG", "wnid": "n2"},'
        ' {"filename": "x.JPEG@captions.json:#2", "wnid": "n3"}]'
    )
    (tmp_path / "ids.csv").write_text(
        "ImageID,OriginalURL\naa,http://o/1.jpg\naa@ids.csv:4,http://o/2.jpg\naa,http://o/3.jpg\n"
    )
    with TestPipeline(runner="FnApiRunner") as p:
        rows = p | ReadManifests(
            [
                ("zero", str(tmp_path / "*.jsonl")),
                ("imagenet_captions", str(tmp_path / "captions.json")),
                ("openimages", str(tmp_path / "ids.csv")),
            ],
            ManifestParsers(str(tmp_path)),
            spread_rows,
        )
        assert_that(
            rows
            | beam.Map(lambda r: (r["key"], r["url"] if r["dataset"] != "imagenet_captions" else r["labels"][0]["id"])),
            equal_to(
                [
                    ("zero:1@z.jsonl:2", "http://a/1.jpg"),
                    ("zero:1@z.jsonl:2#2", "http://a/2.jpg"),
                    ("zero:1", "http://z/1.jpg"),
                    ("zero:1@z.jsonl:2#3", "http://z/2.jpg"),
                    ("imagenet_captions:x.JPEG", "n1"),
                    ("imagenet_captions:x.JPEG@captions.json:#2#2", "n2"),
                    ("imagenet_captions:x.JPEG@captions.json:#2", "n3"),
                    ("openimages:aa", "http://o/1.jpg"),
                    ("openimages:aa@ids.csv:4", "http://o/2.jpg"),
                    ("openimages:aa@ids.csv:4#2", "http://o/3.jpg"),
                ]
            ),
        )


def test_file_labels_name_each_file_unambiguously():
    from transforms.io.file_matches import normalise_path
    from transforms.io.manifests import file_labels

    assert file_labels(["/d/2024/part-0.tsv"]) == {"/d/2024/part-0.tsv": "part-0.tsv"}
    assert file_labels(["/d/a.tsv", "/d/b.tsv"]) == {"/d/a.tsv": "a.tsv", "/d/b.tsv": "b.tsv"}
    assert file_labels(["/d/2024/p.tsv", "/d/2025/p.tsv", "/d/2025/x/p.tsv"]) == {
        "/d/2024/p.tsv": "2024/p.tsv",
        "/d/2025/p.tsv": "2025/p.tsv",
        "/d/2025/x/p.tsv": "2025/x/p.tsv",
    }
    assert file_labels(["gs://b/m/2024/p.tsv", "gs://b/m/2025/p.tsv"]) == {
        "gs://b/m/2024/p.tsv": "2024/p.tsv",
        "gs://b/m/2025/p.tsv": "2025/p.tsv",
    }
    assert normalise_path("gs://b/m//a/../a/./p.tsv") == "gs://b/m/a/p.tsv"


def test_one_file_matched_under_two_kinds_is_refused(tmp_path):
    # A file is a manifest of one kind. Matched by `zero=/in/*` and `cc12m=/in/m.tsv` (or given as
    # both), it was read once as each: its 2 lines gave 2 good rows and 2 invalid ones, exit 0.
    (tmp_path / "sub").mkdir()
    (tmp_path / "m.tsv").write_text("http://a/1.jpg\tone\nhttp://a/2.jpg\ttwo\n")
    (tmp_path / "z.jsonl").write_text('{"ImageKey": "k", "ImageUrl": "http://a/3.jpg"}\n')
    both = [("zero", str(tmp_path / "*")), ("cc12m", str(tmp_path / "sub" / ".." / "m.tsv"))]
    with pytest.raises(BadInput, match=r"m\.tsv is matched by --manifest zero=.* and by --manifest cc12m="):
        ReadManifests(both)
    assert [f[:2] for f in expand_manifests([("cc12m", str(tmp_path / "m.tsv"))] * 2, ManifestParsers())] == [
        ("cc12m", str(tmp_path / "m.tsv"))
    ]  # the same kind twice: read once, as before


def test_two_tsv_records_run_together_on_one_line_are_an_invalid_row():
    # `cat a.tsv b.tsv` where a.tsv's last line had no newline: a's last record and b's first
    # share a line. Before, the line was one ok row of one of the two URLs, the other record's URL
    # inside its caption, exit 0: a record lost without a word.
    cc3m = parse(parse_cc3m, "cap a\thttp://a/1.jpgcap b\thttp://b/1.jpg\nsee\tthis\thttp://a/2.jpg\n", "cc3m:")
    cc12m_text = "http://a/1.jpg\tcap ahttp://b/1.jpg\tcap b\nhttp://a/2.jpg\tsee http://x.org\tz\n"
    cc12m = parse(parse_cc12m, cc12m_text, "c:")
    for rows in (cc3m, cc12m):
        assert [r["status"] for r in rows] == [schema.INVALID_URL, None]
        assert "two records run together" in rows[0]["error"] and "newline" in rows[0]["error"]
    assert (cc3m[0]["url"], cc3m[0]["caption"]) == ("http://b/1.jpg", "cap a\thttp://a/1.jpgcap b")
    assert (cc12m[0]["url"], cc12m[0]["caption"]) == ("http://a/1.jpg", "cap ahttp://b/1.jpg\tcap b")
    # a TAB inside a caption, or a URL in a CC12M caption after a space, is no second record
    assert cc3m[1]["caption"] == "see\tthis" and cc12m[1]["caption"] == "see http://x.org\tz"


def test_an_empty_column_beside_the_url_leaves_the_url_whole():
    # A TAB after a CC3M URL or before a CC12M one (an extra empty column): before, the URL read
    # as "" and the row was invalid_url ("empty URL"), the URL in its caption.
    cc3m = parse(parse_cc3m, "a cat\thttp://a/1.jpg\t\r\nno url\t\n", "cc3m:")
    cc12m = parse(parse_cc12m, "\thttp://a/1.jpg\ta cat\n\t\tno url\n", "cc12m:")
    for rows in (cc3m, cc12m):
        assert [(r["url"], r["caption"], r["status"]) for r in rows[:1]] == [("http://a/1.jpg", "a cat", None)]
        assert rows[1]["status"] == schema.INVALID_URL and "two records" not in rows[1]["error"]


def test_openimages_lists_joined_by_cat_read_each_header_as_one():
    # `cat train-images.csv validation-images.csv test-images-v3.csv`: a header inside the file,
    # of the same or another column set (V3's has no Rotation), starting with its own BOM.
    # Before: each inner header was a row (openimages:ImageID, openimages:ImageID@f:4) and the
    # records after the V3 header were invalid ("11 fields, header has 12"), exit 0.
    v4 = "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,OriginalMD5"
    text = (
        f"{v4},Thumbnail300KURL,Rotation\n000026e7ee790996,train,http://a/1.jpg,,,,,,1,,,90\n"
        f"\ufeff{v4},Thumbnail300KURL,Rotation\r\n000062a39995e348,validation,http://a/2.jpg,,,,,,1,,,0\r\n"
        f"{v4},Thumbnail300KURL\n000c4d66ce89aa69,test,http://a/3.jpg,,,,,,1,,\n"
    )
    rows = parse(parse_openimages, text, "openimages:")
    assert [(r["key"], r["url"], r["rotation"], r["status"], r["source_line"]) for r in rows] == [
        ("openimages:000026e7ee790996", "http://a/1.jpg", 90.0, None, 2),
        ("openimages:000062a39995e348", "http://a/2.jpg", 0.0, None, 4),
        ("openimages:000c4d66ce89aa69", "http://a/3.jpg", None, None, 6),
    ]

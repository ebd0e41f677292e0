"""Label / caption side files of issue 4: parsers on the real formats, and the Beam joins."""

import gzip
import os
import shutil

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.paths import FIXTURES
from transforms import schema
from transforms.io import labels, readers


def fixture(name):
    return os.path.join(FIXTURES, name)


def gzipped(src, dst_dir, name=None):
    """A .gz copy of a fixture under dst_dir, to prove compressed side files read the same."""
    dst = os.path.join(str(dst_dir), (name or os.path.basename(src)) + ".gz")
    with open(src, "rb") as f_in, gzip.open(dst, "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)
    return dst


def counter(result, name):
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


def label(mid, name, conf, source):
    return {"id": mid, "name": name, "confidence": conf, "source": source}


# ---------------------------------------------------------------------------------------------
# Open Images class names


def test_v1_dict_csv_all_rows_quoted_ids_and_names():
    rows = list(labels.read_class_descriptions(readers.open_path(fixture("openimages_v1_dict.csv"))))
    assert len(rows) == 7881  # the real V1 file: no header, so no row is lost as one
    assert {form for form, _, _ in rows} == {labels.FORM_DICT_V1}
    names = {mid: name for _, mid, name in rows}
    assert names["/m/05wrt"] == "property"
    assert names["/g/1172hxxrk"] == "traditional sport"  # /g/ ids too
    assert names["/m/01c_0l"] == "ducks, geese and swans"  # comma inside quotes
    assert names["/m/01csdn"] == "smörgåsbord"  # non-ASCII
    assert not any(mid.startswith('"') or name.endswith('"') for mid, name in names.items())


def test_class_descriptions_unquoted_and_quoted_where_needed():
    rows = list(labels.read_class_descriptions(readers.open_path(fixture("openimages_class-descriptions.csv"))))
    assert {form for form, _, _ in rows} == {labels.FORM_CLASS_DESCRIPTIONS}
    names = {mid: name for _, mid, name in rows}
    assert names["/m/011k07"] == "Tortoise"  # the first line is data, not a header
    assert names["/m/01c_0l"] == "Ducks, geese and swans"
    assert names["/g/11b6vlt4_v"] == 'The "Thinker" (sculpture)'
    assert names["/m/0crjs9"] == "Crème brûlée"
    assert len(names) == 9


def test_oidv7_header_skipped_and_crlf_stripped():
    rows = list(labels.read_class_descriptions(readers.open_path(fixture("oidv7-class-descriptions.csv"))))
    assert {form for form, _, _ in rows} == {labels.FORM_HEADER}
    assert ("/m/01g317", "Person") == rows[0][1:]
    assert "LabelName" not in {mid for _, mid, _ in rows}
    assert all("\r" not in name for _, _, name in rows)
    assert len(rows) == 5


@pytest.mark.parametrize(
    "first, raw, form",
    [
        (["LabelName", "DisplayName"], "LabelName,DisplayName\r\n", labels.FORM_HEADER),
        (["id", "name"], "id,name\n", labels.FORM_HEADER),
        (["/m/05wrt", "property"], '"/m/05wrt","property"\n', labels.FORM_DICT_V1),
        (["/m/05wrt", "property"], "\ufeff/m/05wrt,property\n", labels.FORM_CLASS_DESCRIPTIONS),
    ],
)
def test_class_file_form_detection(first, raw, form):
    assert labels.class_file_form(first, raw) == form


def test_read_classes_pipeline_over_glob_and_gzip(tmp_path):
    shutil.copy(fixture("oidv7-class-descriptions.csv"), tmp_path / "a-class-descriptions.csv")
    gzipped(fixture("openimages_class-descriptions.csv"), tmp_path, "b-class-descriptions.csv")
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | labels.ReadOpenImagesClasses(str(tmp_path / "*-class-descriptions.csv*"))
        names = out | beam.Filter(lambda kv: kv[0] in ("/m/0cgh4", "/g/11b6vlt4_v", "/m/011k07"))
        assert_that(
            names,
            equal_to(
                [("/m/0cgh4", "Building"), ("/g/11b6vlt4_v", 'The "Thinker" (sculpture)'), ("/m/011k07", "Tortoise")]
            ),
        )
        assert_that(out | beam.combiners.Count.Globally(), equal_to([5 + 9]), label="count")


# ---------------------------------------------------------------------------------------------
# Open Images label lines


@pytest.mark.parametrize(
    "line, source, expected",
    [
        ("ImageID,Source,LabelName,Confidence", "machine", []),
        ("ImageID,Source,Label,Confidence", "machine", []),
        ("ImageID,Confidence:Label,...", "machine", []),
        ("\ufeffImageID,Source,LabelName,Confidence", "machine", []),
        ("", "machine", []),
        (
            "000060e3121c7305,machine,/m/06ht1,0.9",
            "human",  # a Source column wins over the path
            [("000060e3121c7305", "/m/06ht1", 0.9, "machine")],
        ),
        ('"000060e3121c7305","Human","/m/06ht1","0"', "machine", [("000060e3121c7305", "/m/06ht1", 0.0, "human")]),
        (
            "000060e3121c7305,0.9:/m/06ht1,0.5:/g/11jwzh3_l",
            "human",
            [("000060e3121c7305", "/m/06ht1", 0.9, "human"), ("000060e3121c7305", "/g/11jwzh3_l", 0.5, "human")],
        ),
        ("000060e3121c7305", "machine", []),  # wide form, image without labels
    ],
)
def test_label_line_forms(line, source, expected):
    assert labels.parse_openimages_label_line(line, source) == expected


@pytest.mark.parametrize(
    "line",
    [
        "000060e3121c7305,machine,/m/06ht1",
        "000060e3121c7305,machine,/m/06ht1,high",
        "000060e3121c7305,machine,/m/06ht1,1.5",
        "000060e3121c7305,machine,/m/06ht1,nan",
        "000060e3121c7305,0.9:/m/06ht1,0.9",
        "000060e3121c7305,x:/m/06ht1",
        ",machine,/m/06ht1,0.9",
    ],
)
def test_bad_label_lines_raise_value_error(line):
    with pytest.raises(ValueError):
        labels.parse_openimages_label_line(line)


def test_source_from_path_of_wide_files():
    assert labels.source_from_path("gs://b/human_ann_2016_08/validation/labels.csv") == "human"
    assert labels.source_from_path("/x/machine_ann_2016_08/train/labels.csv.gz") == "machine"


# ---------------------------------------------------------------------------------------------
# Open Images join


def _oi_row(image_id, **fields):
    return schema.new_row("openimages", f"openimages:{image_id}", url=f"http://127.0.0.1/oi/{image_id}.jpg", **fields)


def test_join_openimages_labels_every_form_negatives_and_passthrough(tmp_path):
    label_paths = [
        fixture("openimages_labels_machine.csv"),
        gzipped(fixture("openimages_labels_human.csv"), tmp_path),
        fixture("openimages_labels_old.csv"),
        fixture("machine_ann_2016_08_labels.csv"),
        gzipped(fixture("human_ann_2016_08_labels.csv"), tmp_path),
    ]
    existing = label("/m/x", "kept", 1.0, "other")
    rows = [
        _oi_row("0006400c1c224e19", caption='Fireworks, "Morey\'s" Pier'),
        _oi_row("000adef7197e3118"),
        _oi_row("001ad258e358b14a", rotation=90.0),
        _oi_row("00416784a9cb1756"),
        _oi_row("000060e3121c7305"),
        _oi_row("004e02a535337d9b", labels=[existing]),
        _oi_row("0053e4fc02b27650", labels=[existing]),  # wide line without labels
        _oi_row("0099d4cbcd86d84d"),  # in no label file
        schema.new_row("cc3m", "cc3m:7", url="http://127.0.0.1/oi/0006400c1c224e19.jpg"),
        schema.new_row("zero", "zero:0006400c1c224e19", url="http://127.0.0.1/z.jpg"),
        schema.new_row("openimages", None, url="http://127.0.0.1/nokey.jpg"),
    ]
    d = {r["key"]: r for r in rows}
    expected = [
        dict(
            d["openimages:0006400c1c224e19"],
            labels=[
                label("/m/07j7r", "tree", 1.0, "verification"),
                label("/m/07j7r", "tree", 0.9, "machine"),
                label("/m/0cgh4", "building", 0.7, "machine"),
            ],
            negative_labels=[label("/m/0bt9lr", "dog", 0.0, "verification")],
        ),
        # machine confidence 0 (/m/0bt9lr) is neither a label nor a negative
        dict(
            d["openimages:000adef7197e3118"],
            labels=[
                label("/m/01g317", "person", 1.0, "crowdsource-verification"),
                label("/m/01g317", "person", 0.8, "machine"),
            ],
            negative_labels=[label("/m/01c_0l", "ducks, geese and swans", 0.0, "human")],
        ),
        dict(
            d["openimages:001ad258e358b14a"],
            labels=[label("/m/0c9ph5", "flower", 1.0, "human"), label("/m/05wrt", "property", 0.9, "machine")],
            negative_labels=[label("/m/01g317", "person", 0.0, "human")],
        ),
        # /m/0crjs9 is not in the V1 dict: the label stays, without a name
        dict(d["openimages:00416784a9cb1756"], labels=[label("/m/0crjs9", None, 1.0, "human")]),
        dict(
            d["openimages:000060e3121c7305"],
            labels=[
                label("/m/06ht1", "room", 1.0, "human"),
                label("/m/05wrt", "property", 0.9, "machine"),
                label("/m/06ht1", "room", 0.9, "machine"),
                label("/m/01l0mw", "home", 0.8, "machine"),
                label("/m/01nblt", "apartment", 0.5, "machine"),
            ],
            negative_labels=[label("/m/01nblt", "apartment", 0.0, "human")],
        ),
        dict(
            d["openimages:004e02a535337d9b"],
            labels=[existing, label("/m/0bt9lr", "dog", 1.0, "human"), label("/m/0bt9lr", "dog", 0.7, "machine")],
            negative_labels=[label("/m/01g317", "person", 0.0, "human")],
        ),
        d["openimages:0053e4fc02b27650"],
        d["openimages:0099d4cbcd86d84d"],
        d["cc3m:7"],
        d["zero:0006400c1c224e19"],
        d[None],
    ]
    p = TestPipeline(runner="FnApiRunner")
    out = p | beam.Create(rows) | labels.JoinOpenImagesLabels(label_paths, fixture("openimages_v1_dict.csv"))
    assert_that(out, equal_to(expected))
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "openimages_labels_bad_line") == 2
    assert counter(result, "openimages_labels_rows_joined") == 6
    # no human negative ever reaches `labels`
    assert not any(item["confidence"] == 0.0 for r in expected for item in r["labels"])


def test_join_openimages_without_class_names_keeps_ids():
    rows = [_oi_row("001ad258e358b14a")]
    with TestPipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(rows)
            | labels.JoinOpenImagesLabels(fixture("openimages_labels_old.csv"))
            | beam.Map(lambda r: (r["labels"], r["negative_labels"]))
        )
        assert_that(
            out,
            equal_to(
                [
                    (
                        [label("/m/0c9ph5", None, 1.0, "human"), label("/m/05wrt", None, 0.9, "machine")],
                        [label("/m/01g317", None, 0.0, "human")],
                    )
                ]
            ),
        )


def test_same_label_file_twice_does_not_duplicate_labels():
    rows = [_oi_row("001ad258e358b14a")]
    path = fixture("openimages_labels_old.csv")
    with TestPipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(rows)
            | labels.JoinOpenImagesLabels([path, path], fixture("oidv7-class-descriptions.csv"))
            | beam.Map(lambda r: [(item["id"], item["name"], item["source"]) for item in r["labels"]])
        )
        assert_that(out, equal_to([[("/m/0c9ph5", None, "human"), ("/m/05wrt", None, "machine")]]))


# ---------------------------------------------------------------------------------------------
# CC3M labels


def test_cc3m_labels_lines():
    lines = open(fixture("cc3m_labels.tsv"), encoding="utf-8").read().splitlines()
    url, got = labels.parse_cc3m_labels_line(lines[0])
    assert url == "http://127.0.0.1/cc3m/premiere.jpg"
    assert got == [
        label("/m/01g317", "person", 0.97, "cc3m"),
        label("/m/03gq5hm", "premiere", 0.91, "cc3m"),
        label("/m/081pkj", "event", 0.66, "cc3m"),
    ]
    assert labels.parse_cc3m_labels_line(lines[2]) == ("http://127.0.0.1/cc3m/empty.jpg", [])
    assert labels.parse_cc3m_labels_line("caption only\thttp://127.0.0.1/x.jpg") == ("http://127.0.0.1/x.jpg", [])
    with pytest.raises(labels.LabelListMismatch):
        labels.parse_cc3m_labels_line(lines[3])
    assert labels.parse_cc3m_labels_line(lines[4])[0] == "http://127.0.0.1/cc3m/tab.jpg"
    with pytest.raises(ValueError):
        labels.parse_cc3m_labels_line(lines[5])


def test_join_cc3m_labels_by_url(tmp_path):
    def cc3m(n, url):
        return schema.new_row("cc3m", f"cc3m:{n}", url=url, caption=f"caption {n}")

    rows = [
        cc3m(1, "http://127.0.0.1/cc3m/premiere.jpg"),
        cc3m(2, "http://127.0.0.1/cc3m/hash.jpg"),
        cc3m(3, "http://127.0.0.1/cc3m/empty.jpg"),
        cc3m(4, "http://127.0.0.1/cc3m/mismatch.jpg"),
        cc3m(5, "http://127.0.0.1/cc3m/tab.jpg"),
        cc3m(6, "http://127.0.0.1/cc3m/badconf.jpg"),
        cc3m(7, "http://127.0.0.1/cc3m/not-in-file.jpg"),
        cc3m(8, None),
        # same URL in CC12M: a CC3M label file does not label CC12M rows
        schema.new_row("cc12m", "cc12m:1", url="http://127.0.0.1/cc3m/premiere.jpg"),
    ]
    d = {r["key"]: r for r in rows}
    expected = [
        dict(
            d["cc3m:1"],
            labels=[
                label("/m/01g317", "person", 0.97, "cc3m"),
                label("/m/03gq5hm", "premiere", 0.91, "cc3m"),
                label("/m/081pkj", "event", 0.66, "cc3m"),
            ],
        ),
        dict(d["cc3m:2"], labels=[label("/m/01bqvp", "sky", 0.88, "cc3m")]),
        dict(d["cc3m:5"], labels=[label("/m/0bt9lr", "dog", 0.75, "cc3m")]),
    ] + [d[k] for k in ("cc3m:3", "cc3m:4", "cc3m:6", "cc3m:7", "cc3m:8", "cc12m:1")]
    p = TestPipeline(runner="FnApiRunner")
    out = p | beam.Create(rows) | labels.JoinCC3MLabels(gzipped(fixture("cc3m_labels.tsv"), tmp_path))
    assert_that(out, equal_to(expected))
    result = p.run()
    result.wait_until_finish()
    assert counter(result, "cc3m_labels_length_mismatch") == 1
    assert counter(result, "cc3m_labels_bad_line") == 1
    assert counter(result, "cc3m_labels_empty_lists") == 1


# ---------------------------------------------------------------------------------------------
# DreamLIP long captions

PREMIERE_CAPTIONS = {
    "raw": "actor attends the premiere of the film",
    "short_instructblip": "A man in a suit.",
    "long_instructblip": (
        'A man in a dark suit stands on a red carpet,\nsmiling at the cameras. Behind him, a backdrop reads "PREMIERE".'
    ),
    "short_sharegpt4v": "A man at a premiere.",
    "long_sharegpt4v": (
        "The image shows a man, dressed formally,\nat a film premiere.\n\nPhotographers line the carpet."
    ),
    "short_llava": "A man poses.",
    "long_llava": ("In the photo a man poses; the mood is festive — café lights, “quotes”, 中文字幕 and 🎬."),
}
ONLY_CAPTIONS = {
    "raw": "raw, with comma",
    "short_instructblip": "short ib",
    "long_instructblip": "long ib",
    "short_sharegpt4v": None,
    "long_sharegpt4v": "long sv",
    "short_llava": "short lla",
    "long_llava": None,
}


def test_parse_long_captions_records_not_lines():
    got = list(labels.parse_long_captions(readers.open_path(fixture("dreamlip_long_captions.csv"))))
    assert got == [
        ("http://127.0.0.1/cc3m/premiere.jpg", PREMIERE_CAPTIONS),
        ("http://127.0.0.1/cc12m/only.jpg", ONLY_CAPTIONS),
    ]
    assert set(PREMIERE_CAPTIONS) == {f.name for f in schema.LONG_CAPTIONS_TYPE}


def test_parse_long_captions_rejects_a_file_without_image_path(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("url,caption\nhttp://127.0.0.1/a.jpg,x\n")
    with pytest.raises(ValueError, match="Image Path"):
        list(labels.parse_long_captions(readers.open_path(str(bad))))


def test_join_long_captions_by_url(tmp_path):
    shutil.copy(fixture("dreamlip_long_captions.csv"), tmp_path / "cc3m_long.csv")
    # a second file (gzipped) with a duplicate of the premiere URL that has fewer captions
    dup = tmp_path / "cc12m_long.csv"
    dup.write_text(
        "Image Path,raw_caption,shortIB_captions,longIB_captions,shortSV_captions,"
        "longSV_captions,shortLLA_captions,longLLA_captions\n"
        "http://127.0.0.1/cc3m/premiere.jpg,only raw,,,,,,\n",
        encoding="utf-8",
    )
    gzipped(str(dup), tmp_path)
    os.remove(dup)
    rows = [
        schema.new_row("cc3m", "cc3m:1", url="http://127.0.0.1/cc3m/premiere.jpg"),
        schema.new_row("cc12m", "cc12m:1", url="http://127.0.0.1/cc3m/premiere.jpg"),
        schema.new_row("cc12m", "cc12m:2", url="http://127.0.0.1/cc12m/only.jpg"),
        schema.new_row("cc12m", "cc12m:3", url="http://127.0.0.1/cc12m/none.jpg"),
        schema.new_row("zero", "zero:1", url=None),
    ]
    d = {r["key"]: r for r in rows}
    expected = [
        dict(d["cc3m:1"], long_captions=PREMIERE_CAPTIONS),
        dict(d["cc12m:1"], long_captions=PREMIERE_CAPTIONS),
        dict(d["cc12m:2"], long_captions=ONLY_CAPTIONS),
        d["cc12m:3"],
        d["zero:1"],
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(rows)
            | labels.JoinLongCaptions([str(tmp_path / "cc3m_long.csv"), str(tmp_path / "cc12m_*.csv.gz")])
        )
        assert_that(out, equal_to(expected))


def test_join_long_captions_limited_to_datasets():
    rows = [
        schema.new_row("cc3m", "cc3m:1", url="http://127.0.0.1/cc3m/premiere.jpg"),
        schema.new_row("cc12m", "cc12m:1", url="http://127.0.0.1/cc3m/premiere.jpg"),
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create(rows)
            | labels.JoinLongCaptions(fixture("dreamlip_long_captions.csv"), datasets=["cc3m"])
            | beam.Map(lambda r: (r["key"], r["long_captions"] is not None))
        )
        assert_that(out, equal_to([("cc3m:1", True), ("cc12m:1", False)]))


# ---------------------------------------------------------------------------------------------
# ImageNet synsets


def test_synsets_split_on_first_space(tmp_path):
    synsets = labels.load_synsets(gzipped(fixture("LOC_synset_mapping.txt"), tmp_path))
    assert synsets["n01440764"] == "tench, Tinca tinca"
    assert synsets["n01484850"].startswith("great white shark, white shark,")
    assert len(synsets) == 5
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | labels.ReadSynsets(fixture("LOC_synset_mapping.txt"))
        assert_that(out | beam.Keys(), equal_to(list(synsets)))


# ---------------------------------------------------------------------------------------------
# Cut compressed side files: refused, never read up to the cut


def _cut_gzip(src, dst_dir, name, keep=0.6):
    whole = gzipped(src, dst_dir, name)
    data = open(whole, "rb").read()
    with open(whole, "wb") as handle:
        handle.write(data[: int(len(data) * keep)])
    return whole


@pytest.mark.parametrize(
    "reader, fixture_name",
    [
        (labels.ReadOpenImagesClasses, "openimages_v1_dict.csv"),
        (labels.ReadOpenImagesLabels, "machine_ann_2016_08_labels.csv"),
        (labels.ReadCC3MLabels, "cc3m_labels.tsv"),
        (labels.ReadLongCaptions, "dreamlip_long_captions.csv"),
        (labels.ReadSynsets, "LOC_synset_mapping.txt"),
    ],
)
def test_every_side_file_reader_refuses_a_cut_gzip_and_reads_a_whole_one_like_the_plain_file(
    tmp_path, reader, fixture_name
):
    def same_records(lists):
        plain, unzipped = (sorted(map(repr, records)) for records in lists)
        assert plain and plain == unzipped

    whole = gzipped(fixture(fixture_name), tmp_path)
    with TestPipeline(runner="FnApiRunner") as p:
        plain = p | "Plain" >> reader(fixture(fixture_name)) | "PlainList" >> beam.combiners.ToList()
        unzipped = p | "Gzip" >> reader(whole) | "GzipList" >> beam.combiners.ToList()
        assert_that((plain, unzipped) | beam.Flatten(), same_records)

    cut = _cut_gzip(fixture(fixture_name), tmp_path, "cut-" + fixture_name)
    with pytest.raises(readers.CompressedInputError, match="cut short"):
        with TestPipeline(runner="FnApiRunner") as p:
            _ = p | reader(cut)

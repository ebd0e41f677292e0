"""Issue 14 end to end: mirrored, letterboxed, cropped and captioned copies served from loopback
as CC3M and CC12M rows are clustered with their original through the picture views; a different
picture and a different tile of the same picture stay alone; the report shows the cluster."""

import glob
import json
import os

import pyarrow.dataset as ds
import pytest
from PIL import Image, ImageDraw, ImageOps

from pipelines import ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, encode, picture
from tests.conftest import local_options

JPEG = {"Content-Type": "image/jpeg"}


def letterbox(image):
    canvas = Image.new("RGB", (image.height * 16 // 9, image.height), (0, 0, 0))
    canvas.paste(image, ((canvas.width - image.width) // 2, 0))
    return canvas


def banner(image):
    image = image.copy()
    top = image.height - image.height // 8
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, top, image.width, image.height), fill=(20, 20, 20))
    draw.text((6, top + 4), "you will not believe this", fill=(255, 255, 255))
    return image


def copies():
    big = picture(21, (640, 320))
    original, other_tile = big.crop((0, 0, 320, 320)), big.crop((320, 0, 640, 320))
    return {
        "original": original,
        "mirror": ImageOps.mirror(original),
        "letterbox": letterbox(original),
        "crop": original.crop((24, 24, 296, 296)),  # 15 % off, centred
        "banner": banner(original),
        "other_tile": other_tile,  # hard negative: same photo, another tile
        "unrelated": picture(22, (320, 320)),
    }


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    pictures = copies()
    routes = {
        f"/{name}.jpg": Reply(200, encode(image.convert("RGB"), "JPEG", quality=90), JPEG)
        for name, image in pictures.items()
    }
    with SampleWebServer(routes) as web:
        names = sorted(pictures)
        (tmp / "cc3m.tsv").write_text("".join(f"{n}\t{web.url(f'/{n}.jpg')}\n" for n in names[::2]))
        (tmp / "cc12m.tsv").write_text("".join(f"{web.url(f'/{n}.jpg')}\t{n}\n" for n in names[1::2]))
        out = str(tmp / "out")
        ingest.run(
            local_options(
                manifest=[f"cc3m={tmp / 'cc3m.tsv'}", f"cc12m={tmp / 'cc12m.tsv'}"],
                output=out,
                **{"allow-network": "127.0.0.1/32"},
            )
        )
    rows = {
        r["url"].rsplit("/", 1)[1][:-4]: r
        for r in ds.dataset(os.path.join(out, "images"), format="parquet").to_table().to_pylist()
    }
    return out, rows


def test_hard_copies_join_their_original_and_negatives_stay_alone(ingested):
    _, rows = ingested
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows.values())
    cluster = rows["original"]["cluster_id"]
    assert cluster is not None
    for name in ("mirror", "letterbox", "crop", "banner"):
        assert rows[name]["cluster_id"] == cluster, name
    assert rows["other_tile"]["cluster_id"] is None
    assert rows["unrelated"]["cluster_id"] is None
    # the letterboxed copy is the biggest, but its bars are no picture: the canonical is a 320 px
    # one, and of those the CC12M row (dataset priority): the mirrored copy
    assert [n for n, r in rows.items() if r["is_canonical"] and r["cluster_id"] == cluster] == ["mirror"]
    assert rows["letterbox"]["phash_trim"] is not None and rows["original"]["phash_trim"] is None
    assert all(rows[n]["phash_mirror"] and rows[n]["dhash_centre"] for n in rows)


def test_cluster_record_and_summary_say_which_view_matched(ingested):
    out, rows = ingested
    records = [
        json.loads(line) for path in glob.glob(os.path.join(out, "duplicates", "*.jsonl")) for line in open(path)
    ]
    (record,) = [r for r in records if r["cluster_id"] == rows["original"]["cluster_id"]]
    match = {m["key"]: m["match"] for m in record["members"]}
    assert match[rows["mirror"]["key"]] == "canonical"
    assert match[rows["original"]["key"]] == "mirror"
    assert match[rows["letterbox"]["key"]] in ("trim", "transitive")
    assert match[rows["crop"]["key"]] in ("crop", "centre", "transitive")  # met the original, not the canonical
    assert record["kind"] == "near"
    with open(os.path.join(out, "summary.json")) as f:
        duplicates = json.load(f)["duplicates"]
    assert duplicates["matches"]["mirror"] >= 1
    assert {"mirror", "trim"} <= set(duplicates["view_pairs"])  # each copy met the original through its view
    assert {"crop", "centre"} & set(duplicates["view_pairs"])
    assert duplicates["config"]["views"] == ["mirror", "trim", "crop", "centre"]


def test_report_shows_the_cluster_with_thumbnails(ingested):
    out, rows = ingested
    with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
        page = f.read()
    assert "Largest near-duplicate clusters" in page
    assert rows["original"]["cluster_id"] in page
    assert page.count("data:image/jpeg;base64,") >= 5 * 2  # the cluster, in both galleries
    assert "view mirror" in page and "canonical" in page
    assert "cross-dataset overlap" in page

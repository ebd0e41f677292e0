"""Odd pictures through ingest and export, read back as a researcher reads them: the real
`webdataset` (`decode("pil")`) and `datasets` (the Image feature) readers, both formats, every
resize mode. Each sample decodes to a picture of the size its metadata gives, under an extension
that names its bytes, or is skipped with a reason the books count."""

import io
import os
import tarfile

import pytest
from PIL import Image

from pipelines import export, ingest
from pipelines.demo.sample_site import Reply, SampleWebServer, encode, picture
from tests.conftest import local_options
from tests.pipelines.test_export import read_hf, read_table, read_webdataset, run_export

pytestmark = pytest.mark.timeout(240)

N = 96  # the resize target in these tests
WIDE = (18000, 100)  # keep_ratio at N: 17280 x 96, over WebP's 16383 pixels a side


def _exif_jpeg(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(picture(11, (300, 200)), "JPEG", exif=exif.tobytes())


def _with_alpha(seed, fmt):
    image = picture(seed, (300, 200)).convert("RGBA")
    image.putalpha(120)
    return encode(image, fmt)


def _animated_gif():
    frames = [picture(20 + n, (300, 200)).convert("P") for n in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def pictures():
    """name -> bytes: the odd pictures a web crawl meets (each a distinct photo-like picture)."""
    return {
        "exif6.jpg": _exif_jpeg(6),
        "cmyk.jpg": encode(picture(12, (300, 200)).convert("CMYK"), "JPEG"),
        "palette.png": encode(picture(13, (300, 200)).convert("P", colors=16), "PNG", transparency=0),
        "alpha.webp": _with_alpha(17, "WEBP"),
        "animated.gif": _animated_gif(),
        "wide.jpg": encode(picture(50, (1800, 100)).resize(WIDE), "JPEG"),
        "netpbm.ppm": encode(picture(60, (300, 200)), "PPM"),
        "targa.tga": encode(picture(61, (300, 200)), "TGA"),
    }


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """An ingest output of pictures(), captions naming each picture; (OUT, rows by picture name)."""
    tmp = tmp_path_factory.mktemp("odd-pictures")
    served = pictures()
    routes = {f"/{name}": Reply(200, data, {"Content-Type": "image/x-any"}) for name, data in served.items()}
    with SampleWebServer(routes) as web:
        (tmp / "cc3m.tsv").write_text("".join(f"{name}\t{web.url('/' + name)}\n" for name in served))
        out = str(tmp / "out")
        ingest.run(local_options(manifest=f"cc3m={tmp / 'cc3m.tsv'}", output=out, **{"allow-network": "127.0.0.1/32"}))
    rows = {row["caption"]: row for row in read_table(out)}
    assert all(row["status"] == "ok" and not row["is_placeholder"] for row in rows.values()), rows
    return out, rows


def _image_extension(sample):
    (extension,) = [name for name in sample if name not in ("__key__", "__url__", "__local_path__", "txt", "json")]
    return extension


def _format_of(data):
    return Image.open(io.BytesIO(data)).format


def _extensions_of(fmt):
    """File extensions Pillow registers for a format (what a reader maps an extension back with)."""
    return {ext.lstrip(".") for ext, name in Image.registered_extensions().items() if name == fmt}


def _raw_images(exp):
    """{sample key: (extension, bytes)} of the image members of EXP's tar shards."""
    found = {}
    for name in sorted(os.listdir(exp)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(exp, name)) as tar:
                for member in tar.getmembers():
                    key, extension = member.name.split(".", 1)
                    if extension not in ("txt", "json"):
                        found[key] = (extension, tar.extractfile(member).read())
    return found


@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border"])
@pytest.mark.parametrize("encode_format", ["jpg", "webp"])
def test_resized_pictures_decode_at_their_size_or_are_skipped_as_too_large(odd, tmp_path, mode, encode_format):
    """Every resized sample decodes, RGB, at its metadata's size, with the export's extension; a
    picture whose resized sides WebP cannot hold is skipped as too_large (before: unreadable_blob,
    as if its blob were lost or corrupt)."""
    out, rows = odd
    exp, summary = run_export(
        tmp_path, out, "webdataset", f"--resize={N}", f"--resize-mode={mode}", f"--encode-format={encode_format}"
    )
    samples = read_webdataset(exp)
    too_large = 1 if (encode_format, mode) == ("webp", "keep_ratio") else 0
    assert summary["skipped"]["too_large"] == too_large
    assert summary["skipped"]["unreadable_blob"] == 0
    assert summary["exported"] == len(samples) == len(rows) - too_large
    assert summary["rows_read"] == summary["exported"] + sum(summary["skipped"].values())
    for sample in samples:
        image, meta = sample[_image_extension(sample)], sample["json"]
        assert _image_extension(sample) == encode_format
        assert isinstance(image, Image.Image) and image.size == (meta["width"], meta["height"]), meta["caption"]
        row = rows[meta["caption"]]
        assert (meta["original_width"], meta["original_height"]) == (row["width"], row["height"])
    exif = next(s for s in samples if s["json"]["caption"] == "exif6.jpg")
    assert exif["json"]["original_width"] < exif["json"]["original_height"]  # upright: 200 x 300


def test_original_bytes_carry_an_extension_that_names_them(odd, tmp_path, monkeypatch):
    """No resize: each sample's extension is one its format is known by, so that webdataset's
    decode("pil") decodes it (before: a PPM or TGA went out as `.bin` and came back as bytes)."""
    out, rows = odd
    exp, summary = run_export(tmp_path, out, "webdataset")
    assert summary["exported"] == len(rows)
    for extension, data in _raw_images(exp).values():
        assert extension in _extensions_of(_format_of(data)), (extension, _format_of(data))
    for sample in read_webdataset(exp):
        image = sample[_image_extension(sample)]
        assert isinstance(image, Image.Image), (sample["json"]["caption"], _image_extension(sample))
    exp_hf, _ = run_export(tmp_path, out, "hf-parquet", name="exp-hf")
    dataset = read_hf(exp_hf, tmp_path, monkeypatch)
    assert len(dataset) == len(rows)
    for record in dataset.cast_column("image", type(dataset.features["image"])(decode=False)):
        extension = record["image"]["path"].rsplit(".", 1)[1]
        assert extension in _extensions_of(_format_of(record["image"]["bytes"]))


def test_original_bytes_sizes_are_what_each_reader_decodes(odd, tmp_path, monkeypatch):
    """No resize keeps a JPEG's EXIF orientation in its bytes. The `datasets` Image feature applies
    it (a 300 x 200 JPEG of orientation 6 decodes 200 x 300), webdataset's decode("pil") does not:
    each format's width and height are the size its reader decodes (before: hf-parquet's columns
    said 300 x 200 under a 200 x 300 picture)."""
    out, rows = odd
    exp, _ = run_export(tmp_path, out, "hf-parquet")
    dataset = read_hf(exp, tmp_path, monkeypatch)
    assert len(dataset) == len(rows)
    for record in dataset:
        assert record["image"].size == (record["width"], record["height"]), record["caption"]
        row = rows[record["caption"]]
        assert (record["original_width"], record["original_height"]) == (row["width"], row["height"])
    exif = next(record for record in dataset if record["caption"] == "exif6.jpg")
    assert exif["image"].size == (200, 300)
    exp_wds, _ = run_export(tmp_path, out, "webdataset", name="exp-wds")
    for sample in read_webdataset(exp_wds):
        meta = sample["json"]
        assert sample[_image_extension(sample)].size == (meta["width"], meta["height"]), meta["caption"]


def test_square_modes_over_the_pixel_limit_are_refused_before_anything_runs(odd, tmp_path, capsys):
    """--resize 14000 --resize-mode border makes every picture 14000 x 14000, 196M pixels: over what
    Pillow (the readers' decoder) opens, DecompressionBombError. Before: exit 0, and the readers
    failed on the first sample. Now: exit 2, one line, nothing written."""
    out, _ = odd
    exp = tmp_path / "exp"
    argv = ["--runner=FnApiRunner", f"--input={out}", f"--output={exp}", "--format=webdataset", "--resize=14000"]
    assert export.main([*argv, "--resize-mode=border"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "pixel limit" in lines[0], lines
    assert not exp.exists()


def test_upscaled_pictures_over_the_pixel_limit_are_skipped_as_too_large(odd, tmp_path):
    """keep_ratio --upscale 12000: a 300 x 200 picture would be 18000 x 12000 (216M pixels), which
    the readers refuse to decode; each is counted as too_large, before any is decoded."""
    out, rows = odd
    exp, summary = run_export(tmp_path, out, "webdataset", "--resize=12000", "--upscale")
    assert summary["exported"] == len(_raw_images(exp)) == 0  # before: 7 samples no reader decodes
    assert summary["skipped"]["too_large"] == len(rows)
    assert summary["rows_read"] == summary["exported"] + sum(summary["skipped"].values())

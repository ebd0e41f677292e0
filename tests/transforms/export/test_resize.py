"""Resize modes with img2dataset's meanings, never upscaling unless asked; encoding; bad images."""

import hashlib
import io

import pytest
from PIL import Image

from pipelines.demo.sample_site import encode, jpeg, picture, pixel_bomb_png
from transforms.export.resize import ResizeConfig, ResizeError, TooLargeError, export_image, target_geometry


def decoded(exported):
    image = Image.open(io.BytesIO(exported.data))
    image.load()
    return image


@pytest.mark.parametrize(
    "mode, size, original, final",
    [
        ("keep_ratio", 100, (400, 200), (200, 100)),
        ("keep_ratio", 100, (150, 300), (100, 200)),
        ("keep_ratio", 100, (100, 300), (100, 300)),  # smaller side already N: untouched size
        ("keep_ratio", 100, (90, 70), (90, 70)),  # never upscaled
        ("center_crop", 100, (400, 200), (100, 100)),
        ("center_crop", 100, (150, 300), (100, 100)),
        ("center_crop", 100, (90, 300), (90, 300)),  # smaller side under N: as img2dataset, untouched
        ("border", 100, (400, 200), (100, 100)),
        ("border", 100, (80, 300), (100, 100)),
        ("border", 100, (90, 70), (90, 70)),  # larger side under N: untouched
    ],
)
def test_geometry_and_real_sizes(mode, size, original, final):
    config = ResizeConfig(size=size, mode=mode)
    assert target_geometry(*original, config)[1] == final
    out = export_image(jpeg(1, original), config)
    assert decoded(out).size == final == (out.width, out.height)
    assert (out.original_width, out.original_height) == original
    assert out.extension == "jpg" and decoded(out).format == "JPEG"


@pytest.mark.parametrize(
    "mode, final", [("keep_ratio", (400, 200)), ("center_crop", (200, 200)), ("border", (200, 200))]
)
def test_upscale_only_when_asked(mode, final):
    small = jpeg(2, (100, 50))
    assert decoded(export_image(small, ResizeConfig(size=200, mode=mode))).size == (100, 50)
    assert decoded(export_image(small, ResizeConfig(size=200, mode=mode, upscale=True))).size == final


def test_border_pads_white_and_keeps_the_picture_centred():
    wide = Image.new("RGB", (400, 200), (255, 0, 0))
    out = decoded(export_image(encode(wide, "PNG"), ResizeConfig(size=100, mode="border", encode_format="png")))
    assert out.size == (100, 100)
    assert out.getpixel((50, 5)) == (255, 255, 255) and out.getpixel((50, 95)) == (255, 255, 255)
    assert out.getpixel((50, 50)) == (255, 0, 0)


def test_no_resize_keeps_the_bytes():
    data = encode(picture(4, (120, 90)), "PNG")
    out = export_image(data, ResizeConfig(), extension="png")
    assert out.data is data and hashlib.sha256(out.data).digest() == hashlib.sha256(data).digest()
    assert (out.width, out.height, out.extension) == (120, 90, "png")


@pytest.mark.parametrize("fmt, pil", [("jpg", "JPEG"), ("webp", "WEBP"), ("png", "PNG")])
def test_encode_formats_and_transparency(fmt, pil):
    rgba = picture(5, (300, 200)).convert("RGBA")
    rgba.putalpha(0)  # fully transparent: white after export
    out = export_image(encode(rgba, "PNG"), ResizeConfig(size=100, mode="keep_ratio", encode_format=fmt))
    image = decoded(out)
    assert image.format == pil and out.extension == fmt and image.mode == "RGB"
    assert min(image.getpixel((75, 50))) >= 250


def test_quality_changes_the_bytes():
    data = jpeg(6, (640, 480))
    low = export_image(data, ResizeConfig(size=200, mode="keep_ratio", encode_quality=20))
    high = export_image(data, ResizeConfig(size=200, mode="keep_ratio", encode_quality=95))
    assert len(low.data) < len(high.data)


@pytest.mark.parametrize("data", [b"not an image", jpeg(7, (300, 200))[:600]])
def test_undecodable_images_raise(data):
    with pytest.raises(ResizeError):
        export_image(data, ResizeConfig(size=100, mode="keep_ratio"))


def test_pixel_limit():
    with pytest.raises(TooLargeError, match="over the limit"):
        export_image(pixel_bomb_png(5000, 5000), ResizeConfig(size=100, mode="keep_ratio", max_pixels=10_000_000))


def test_sides_over_the_encode_format_limit_are_too_large_not_undecodable():
    """A 20000 x 100 panorama at keep_ratio 96 is 19200 x 96: JPEG holds it, WebP (16383) does not."""
    wide = encode(picture(3, (2000, 100)).resize((20000, 100)), "JPEG")
    assert export_image(wide, ResizeConfig(size=96, mode="keep_ratio")).width == 19200
    with pytest.raises(TooLargeError, match="over webp's 16383 pixels a side"):
        export_image(wide, ResizeConfig(size=96, mode="keep_ratio", encode_format="webp"))
    assert export_image(wide, ResizeConfig(size=96, mode="center_crop", encode_format="webp")).width == 96


def test_exported_pictures_stay_under_the_pixel_limit_readers_decode():
    """No exported picture has more pixels than max_pixels (Pillow's DecompressionBombError limit):
    a square mode whose N x N is over it is refused up front, an upscale over it is TooLargeError."""
    with pytest.raises(ValueError, match="over the pixel limit"):
        ResizeConfig(size=14000, mode="border")
    assert ResizeConfig(size=14000, mode="keep_ratio").size == 14000  # its sizes depend on the picture
    with pytest.raises(ValueError, match="at least 14000x14000 pictures, over the pixel limit"):
        ResizeConfig(size=14000, mode="keep_ratio", upscale=True)  # every picture at least N x N
    small = jpeg(2, (300, 200))
    with pytest.raises(TooLargeError, match="18000x12000 exported is over the limit"):
        export_image(small, ResizeConfig(size=12000, mode="keep_ratio", upscale=True))
    assert decoded(export_image(small, ResizeConfig(size=400, mode="keep_ratio", upscale=True))).size == (600, 400)


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"size": None, "mode": "border"}, "needs --resize"),
        ({"size": 0, "mode": "keep_ratio"}, "needs --resize"),
        ({"size": 64, "mode": "no"}, "give no --resize"),
        ({"size": 64, "mode": "stretch"}, "resize mode"),
        ({"size": 64, "mode": "border", "encode_format": "gif"}, "encode format"),
        ({"size": 64, "mode": "border", "encode_format": "png", "encode_quality": 10}, "0-9"),
        ({"size": 64, "mode": "border", "encode_quality": 0}, "1-100"),
    ],
)
def test_bad_settings(kwargs, says):
    with pytest.raises(ValueError, match=says):
        ResizeConfig(**kwargs)


def _upright_with_red_top_left(size=(200, 400)):
    """A grey picture, as displayed, with a red block in its top-left corner."""
    image = Image.new("RGB", size, (128, 128, 128))
    image.paste((255, 0, 0), (0, 0, size[0] // 4, size[1] // 4))
    return image


@pytest.mark.parametrize("mode, final", [("keep_ratio", (96, 192)), ("center_crop", (96, 96)), ("border", (96, 96))])
def test_exif_orientation_is_applied_before_resizing(mode, final):
    """A phone photo stored 400x200 with EXIF Orientation 6 is a 200x400 picture (ingest's width and
    height say so). Re-encoding drops the EXIF, so an export that ignored it gave a sideways image."""
    shown = _upright_with_red_top_left()
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # what Orientation 6 turns back upright
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    out = export_image(data, ResizeConfig(size=96, mode=mode))
    image = decoded(out)
    assert image.size == final == (out.width, out.height)
    assert (out.original_width, out.original_height) == (200, 400)
    if mode == "keep_ratio":
        red, _, blue = image.getpixel((5, 5))
        assert red > 200 and blue < 60, image.getpixel((5, 5))  # the red corner is still top-left


def test_original_bytes_keep_their_orientation_and_tell_both_sizes():
    """No resize: the bytes are untouched, EXIF included; the sizes as stored (what webdataset's
    decode("pil") gives) and as displayed (what the datasets Image feature gives, the table's)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(_upright_with_red_top_left().transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes())
    out = export_image(data, ResizeConfig())
    assert out.data == data and out.orientation == 6
    assert (out.width, out.height) == decoded(out).size == (400, 200)
    assert out.displayed_size == (out.original_width, out.original_height) == (200, 400)
    plain = export_image(jpeg(1, (300, 200)), ResizeConfig())
    assert plain.orientation is None and plain.displayed_size == (300, 200) == (plain.width, plain.height)


def test_16_bit_pixels_are_scaled_to_8_bits_not_clipped():
    """A 16-bit greyscale PNG (a scan, a medical or astronomy image): Pillow's convert("RGB") clips
    at 255, so a 0-65535 gradient came out all white; ingest scales it (image_checks.to_viewable)."""
    gradient = Image.new("I;16", (256, 64))
    gradient.putdata([x * 256 for _ in range(64) for x in range(256)])
    out = export_image(encode(gradient, "PNG"), ResizeConfig(size=32, mode="keep_ratio"))
    image = decoded(out).convert("L")
    assert image.mode == "L" and image.getpixel((1, 16)) < 40 and image.getpixel((126, 16)) > 215

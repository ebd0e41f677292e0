"""Views of a picture computed at hash time (issue 14): each one turns an everyday edit that the
plain pHash misses into a near match, and only where it applies."""

import pytest
from PIL import Image, ImageDraw, ImageOps

from pipelines.demo.sample_site import encode, picture
from transforms.image_checks import VIEWS, inspect_image, picture_views, trim_borders


def hamming(a, b):
    return (int(a, 16) ^ int(b, 16)).bit_count()


def check(image):
    result = inspect_image(encode(image.convert("RGB"), "JPEG", quality=90), views=VIEWS)
    assert result.status == "ok", result.error
    return result


def letterbox(image, ratio=16 / 9):
    w, h = image.size
    canvas = Image.new("RGB", (int(h * ratio), h), (0, 0, 0))
    canvas.paste(image, ((canvas.width - w) // 2, 0))
    return canvas


def banner(image, fraction=0.12):
    image = image.copy()
    draw = ImageDraw.Draw(image)
    top = image.height - int(image.height * fraction)
    draw.rectangle((0, top, image.width, image.height), fill=(20, 20, 20))
    draw.text((6, top + 4), "caption burned in", fill=(255, 255, 255))
    return image


def centre_crop(image, fraction):
    w, h = image.size
    dw, dh = int(w * fraction / 2), int(h * fraction / 2)
    return image.crop((dw, dh, w - dw, h - dh))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_each_view_meets_the_copy_its_edit_makes(seed):
    original = picture(seed, (320, 320))
    o = check(original)
    assert set(o.views) == {"mirror", "crop", "centre"}  # no border: no trim view
    mirrored = check(ImageOps.mirror(original))
    assert hamming(o.phash, mirrored.phash) > 16  # pHash alone misses the mirrored copy...
    assert hamming(o.views["mirror"][0], mirrored.phash) <= 2  # ...its mirror view does not
    boxed = check(letterbox(original))
    assert hamming(o.phash, boxed.phash) > 8
    assert hamming(boxed.views["trim"][0], o.phash) <= 2
    assert hamming(boxed.views["trim"][1], o.dhash) <= 8  # and the trim's dHash confirms
    cropped = check(centre_crop(original, 0.15))
    assert hamming(o.views["crop"][0], cropped.phash) <= 5
    captioned = check(banner(original))
    assert hamming(o.views["centre"][0], captioned.views["centre"][0]) <= 5


def test_views_of_different_pictures_stay_far_apart():
    a, b = check(picture(11, (320, 320))), check(picture(12, (320, 320)))
    assert hamming(a.phash, b.phash) > 8
    for view in ("mirror", "crop"):
        assert hamming(a.views[view][0], b.phash) > 5
        assert hamming(b.views[view][0], a.phash) > 5
    assert hamming(a.views["centre"][0], b.views["centre"][0]) > 5


def test_trim_only_cuts_uniform_borders():
    gray = picture(5, (200, 100)).convert("L")
    assert trim_borders(gray) is None
    padded = ImageOps.expand(gray, border=(30, 0), fill=255)
    trimmed = trim_borders(padded)
    assert trimmed is not None and abs(trimmed.width - 200) <= 2 and trimmed.height == 100
    flat = Image.new("L", (100, 100), 128)
    assert trim_borders(flat) is None  # nothing left: not a border


def test_views_can_be_turned_off_and_unknown_ones_are_refused():
    body = encode(picture(3), "JPEG")
    assert inspect_image(body).views == {}  # none unless asked (the refresh)
    assert set(inspect_image(body, views=("mirror",)).views) == {"mirror"}
    assert inspect_image(body).phash == inspect_image(body, views=VIEWS).phash  # same plain hashes
    with pytest.raises(ValueError, match="unknown picture views"):
        picture_views(picture(3), ("upside_down",))
    assert set(VIEWS) == {"mirror", "trim", "crop", "centre"}


@pytest.mark.parametrize("seed", [21, 22])
def test_views_are_imagehash_bit_for_bit(seed):
    # The views are hashed in one batch, the mirror from the flipped plain thumbnails: the hex
    # strings must stay what imagehash.phash / dhash give on each view's own picture.
    import imagehash

    from transforms.image_checks import centre_crop

    gray = letterbox(picture(seed, (300, 220))).convert("L")
    expected = {
        "mirror": ImageOps.mirror(gray),
        "trim": trim_borders(gray),
        "crop": centre_crop(gray, 0.85),
        "centre": centre_crop(gray, 0.75),
    }
    assert expected["trim"] is not None
    got = picture_views(gray, VIEWS)
    for view, pic in expected.items():
        assert got[view] == (str(imagehash.phash(pic)), str(imagehash.dhash(pic))), view

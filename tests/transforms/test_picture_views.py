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
@pytest.mark.parametrize("size", [(300, 220), (640, 480)])
def test_views_stay_near_imagehash_on_the_view_picture(seed, size):
    # The mirror view flips the plain thumbnails: bit for bit imagehash on the flipped picture. The
    # trim and crop views meet other rows' plain pHashes, often 0 bits away (a letterboxed copy's
    # trim is the original's draft): their pHashes stay imagehash's bit for bit. Their dHashes (9x8
    # from the 32x32) and the centre view (a box reduction first; it meets only other centres) are
    # cheaper and a few bits off (docs/performance.md, 2026-12-02).
    import imagehash

    from transforms.image_checks import centre_crop

    gray = letterbox(picture(seed, size)).convert("L")
    cut = {"trim": trim_borders(gray), "crop": centre_crop(gray, 0.85), "centre": centre_crop(gray, 0.75)}
    assert cut["trim"] is not None
    got = picture_views(gray, VIEWS)
    mirrored = ImageOps.mirror(gray)
    assert got["mirror"] == (str(imagehash.phash(mirrored)), str(imagehash.dhash(mirrored)))
    for view in ("trim", "crop"):
        assert got[view][0] == str(imagehash.phash(cut[view])), view
    for view, pic in cut.items():
        assert hamming(got[view][0], str(imagehash.phash(pic))) <= 4, view
        assert hamming(got[view][1], str(imagehash.dhash(pic))) <= 8, view


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_plain_hashes_are_imagehash_bit_for_bit_with_or_without_views(fmt):
    # The plain pHash / dHash must never change (a --placeholder list is matched exactly; tables
    # written before and after a change meet in pipelines.dedup): they are imagehash's on the
    # picture the guarded decode gives (a JPEG's grey draft at >= 128 px), views or not.
    import io

    import imagehash

    for seed, size in ((31, (160, 120)), (32, (300, 220)), (33, (640, 480)), (34, (480, 900)), (35, (1200, 700))):
        body = encode(picture(seed, size), fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        decoded = Image.open(io.BytesIO(body))
        if fmt == "JPEG":
            decoded.draft("L", (128, 128))
        expected = (str(imagehash.phash(decoded)), str(imagehash.dhash(decoded)))
        for views in ((), VIEWS):
            result = inspect_image(body, views=views)
            assert (result.phash, result.dhash) == expected, (seed, size, views)

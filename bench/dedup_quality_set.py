"""The labelled near-duplicate set of `make bench-dedup-quality`: real photographs, everyday edits.

The photographs are the ones shipped inside the scikit-image and scikit-learn wheels (no
download). Each photo is cut into non-overlapping square tiles; every tile is one picture (a
"group"), and its copies are made by the edits below, each at several strengths. Different tiles
of one photo are the hard negatives: same colours, same texture, same lighting, other picture.

    build_set(directory) -> list of {file, group, edit, kind, strength, photo}

kind is "original", "easy" or "hard". Files are written as JPEG/PNG/WebP as the edit says.
"""

import io
import os

from PIL import Image, ImageDraw, ImageEnhance, ImageOps

TILE = 256
MAX_TILES_PER_PHOTO = 4

# Photographs of real scenes and objects (not synthetic test patterns, not near-blank pages).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
    "cell.png",
    "clock_motion.png",
    "color.png",
    "page.png",
)
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")


def photo_paths():
    """Paths of the bundled photographs that exist in the installed wheels."""
    import skimage
    import sklearn

    found = []
    for root, names in (
        (os.path.join(os.path.dirname(skimage.__file__), "data"), SKIMAGE_PHOTOS),
        (os.path.join(os.path.dirname(sklearn.__file__), "datasets", "images"), SKLEARN_PHOTOS),
    ):
        for name in names:
            path = os.path.join(root, name)
            if os.path.exists(path):
                found.append(path)
    return found


def tiles(path, size=TILE, limit=MAX_TILES_PER_PHOTO):
    """Non-overlapping size x size tiles of one photo, row by row, at most `limit`."""
    photo = Image.open(path).convert("RGB")
    out = []
    for top in range(0, photo.height - size + 1, size):
        for left in range(0, photo.width - size + 1, size):
            if len(out) < limit:
                out.append(photo.crop((left, top, left + size, top + size)))
    return out


def _encode(image, fmt="JPEG", quality=92):
    buf = io.BytesIO()
    image = image.convert("RGB") if fmt == "JPEG" else image
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _crop(image, fraction, anchor="centre"):
    """Remove `fraction` of the width and of the height (centred, or all from the bottom right)."""
    w, h = image.size
    dw, dh = int(round(w * fraction)), int(round(h * fraction))
    if anchor == "centre":
        return image.crop((dw // 2, dh // 2, w - (dw - dw // 2), h - (dh - dh // 2)))
    return image.crop((0, 0, w - dw, h - dh))


def _letterbox(image, ratio, colour):
    """Pad to width:height = ratio with bars of one colour (16:9 -> bars left and right)."""
    w, h = image.size
    if w / h < ratio:
        new = (int(round(h * ratio)), h)
    else:
        new = (w, int(round(w / ratio)))
    canvas = Image.new("RGB", new, colour)
    canvas.paste(image, ((new[0] - w) // 2, (new[1] - h) // 2))
    return canvas


def _watermark(image, fraction):
    """A small opaque box with text in the bottom-right corner."""
    image = image.copy()
    w, h = image.size
    bw, bh = int(w * fraction * 2), int(h * fraction)
    draw = ImageDraw.Draw(image)
    draw.rectangle((w - bw - 4, h - bh - 4, w - 4, h - 4), fill=(255, 255, 255))
    draw.text((w - bw, h - bh - 2), "(c) site", fill=(0, 0, 0))
    return image


def _banner(image, fraction):
    """A caption strip burned over the bottom `fraction` of the picture: dark band, white text."""
    image = image.copy()
    w, h = image.size
    top = h - int(h * fraction)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, top, w, h), fill=(20, 20, 20))
    draw.text((6, top + 4), "A photo you will not believe #42", fill=(255, 255, 255))
    return image


def _rotate(image, degrees):
    return image.rotate(degrees, resample=Image.BICUBIC, fillcolor=(0, 0, 0))


# edit name -> (kind, [(strength label, function image -> (bytes, format))])
def _jpeg(fn, quality=90):
    return lambda im: _encode(fn(im), "JPEG", quality)


EDITS = {
    "reencode": (
        "easy",
        [("q75", _jpeg(lambda im: im, 75)), ("q50", _jpeg(lambda im: im, 50)), ("q25", _jpeg(lambda im: im, 25))],
    ),
    "resize": (
        "easy",
        [
            (f"x{s}", _jpeg(lambda im, s=s: im.resize((int(im.width * s), int(im.height * s)), Image.LANCZOS)))
            for s in (0.75, 0.5, 0.33)
        ],
    ),
    "png_webp": (
        "easy",
        [
            ("png", lambda im: _encode(im, "PNG")),
            ("webp80", lambda im: _encode(im, "WEBP", 80)),
            ("webp40", lambda im: _encode(im, "WEBP", 40)),
        ],
    ),
    "brightness": (
        "easy",
        [(f"x{s}", _jpeg(lambda im, s=s: ImageEnhance.Brightness(im).enhance(s))) for s in (1.15, 1.3, 0.8)],
    ),
    "contrast": ("easy", [(f"x{s}", _jpeg(lambda im, s=s: ImageEnhance.Contrast(im).enhance(s))) for s in (1.3, 0.7)]),
    "grayscale": ("easy", [("L", _jpeg(lambda im: im.convert("L")))]),
    "watermark": ("easy", [(f"{int(s * 100)}%", _jpeg(lambda im, s=s: _watermark(im, s))) for s in (0.06, 0.1)]),
    "crop3": (
        "easy",
        [("centre", _jpeg(lambda im: _crop(im, 0.03))), ("corner", _jpeg(lambda im: _crop(im, 0.03, "corner")))],
    ),
    "squash": (
        "easy",
        [
            (f"w{s}", _jpeg(lambda im, s=s: im.resize((int(im.width * s), im.height), Image.LANCZOS)))
            for s in (0.9, 0.8)
        ],
    ),
    "mirror": (
        "hard",
        [
            ("plain", _jpeg(ImageOps.mirror)),
            ("q50", _jpeg(ImageOps.mirror, 50)),
            ("x0.5", _jpeg(lambda im: ImageOps.mirror(im).resize((im.width // 2, im.height // 2), Image.LANCZOS))),
        ],
    ),
    "crop15": (
        "hard",
        [
            ("centre10", _jpeg(lambda im: _crop(im, 0.10))),
            ("centre15", _jpeg(lambda im: _crop(im, 0.15))),
            ("corner15", _jpeg(lambda im: _crop(im, 0.15, "corner"))),
        ],
    ),
    "letterbox": (
        "hard",
        [
            ("16:9 black", _jpeg(lambda im: _letterbox(im, 16 / 9, (0, 0, 0)))),
            ("4:3 white", _jpeg(lambda im: _letterbox(im, 4 / 3, (255, 255, 255)))),
            ("3:4 black", _jpeg(lambda im: _letterbox(im, 3 / 4, (0, 0, 0)))),
        ],
    ),
    "rotate5": ("hard", [(f"{d}deg", _jpeg(lambda im, d=d: _rotate(im, d))) for d in (3, 5, -5)]),
    "banner": ("hard", [(f"{int(s * 100)}%", _jpeg(lambda im, s=s: _banner(im, s))) for s in (0.12, 0.2)]),
}


def build_set(directory, max_photos=None):
    """Write originals and every edited copy into `directory`; return their labels.

    Args:
        directory: where the image files go (created).
        max_photos: use only the first N photos (tests), None for all.

    Returns:
        A list of dicts: file (name in directory), group (photo:tile), photo, edit, kind
        (original | easy | hard), strength.
    """
    os.makedirs(directory, exist_ok=True)
    items = []
    paths = photo_paths()[:max_photos] if max_photos else photo_paths()
    for path in paths:
        photo = os.path.splitext(os.path.basename(path))[0]
        for t, tile in enumerate(tiles(path)):
            group = f"{photo}:{t}"
            entries = [("original", "original", "", _encode(tile, "JPEG", 92))]
            for edit, (kind, strengths) in EDITS.items():
                for label, fn in strengths:
                    entries.append((edit, kind, label, fn(tile)))
            for edit, kind, label, body in entries:
                ext = {b"\x89P": "png", b"RI": "webp"}.get(body[:2], "jpg")
                name = (
                    f"{photo}-{t}-{edit}-{label}".replace(":", "x")
                    .replace(" ", "_")
                    .replace("%", "pc")
                    .replace(".", "_")
                    + "."
                    + ext
                )
                with open(os.path.join(directory, name), "wb") as f:
                    f.write(body)
                items.append(
                    {"file": name, "group": group, "photo": photo, "edit": edit, "kind": kind, "strength": label}
                )
    return items

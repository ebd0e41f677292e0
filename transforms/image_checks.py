"""Checking one fetched body: image or not, decodable or not, expected hash or not; and its hashes.

The decode is guarded: dimensions are read from the header and checked against a pixel budget
before any pixel is decoded, so a decompression bomb costs a header parse, not gigabytes.

Plain functions, no Beam: `transforms.hash_workers` runs `verify_and_hash` in worker processes
that import this module only, and `transforms.hashing` is the Beam stage around it.

- `verify_and_hash(row)`: a fetched row's sha256, md5, pHash, dHash, views, size, format, status.
- `inspect_image(body)`: the guarded decode and perceptual hashes of one body (`ImageCheck`).
- `picture_views`, `centre_crop`, `trim_borders`, `to_viewable`, `exif_orientation`: its parts.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import imagehash
import numpy
from PIL import Image, UnidentifiedImageError

from transforms import schema

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_VIEWS",
    "VIEWS",
    "ImageCheck",
    "inspect_image",
    "picture_views",
    "centre_crop",
    "trim_borders",
    "hash_hex",
    "verify_and_hash",
    "content_digests",
    "exif_orientation",
    "to_viewable",
    "SWAPS_AXES",
]

DEFAULT_MAX_PIXELS = 100_000_000  # ~ 10000 x 10000; larger is treated as a decompression bomb

# Perceptual hashes look at a 32x32 (pHash) or 9x8 (dHash) thumbnail; JPEG can decode straight to a
# reduced scale (1/2..1/8) that is still at least this big. At >= 128 px, 99 % of pHashes stay
# within 2 bits of a full decode's (bench/README.md), and decode + both hashes cost 1.75 ms an
# image on the bench corpus instead of 2.95 ms at >= 256 px: LANCZOS from a bigger draft is dear.
_DRAFT_SIZE = (128, 128)

# Views of a picture (docs/duplicates.md): extra pHash/dHash pairs computed from the decoded pixels
# of the same decode, so copies that a plain pHash misses can meet. Each is a (phash, dhash) pair
# of 16 hex digits, in the row columns phash_<view> / dhash_<view>, null where the view does not
# apply (trim of a picture without uniform borders).
#   mirror: the picture flipped left-right          (a mirrored copy's plain hashes)
#   trim:   uniform borders cut off                 (letterbox / pillarbox bars, padding)
#   crop:   the centre 85 % of width and height      (a copy cropped by 10-20 %)
#   centre: the centre 75 %                          (compared with other centres: corner
#           watermarks, caption banners, small crops and rotations leave the centre alone)
VIEWS = ("mirror", "trim", "crop", "centre")
DEFAULT_VIEWS = VIEWS
_CROP_KEEP = {"crop": 0.85, "centre": 0.75}
# trim: a border row/column is "uniform" when its grey levels span at most this much (JPEG ringing
# next to a bar stays within it); a trim is kept only if it removes at least _TRIM_MIN of a side
# and keeps at least _TRIM_KEEP of it.
_TRIM_RANGE = 12
_TRIM_MIN = 0.03
_TRIM_KEEP = 0.25
_TRIM_PAIR = 0.02


class ImageCheck:
    """Outcome of inspecting one body."""

    __slots__ = (
        "status",
        "error",
        "format",
        "width",
        "height",
        "phash",
        "dhash",
        "stored_width",
        "stored_height",
        "views",
    )

    def __init__(
        self,
        status: str = schema.OK,
        error: str | None = None,
        fmt: str | None = None,
        width: int | None = None,
        height: int | None = None,
        phash: str | None = None,
        dhash: str | None = None,
        views: dict | None = None,
    ) -> None:
        self.status, self.error, self.format = status, error, fmt
        self.width, self.height, self.phash, self.dhash = width, height, phash, dhash
        # width/height are as displayed (EXIF orientation applied); these are as stored in the file
        self.stored_width, self.stored_height = width, height
        self.views = views or {}  # view name -> (phash hex, dhash hex), see VIEWS


def inspect_image(
    body: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True, views: tuple = ()
) -> ImageCheck:
    """Decode `body` safely and compute its perceptual hashes (and those of `views`, none unless
    asked: the refresh compares plain hashes only), all of the picture a viewer sees (to_viewable).
    Never raises."""
    if not body:
        return ImageCheck(schema.NOT_IMAGE, "empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(body))
    except UnidentifiedImageError:
        kind = _claimed_format(body)
        if kind:  # the signature of an image, but a header PIL cannot read: corrupt, not "not an image"
            return ImageCheck(schema.DECODE_ERROR, f"corrupt {kind} header", fmt=kind)
        return ImageCheck(schema.NOT_IMAGE, f"not a recognised image format (starts {body[:12]!r})")
    except Image.DecompressionBombError as exc:
        return ImageCheck(schema.DECODE_ERROR, f"decompression bomb: {exc}")
    except Exception as exc:  # corrupt headers raise all sorts of things
        return ImageCheck(schema.DECODE_ERROR, f"cannot read image header: {exc}")
    fmt = image.format
    width, height = image.size
    check = ImageCheck(fmt=fmt, width=width, height=height)
    orientation = exif_orientation(image)
    if orientation in SWAPS_AXES:  # a viewer shows it turned a quarter: width and height swap
        check.width, check.height = height, width
    if width <= 0 or height <= 0:
        check.status, check.error = schema.DECODE_ERROR, f"invalid dimensions {width}x{height}"
        return check
    if width * height > max_pixels:
        check.status = schema.DECODE_ERROR
        check.error = f"decompression bomb: {width}x{height} pixels exceeds --max-pixels {max_pixels}"
        return check
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if draft and fmt == "JPEG":
                image.draft("L", _DRAFT_SIZE)  # grayscale straight from the DCT: no colour conversion
            image.load()
            # What a viewer sees: upright, 8 bits, transparency over white. Modes imagehash converts
            # faithfully ("L", "RGB", a plain "P") pass through: converting to "L" here too would
            # copy the pixels twice.
            image = to_viewable(image, orientation)
            # The views are cut from the viewable picture; with views asked for, one conversion to
            # "L" serves the plain hashes and every view.
            if views and image.mode != "L":
                image = image.convert("L")
            plain = _thumbnails(image)
            check.phash, check.dhash = _hashes([plain])[0]
            check.views = picture_views(image, views, plain) if views else {}
    except Exception as exc:  # truncated or corrupt pixel data
        check.status, check.error = schema.DECODE_ERROR, f"cannot decode {fmt} pixels: {exc}"
    return check


# EXIF Orientation tag (0x0112) -> the transpose that shows the picture upright.
_ORIENTATION_TAG = 0x0112
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
SWAPS_AXES = frozenset({5, 6, 7, 8})  # orientations a viewer shows turned a quarter
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_MIN_GREY_LEVELS = 64  # a high-bit picture spanning fewer 8-bit levels than this is stretched to full range


def exif_orientation(image: Image.Image) -> int | None:
    """The EXIF Orientation (1-8) of an opened image, read from its header; None if absent or unreadable.

    Args:
        image: an opened, not necessarily loaded, PIL image.
    Returns:
        1-8, or None.
    """
    try:
        value = image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # a corrupt EXIF block: the picture is still shown as stored
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def to_viewable(image: Image.Image, orientation: int | None = None) -> Image.Image:
    """The picture a viewer sees, ready for hashing: EXIF orientation applied; 16-bit, 32-bit and
    float pixels scaled to 8 bits (not clipped at 255); transparency composited over white; CMYK as
    RGB. An animated image is its first frame (the one PIL opens on).

    Args:
        image: a loaded PIL image (a JPEG may have been draft-decoded).
        orientation: its EXIF orientation (exif_orientation(), read before the load).
    Returns:
        an image in a mode imagehash converts faithfully ("L", "RGB", "P", "1", ...).
    """
    mode = image.mode
    if mode in _HIGH_BIT_MODES:
        image = _to_8_bits(image)
    elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    return image


def _to_8_bits(image):
    """A one-channel high-bit image ("I;16*", "I", "F") -> "L", its nominal range mapped onto 0-255:
    0-65535 for 16-bit pixels (what any 8-bit copy of the file holds); for "I" and "F", 0-1 (float),
    0-255 or 0-65535, whichever holds the values. A picture that would span fewer than
    _MIN_GREY_LEVELS levels that way (12-bit sensor data, a dark scan), or whose values fit no
    nominal range, is stretched from its own min to max instead of being crushed to a blank."""
    values = numpy.asarray(image, dtype=numpy.float64)
    finite = values[numpy.isfinite(values)]
    if finite.size == 0:
        return Image.new("L", image.size, 0)
    low, high = float(finite.min()), float(finite.max())
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F" and low >= 0.0 and high <= 1.0:
        top = 1.0
    elif low >= 0.0 and high <= 255.0:
        top = 255.0
    elif low >= 0.0 and high <= 65535.0:
        top = 65535.0
    else:
        top = None
    if top is not None and (high - low) * 255.0 / top >= _MIN_GREY_LEVELS:
        low, span = 0.0, top
    else:
        span = high - low
    if span <= 0:
        scaled = numpy.zeros_like(values)
    else:
        scaled = (numpy.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) * (255.0 / span)
    return Image.fromarray(numpy.clip(numpy.rint(scaled), 0, 255).astype(numpy.uint8), "L")


def picture_views(
    gray: Image.Image, views: tuple = DEFAULT_VIEWS, plain: tuple | None = None
) -> dict[str, tuple[str, str]]:
    """The (pHash, dHash) of each view of a decoded picture (see VIEWS). The mirror view's are bit
    for bit imagehash.phash / imagehash.dhash of the flipped picture, and so are the trim and crop
    views' pHashes on the cut picture; their dHashes and the centre view's hashes come from cheaper
    thumbnails (_view_thumbnails), a few bits from imagehash's.

    Args:
        gray: the decoded picture, best already in mode "L" (converted otherwise).
        views: names from VIEWS to compute.
        plain: _thumbnails(gray) when the caller has them already (the mirror view reuses them).

    Returns:
        {view: (phash hex, dhash hex)} for the views that apply (no "trim" without borders).
    """
    unknown = set(views) - set(VIEWS)
    if unknown:
        raise ValueError(f"unknown picture views {sorted(unknown)}; known: {', '.join(VIEWS)}")
    if gray.mode != "L":
        gray = gray.convert("L")
    names, thumbnails = [], []
    for view in views:
        if view == "mirror":
            # LANCZOS resampling commutes with a left-right flip (checked bit for bit on the bench
            # corpus, tests/transforms/test_picture_views.py): flipping the plain thumbnails
            # saves the two resizes, the dearest part of a view.
            p32, d98 = plain if plain is not None else _thumbnails(gray)
            thumbs = (p32[:, ::-1], d98[:, ::-1])
        else:
            picture = trim_borders(gray) if view == "trim" else centre_crop(gray, _CROP_KEEP[view])
            if picture is None:
                continue
            thumbs = _view_thumbnails(picture, _CENTRE_REDUCING_GAP if view == "centre" else None)
        names.append(view)
        thumbnails.append(thumbs)
    return dict(zip(names, _hashes(thumbnails), strict=True))


_LANCZOS = Image.Resampling.LANCZOS


def _thumbnails(picture):
    """The grey thumbnails imagehash hashes: 32x32 for pHash, 9x8 for dHash (LANCZOS), as arrays."""
    if picture.mode != "L":
        picture = picture.convert("L")
    return numpy.asarray(picture.resize((32, 32), _LANCZOS)), numpy.asarray(picture.resize((9, 8), _LANCZOS))


# why: a LANCZOS resize costs ~6 multiplications per source pixel whatever the thumbnail's size,
# so each cut view's pair cost as much as the plain pair. The 9x8 dHash thumbnail of a cut view is
# taken from its 32x32 (its dHash only confirms a match within --dhash-max-distance, 16 bits). The
# trim and crop views' 32x32 stay imagehash's bit for bit: they are compared with the plain pHash
# of a copy decoded at the same scale, often 0 bits away (a letterboxed copy's trim view is the
# original's draft), and a box reduction cost them that (6 bits on test_view_duplicates_e2e). The
# centre view meets only other centres, cut and reduced the same way: its 32x32 comes from a box
# reduction to >= 2x (Pillow's reducing_gap). Recall and cost: docs/performance.md (2026-12-02).
_CENTRE_REDUCING_GAP = 2.0


def _view_thumbnails(picture: Image.Image, reducing_gap: float | None = None) -> tuple:
    """The thumbnails of a cut view ("L"), as arrays: 32x32 for pHash (LANCZOS, after a box
    reduction to >= reducing_gap x 32 when one is given), 9x8 for dHash from that 32x32."""
    p32 = picture.resize((32, 32), _LANCZOS, reducing_gap=reducing_gap)
    return numpy.asarray(p32), numpy.asarray(p32.resize((9, 8), _LANCZOS))


def _hashes(thumbnails):
    """[(32x32, 9x8 thumbnails)] -> [(phash hex, dhash hex)]: imagehash.phash's and dhash's arithmetic
    (the same scipy DCT, median and comparisons), on all pictures at once instead of one Python
    call chain per hash."""
    if not thumbnails:
        return []
    # why here: scipy's import is ~0.25 s that the ingest's Beam process, which hashes nothing when
    # hash worker processes do (the default), would pay at every start; the workers load it before
    # they say they are ready (hash_workers.serve)
    import scipy.fftpack

    p32 = numpy.stack([t[0] for t in thumbnails])
    low = scipy.fftpack.dct(scipy.fftpack.dct(p32, axis=1), axis=2)[:, :8, :8].reshape(len(thumbnails), 64)
    ordered = numpy.sort(low, axis=1)
    median = (ordered[:, 31] + ordered[:, 32]) / 2  # numpy.median of 64 values
    phash = numpy.packbits(low > median[:, None], axis=1)
    d98 = numpy.stack([t[1] for t in thumbnails])
    dhash = numpy.packbits((d98[:, :, 1:] > d98[:, :, :-1]).reshape(len(thumbnails), 64), axis=1)
    return [(p.tobytes().hex(), d.tobytes().hex()) for p, d in zip(phash, dhash, strict=True)]


def centre_crop(gray, keep):
    """The centred `keep` fraction of the width and of the height.

    Args:
        gray: a PIL image.
        keep: fraction of each side kept, in (0, 1].

    Returns:
        The cropped PIL image.
    """
    w, h = gray.size
    dw, dh = int(w * (1 - keep) / 2), int(h * (1 - keep) / 2)
    return gray.crop((dw, dh, max(dw + 1, w - dw), max(dh + 1, h - dh)))


def trim_borders(gray):
    """The picture without its uniform border rows and columns (letterbox bars, padding).

    Args:
        gray: a PIL image in mode "L".

    Returns:
        The trimmed PIL image, or None when there is no pair of opposite bars worth trimming
        (together under 3 % of the side) or the trim would keep under a quarter of a side.
    """
    pixels = numpy.asarray(gray, dtype=numpy.int16)
    h, w = pixels.shape
    if h < 8 or w < 8:
        return None
    # Bars come in pairs (_bars): the far side is looked at only when the near one has a bar.
    first = _bar_length(pixels)
    top, bottom = _bars(first, _bar_length(pixels[::-1]) if first else 0, h)
    first = _bar_length(pixels.T)
    left, right = _bars(first, _bar_length(pixels.T[::-1]) if first else 0, w)
    if bottom - top < h * _TRIM_KEEP or right - left < w * _TRIM_KEEP:
        return None
    if h - (bottom - top) < h * _TRIM_MIN and w - (right - left) < w * _TRIM_MIN:
        return None
    return gray.crop((left, top, right, bottom))


def _bars(first, last, size):
    """(start, stop) of the picture between two opposite bars: letterbox bars, pillarbox bars and
    padding come in pairs of about the same width (within 2 % of the side); a one-sided flat band
    is a sky or a wall, part of the picture."""
    if first and last and abs(first - last) <= max(2, _TRIM_PAIR * size):
        return first, size - last
    return 0, size


def _bar_length(lines):
    """How many leading lines (rows of a 2-D array) form one bar: every pixel of them within
    _TRIM_RANGE grey levels of each other, and the first line after them clearly different (on
    average more than _TRIM_RANGE away from the bar's level within 3 lines, JPEG ringing at the
    edge allowed for): a sky's slow gradient is no bar."""
    if int(lines[0].max()) - int(lines[0].min()) > _TRIM_RANGE:
        return 0  # most pictures: the first line is no bar, the rest need not be scanned
    spread = numpy.maximum.accumulate(lines.max(axis=1)) - numpy.minimum.accumulate(lines.min(axis=1))
    over = numpy.flatnonzero(spread > _TRIM_RANGE)
    n = int(over[0]) if len(over) else len(lines)
    if 0 < n < len(lines):
        level = numpy.median(lines[:n])
        if numpy.abs(lines[n : n + 3] - level).mean(axis=1).max() <= _TRIM_RANGE:
            return 0
    return n


def hash_hex(image_hash: imagehash.ImageHash) -> str:
    """str(image_hash) for a hash of a multiple of 8 bits, without imagehash's per-bit string join."""
    return numpy.packbits(image_hash.hash.flatten()).tobytes().hex()


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


def _claimed_format(body):
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if body.startswith(signature):
            return name
    return None


def content_digests(body: bytes) -> dict[str, int | str]:
    """The columns a body gets whatever its pixels: size_bytes, sha256 and md5 (hex)."""
    return {"size_bytes": len(body), "sha256": hashlib.sha256(body).hexdigest(), "md5": hashlib.md5(body).hexdigest()}


def verify_and_hash(
    row: schema.Row, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True, views: tuple = DEFAULT_VIEWS
) -> schema.Row:
    """Fill the content columns of a fetched row and settle its final status."""
    body = row.get("_body")
    if row.get("status") != schema.OK or body is None:
        return row
    row.update(content_digests(body))
    check = inspect_image(body, max_pixels, draft, views)
    row.update(
        format=check.format,
        width=check.width,
        height=check.height,
        stored_width=check.stored_width,
        stored_height=check.stored_height,
        phash=check.phash,
        dhash=check.dhash,
    )
    for view, (phash, dhash) in check.views.items():
        row[f"phash_{view}"], row[f"dhash_{view}"] = phash, dhash
    if check.status == schema.NOT_IMAGE:
        content_type = row.get("content_type") or "no Content-Type"
        return schema.fail(row, schema.NOT_IMAGE, f"{content_type}: {check.error}")
    mismatch = _hash_mismatch(row)
    if mismatch:
        return schema.fail(row, schema.HASH_MISMATCH, mismatch)
    if check.status != schema.OK:
        return schema.fail(row, check.status, check.error)
    return row


def _hash_mismatch(row):
    for name in ("sha256", "md5"):
        expected = row.get(f"expected_{name}")
        if expected and expected != row[name]:
            return f"{name} {row[name]} differs from the published {expected}"
    return None

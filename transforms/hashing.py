"""Verifying fetched bytes: image or not, decodable or not, expected hash or not; and hashing them.

The decode is guarded: dimensions are read from the header and checked against a pixel budget
before any pixel is decoded, so a decompression bomb costs a header parse, not gigabytes.

Public transform: `HashImages(max_pixels)`: fetched rows (`schema.Row` with `_body`) -> the same
rows with sha256, md5, pHash, dHash, size, format and their final status (`HashDoFn` under it).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import warnings

import apache_beam as beam
import imagehash
import numpy
from PIL import Image, UnidentifiedImageError

from transforms import schema
from transforms.bounded_futures import BoundedFuturesDoFn

__all__ = ["DEFAULT_MAX_PIXELS", "ImageCheck", "inspect_image", "hash_hex", "verify_and_hash", "HashDoFn", "HashImages"]

DEFAULT_MAX_PIXELS = 100_000_000  # ~ 10000 x 10000; larger is treated as a decompression bomb

# Perceptual hashes look at a 32x32 (pHash) or 9x8 (dHash) thumbnail; JPEG can decode straight to a
# reduced scale (1/2..1/8) that is still at least this big. At >= 128 px, 99 % of pHashes stay
# within 2 bits of a full decode's (bench/README.md), and decode + both hashes cost 1.75 ms an
# image on the bench corpus instead of 2.95 ms at >= 256 px: LANCZOS from a bigger draft is dear.
_DRAFT_SIZE = (128, 128)


class ImageCheck:
    """Outcome of inspecting one body."""

    __slots__ = ("status", "error", "format", "width", "height", "phash", "dhash")

    def __init__(self, status: str = schema.OK, error: str | None = None, fmt: str | None = None,
                 width: int | None = None, height: int | None = None, phash: str | None = None,
                 dhash: str | None = None) -> None:
        self.status, self.error, self.format = status, error, fmt
        self.width, self.height, self.phash, self.dhash = width, height, phash, dhash


def inspect_image(body: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True) -> ImageCheck:
    """Decode `body` safely and compute its perceptual hashes. Never raises."""
    if not body:
        return ImageCheck(schema.NOT_IMAGE, "empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(body))
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
            # imagehash converts to "L" itself; converting here too would copy the pixels twice.
            check.phash = hash_hex(imagehash.phash(image))
            check.dhash = hash_hex(imagehash.dhash(image))
    except Exception as exc:  # truncated or corrupt pixel data
        check.status, check.error = schema.DECODE_ERROR, f"cannot decode {fmt} pixels: {exc}"
    return check


def hash_hex(image_hash: imagehash.ImageHash) -> str:
    """str(image_hash) for a hash of a multiple of 8 bits, without imagehash's per-bit string join."""
    return numpy.packbits(image_hash.hash.flatten()).tobytes().hex()


_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _claimed_format(body):
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if body.startswith(signature):
            return name
    return None


def verify_and_hash(row: schema.Row, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True) -> schema.Row:
    """Fill the content columns of a fetched row and settle its final status."""
    body = row.get("_body")
    if row.get("status") != schema.OK or body is None:
        return row
    row["size_bytes"] = len(body)
    row["sha256"] = hashlib.sha256(body).hexdigest()
    row["md5"] = hashlib.md5(body).hexdigest()
    check = inspect_image(body, max_pixels, draft)
    row.update(format=check.format, width=check.width, height=check.height,
               phash=check.phash, dhash=check.dhash)
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


class HashDoFn(BoundedFuturesDoFn):
    """Verifies and hashes fetched bodies on a small thread pool.

    Pillow releases the GIL while it decodes and resizes, and hashlib while it digests, so threads
    put every core of the process to work on the bodies while this DoFn's thread moves rows on.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True, threads: int | None = None) -> None:
        super().__init__(max_pending=64)
        self._max_pixels = max_pixels
        self._draft = draft
        self._threads = threads

    def setup(self):
        self._outcomes = {s: beam.metrics.Metrics.counter("verify", s) for s in schema.STATUSES}
        self._pool = concurrent.futures.ThreadPoolExecutor(self._threads or os.cpu_count() or 2,
                                                           thread_name_prefix="hash")

    def process(self, row):
        if row.get("status") != schema.OK or row.get("_body") is None:
            yield row  # nothing fetched: nothing to verify
            return
        yield from self._track(self._pool.submit(verify_and_hash, row, self._max_pixels, self._draft), None)

    def _completed(self, _context, row):
        self._outcomes[row["status"]].inc()
        if row["status"] != schema.OK:
            row["_body"] = None  # only images that pass every check are stored
        return row

    def teardown(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


class HashImages(beam.PTransform):
    """Fetched rows in; rows out with sha256, md5, pHash, dHash, size, format and a final status."""

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = True) -> None:
        super().__init__()
        self._max_pixels = max_pixels
        self._draft = draft

    def expand(self, rows):
        return rows | "VerifyAndHash" >> beam.ParDo(HashDoFn(self._max_pixels, self._draft))

"""Resizing and re-encoding one image for export, with img2dataset's resize modes.

    keep_ratio   the smaller side becomes N, the aspect ratio is kept
    center_crop  the smaller side becomes N, then the centre N x N is cut out
    border       the larger side becomes N, then the picture is padded to N x N (white, as img2dataset)
    no           the original bytes, untouched (their sha256 is the row's)

img2dataset upscales by default; here an image is never upscaled unless `upscale` is set: with the
smaller side (the larger one for `border`) already at or under N the image keeps its size, exactly
as img2dataset does with `resize_only_if_bigger`. Such an image is still re-encoded in the export
format, so one export holds one image format.

JPEG sources are decoded at a reduced scale when the target is at least twice smaller (Pillow's
`draft`, the decoder's DCT scaling): the dominant cost of a resize is the decode, and this is what
makes a resized export faster than decoding full size.
"""

import dataclasses
import io

from PIL import Image

from transforms.image_checks import SWAPS_AXES, exif_orientation, to_viewable

__all__ = [
    "ENCODE_FORMATS",
    "ExportedImage",
    "RESIZE_MODES",
    "ResizeConfig",
    "ResizeError",
    "TooLargeError",
    "export_image",
    "target_geometry",
]

RESIZE_MODES = ("keep_ratio", "center_crop", "border", "no")
ENCODE_FORMATS = ("jpg", "webp", "png")
# Pillow format name and default quality of each export format (img2dataset's defaults for jpg and
# webp; png's "quality" is zlib's compression level, 0-9).
_PIL_FORMAT = {"jpg": "JPEG", "webp": "WEBP", "png": "PNG"}
_DEFAULT_QUALITY = {"jpg": 95, "webp": 95, "png": 6}
_QUALITY_RANGE = {"jpg": (1, 100), "webp": (1, 100), "png": (0, 9)}
BORDER_COLOR = (255, 255, 255)  # img2dataset pads with white
# The longest side each encoder writes (libwebp: 16383; JPEG's header field: 65535 less its MCU
# padding, libjpeg refuses over 65500); PNG's 2**31 - 1 is never met under the pixel limit.
_MAX_SIDE = {"jpg": 65_500, "webp": 16_383, "png": 2**31 - 1}


class ResizeError(ValueError):
    """The image cannot be exported: not decodable, or too large (TooLargeError)."""


class TooLargeError(ResizeError):
    """A picture that decodes but is too large to export: over the pixel limit, or its exported
    sides over what the encode format can hold (a 20000 x 100 panorama in WebP)."""


@dataclasses.dataclass(frozen=True)
class ResizeConfig:
    """How exported images are sized and encoded.

    size: N, the target side in pixels; None with mode "no".
    mode: one of RESIZE_MODES.
    encode_format: jpg, webp or png (ignored with mode "no": the original bytes are kept).
    encode_quality: 1-100 for jpg and webp, the compression level 0-9 for png; None for the default.
    upscale: also enlarge images smaller than N (img2dataset's default; off here).
    max_pixels: larger images are refused as decompression bombs, and no exported image is larger
        (Pillow's own limit: a reader's decode fails over it).
    """

    size: int | None = None
    mode: str = "no"
    encode_format: str = "jpg"
    encode_quality: int | None = None
    upscale: bool = False
    max_pixels: int = 178_956_970

    def __post_init__(self):
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {self.mode!r}")
        if self.encode_format not in ENCODE_FORMATS:
            raise ValueError(f"encode format must be one of {', '.join(ENCODE_FORMATS)}, got {self.encode_format!r}")
        if self.mode == "no" and self.size is not None:
            raise ValueError("--resize-mode no keeps the original bytes: give no --resize N with it")
        if self.mode != "no" and (self.size is None or self.size < 1):
            raise ValueError(f"--resize-mode {self.mode} needs --resize N with N >= 1, got {self.size}")
        # why: every picture bigger than N (every one with --upscale) would come out N x N, more
        # pixels than Pillow, the readers' decoder, opens; keep_ratio with --upscale makes every
        # picture at least N x N (--resize 100000 --upscale: all 27 demo pictures skipped, exit 0)
        squares = self.mode in ("center_crop", "border") or (self.mode == "keep_ratio" and self.upscale)
        if squares and self.size is not None and self.size**2 > self.max_pixels:
            raise ValueError(
                f"--resize {self.size} --resize-mode {self.mode}{' --upscale' if self.upscale else ''} makes"
                f" {'' if self.mode != 'keep_ratio' else 'at least '}{self.size}x{self.size} pictures,"
                f" over the pixel limit of {self.max_pixels} that readers decode"
            )
        low, high = _QUALITY_RANGE[self.encode_format]
        if self.encode_quality is not None and not low <= self.encode_quality <= high:
            raise ValueError(
                f"--encode-quality for {self.encode_format} must be within {low}-{high}, got {self.encode_quality}"
            )

    @property
    def resizes(self) -> bool:
        return self.mode != "no"

    @property
    def quality(self) -> int:
        return _DEFAULT_QUALITY[self.encode_format] if self.encode_quality is None else self.encode_quality


@dataclasses.dataclass(frozen=True)
class ExportedImage:
    """One image as exported: its bytes, file extension and size as stored, the original's size as
    displayed (EXIF orientation applied: the table's width and height), and `orientation`, the EXIF
    orientation left in the bytes (None when re-encoded: the pixels are then upright)."""

    data: bytes
    extension: str
    width: int
    height: int
    original_width: int
    original_height: int
    orientation: int | None = None

    @property
    def displayed_size(self) -> tuple[int, int]:
        """(width, height) once `orientation` is applied, as a reader that applies it decodes."""
        swapped = self.orientation in SWAPS_AXES
        return (self.height, self.width) if swapped else (self.width, self.height)


def _scaled(width: int, height: int, side: int, by_smaller: bool) -> tuple[int, int]:
    """(width, height) scaled so that the smaller (or larger) side is exactly `side`."""
    reference = min(width, height) if by_smaller else max(width, height)
    scale = side / reference
    if (width <= height) == by_smaller:
        return side, max(1, round(height * scale))
    return max(1, round(width * scale)), side


def target_geometry(width: int, height: int, config: ResizeConfig) -> tuple[tuple[int, int] | None, tuple[int, int]]:
    """Where an image of width x height goes under `config`.

    Args:
        width, height: the original size in pixels.
        config: the resize settings.

    Returns:
        (scaled, final): `scaled` is the size the whole picture is resized to (None: not resized),
        `final` the size of the exported image (after the crop or the border).
    """
    n = config.size
    if config.mode == "no":
        return None, (width, height)
    assert n is not None  # ResizeConfig gives every mode but "no" a size
    if config.mode in ("keep_ratio", "center_crop"):
        if min(width, height) <= n and not (config.upscale and min(width, height) < n):
            return None, (width, height)
        scaled = _scaled(width, height, n, by_smaller=True)
        return scaled, scaled if config.mode == "keep_ratio" else (n, n)
    # border
    if max(width, height) <= n and not (config.upscale and max(width, height) < n):
        return None, (width, height)
    return _scaled(width, height, n, by_smaller=False), (n, n)


def export_image(data: bytes, config: ResizeConfig, extension: str = "jpg") -> ExportedImage:
    """The exported form of one image.

    Args:
        data: the original image bytes.
        config: the resize settings.
        extension: the original's file extension, kept with mode "no".

    Returns:
        ExportedImage; with mode "no" `data` itself, unread beyond its header.

    Raises:
        TooLargeError: it has more than config.max_pixels, or its exported sides are over the encode
            format's limit.
        ResizeError: the bytes are not a decodable image.
    """
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > config.max_pixels:
            raise TooLargeError(f"{width}x{height} pixels is over the limit of {config.max_pixels}")
        orientation = exif_orientation(image)
        if not config.resizes:
            # why: the bytes keep their EXIF; readers differ in applying it (the datasets Image
            # feature does, webdataset's decode("pil") does not), so both sizes are told
            shown = (height, width) if orientation in SWAPS_AXES else (width, height)
            return ExportedImage(data, extension, width, height, *shown, orientation=orientation)
        # why: re-encoding drops the EXIF, so its orientation is applied here or the picture is
        # exported sideways; sizes are then as displayed, as the table's width and height are
        if orientation in SWAPS_AXES:
            width, height = height, width
        scaled, final = target_geometry(width, height, config)
        # why: checked before the decode, as the encoder would only fail after it; such a picture
        # is no lost or corrupt blob and is counted apart (too_large)
        if max(final) > _MAX_SIDE[config.encode_format]:
            raise TooLargeError(
                f"{final[0]}x{final[1]} exported is over {config.encode_format}'s"
                f" {_MAX_SIDE[config.encode_format]} pixels a side"
            )
        if final[0] * final[1] > config.max_pixels:  # why: readers' Pillow would refuse to decode it
            raise TooLargeError(f"{final[0]}x{final[1]} exported is over the limit of {config.max_pixels} pixels")
        if scaled is not None and image.format == "JPEG":
            stored = scaled[::-1] if orientation in SWAPS_AXES else scaled
            image.draft("RGB", stored)  # DCT scaling: decodes at 1/2, 1/4 or 1/8 when that is still >= scaled
        image = _to_rgb(image, orientation)
        if scaled is not None:
            image = image.resize(scaled, Image.Resampling.BICUBIC, reducing_gap=3.0)
            image = _crop_or_pad(image, final, config.mode)
        buffer = io.BytesIO()
        image.save(buffer, _PIL_FORMAT[config.encode_format], **_encode_params(config))
    except ResizeError:
        raise
    except Image.DecompressionBombError as exc:  # over Pillow's own limit, raised by open or load
        raise TooLargeError(str(exc)) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ResizeError(f"not a decodable image: {exc}") from exc
    return ExportedImage(buffer.getvalue(), config.encode_format, image.width, image.height, width, height)


def _to_rgb(image: Image.Image, orientation: int | None) -> Image.Image:
    """RGB, upright, as ingest sees it (image_checks.to_viewable): transparent areas on white,
    16-bit pixels scaled to 8 bits rather than clipped to white, CMYK converted."""
    image = to_viewable(image, orientation)
    if image.mode != "RGB":
        image = image.convert("RGB")
    image.load()
    return image


def _crop_or_pad(image: Image.Image, final: tuple[int, int], mode: str) -> Image.Image:
    if image.size == final:
        return image
    width, height = image.size
    if mode == "center_crop":
        left, top = (width - final[0]) // 2, (height - final[1]) // 2
        return image.crop((left, top, left + final[0], top + final[1]))
    canvas = Image.new("RGB", final, BORDER_COLOR)  # border
    canvas.paste(image, ((final[0] - width) // 2, (final[1] - height) // 2))
    return canvas


def _encode_params(config: ResizeConfig) -> dict:
    if config.encode_format == "png":
        return {"compress_level": config.quality}
    if config.encode_format == "webp":
        return {"quality": config.quality, "method": 4}
    return {"quality": config.quality}

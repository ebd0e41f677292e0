"""Where the default thresholds come from: pHash/dHash distances of real photos under the edits
that make web copies differ, vs distances between different photos.

    .venv-bench/bin/python -m bench.calibrate_thresholds      (needs scikit-image + ImageHash,
                                                                installed by `make bench-venv`)

The photos are the ones scikit-image ships in skimage/data (no download). Hashes are
imagehash.phash / imagehash.dhash (64 bits), as ingest computes them. Prints a Markdown table.
"""

import io
import itertools
import os
import statistics

import imagehash
import skimage
from PIL import Image, ImageEnhance, ImageOps

PHOTOS = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "color.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
    "cell.png",
    "horse.png",
    "logo.png",
]


def _jpeg(img, quality):
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _crop(img, fraction):
    w, h = img.size
    dx, dy = int(w * fraction), int(h * fraction)
    return img.crop((dx, dy, w - dx, h - dy))


def _pad(img, fraction):
    w, h = img.size
    return ImageOps.expand(img.convert("RGB"), border=(int(w * fraction), int(h * fraction)), fill=(255, 255, 255))


EDITS = {
    "resize 50%": lambda im: im.resize((im.width // 2, im.height // 2), Image.LANCZOS),
    "thumbnail 128px": lambda im: im.resize((128, max(1, 128 * im.height // im.width))),
    "JPEG q=30": lambda im: _jpeg(im, 30),
    "resize 50% + JPEG q=50": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2)), 50),
    "grayscale": lambda im: im.convert("L"),
    "brightness +20%": lambda im: ImageEnhance.Brightness(im.convert("RGB")).enhance(1.2),
    "crop 3% each side": lambda im: _crop(im, 0.03),
    "crop 6% each side": lambda im: _crop(im, 0.06),
    "crop 10% each side": lambda im: _crop(im, 0.10),
    "white border 5%": lambda im: _pad(im, 0.05),
    "rotate 2 degrees": lambda im: im.convert("RGB").rotate(2, resample=Image.BICUBIC),
    "horizontal flip (not a copy)": lambda im: ImageOps.mirror(im),
}


def _hashes(img):
    return imagehash.phash(img), imagehash.dhash(img)


def main():
    root = os.path.join(os.path.dirname(skimage.__file__), "data")
    originals = {}
    for name in PHOTOS:
        path = os.path.join(root, name)
        if os.path.exists(path):
            originals[name] = Image.open(path).convert("RGB")
    base = {name: _hashes(img) for name, img in originals.items()}
    rows = []
    for edit, fn in EDITS.items():
        pd, dd = [], []
        for name, img in originals.items():
            p, d = _hashes(fn(img))
            pd.append(p - base[name][0])
            dd.append(d - base[name][1])
        rows.append((edit, pd, dd))
    cross_p = [base[a][0] - base[b][0] for a, b in itertools.combinations(base, 2)]
    cross_d = [base[a][1] - base[b][1] for a, b in itertools.combinations(base, 2)]
    print(f"{len(originals)} photos from skimage/data; distances to the unedited photo\n")
    print("| edit | pHash median | pHash max | pHash <= 8 | dHash median | dHash max | dHash max where pHash <= 8 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for edit, pd, dd in rows:
        hit = sum(1 for p in pd if p <= 8)
        confirmed = [d for p, d in zip(pd, dd, strict=False) if p <= 8]
        print(
            f"| {edit} | {statistics.median(pd):g} | {max(pd)} | {hit}/{len(pd)} | "
            f"{statistics.median(dd):g} | {max(dd)} | {max(confirmed) if confirmed else '-'} |"
        )
    both = sum(1 for p, d in zip(cross_p, cross_d, strict=False) if p <= 8 and d <= 16)
    print(
        f"| different photos ({len(cross_p)} pairs) | {statistics.median(cross_p):g} | "
        f"min {min(cross_p)} | {sum(1 for p in cross_p if p <= 8)}/{len(cross_p)} | "
        f"{statistics.median(cross_d):g} | min {min(cross_d)} | - |"
    )
    print(f"\ndifferent-photo pairs within pHash<=8 AND dHash<=16: {both}/{len(cross_p)}")


if __name__ == "__main__":
    main()

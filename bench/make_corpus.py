"""Deterministic corpus of photo-like JPEGs for the side-by-side benchmark.

Writes bench/work/corpus/NNNNN.jpg, a CC3M manifest (TAB, no header, caption then URL), a
header'd copy for img2dataset, and truth.tsv (name, sha256, width, height) so a run's output
can be checked. The same N and seed give the same bytes; an existing complete corpus is reused.

Pictures are built like photos compress: a smooth low-frequency scene (gradient sky, blurred
shapes, cloud texture) plus per-pixel sensor noise of varied strength, saved at web JPEG
qualities, some progressive, some greyscale. A small share are exact copies or resized
re-encodes of earlier pictures, so the pipeline's dedup has real clusters to find.

    python bench/make_corpus.py [--count 3000] [--port 8089] [--workdir bench/work]
"""

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

VERSION = 1  # bump when the generator changes, so an old corpus is rebuilt
DEFAULT_COUNT = 3000
DEFAULT_SEED = 20240608
DEFAULT_PORT = 8089
ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3, 5 / 4)
EXACT_DUP_SHARE = 0.02  # same bytes under another name
NEAR_DUP_SHARE = 0.02  # another picture's pixels, resized and re-encoded

HERE = os.path.dirname(os.path.abspath(__file__))


def _name(i):
    return f"{i:05d}.jpg"


def _geometry(rng):
    # Long side log-uniform over 256..1600 px, like a web crawl's mix of thumbnails and photos.
    long_side = int(round(np.exp(rng.uniform(np.log(256), np.log(1600)))))
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    if aspect >= 1:
        return long_side, max(16, int(round(long_side / aspect)))
    return max(16, int(round(long_side * aspect))), long_side


def _octave_texture(rng, width, height, octaves):
    """1/f-like luminance texture: noise at several scales, upsampled and summed, coarser = stronger."""
    acc = np.zeros((height, width), np.float32)
    for k in range(1, octaves + 1):
        w, h = max(2, width >> k), max(2, height >> k)
        layer = Image.fromarray(rng.normal(0, 3.0 * 1.35**k, (h, w)).astype(np.float32), "F")
        acc += np.asarray(layer.resize((width, height), Image.BICUBIC), np.float32)
    return acc


def _scene(rng, width, height):
    """An RGB scene: gradient, sharp and soft shapes, multi-scale texture."""
    # Shapes are drawn at half size then upscaled: edges stay fairly sharp, like photo edges.
    sw, sh = max(8, width // 2), max(8, height // 2)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, sh, dtype=np.float32)[:, None, None]
    base = (top * (1 - t) + bottom * t) * np.ones((1, sw, 1), np.float32)
    small = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(small)
    for _ in range(int(rng.integers(5, 40))):
        x0, y0 = int(rng.integers(-sw // 4, sw)), int(rng.integers(-sh // 4, sh))
        x1 = x0 + int(rng.integers(sw // 30 + 1, sw // 2 + 2))
        y1 = y0 + int(rng.integers(sh // 30 + 1, sh // 2 + 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(4)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif kind == 2:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 6)))
        else:
            pts = [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(5)]
            draw.polygon(pts, fill=colour)
    small = small.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, 1.5))))
    arr = np.asarray(small.resize((width, height), Image.BICUBIC), np.float32)
    arr += (_octave_texture(rng, width, height, 5) * float(rng.uniform(0.3, 1.5)))[:, :, None]
    return arr


def _render(i, seed):
    """JPEG bytes of picture i (a fresh picture; duplicates are derived in build())."""
    rng = np.random.default_rng([seed, i])
    width, height = _geometry(rng)
    arr = _scene(rng, width, height)
    # Sensor noise: from clean studio shots to grainy phone photos.
    sigma = float(rng.choice([1.0, 2.0, 3.0, 5.0, 8.0], p=[0.2, 0.3, 0.25, 0.15, 0.1]))
    arr += rng.normal(0.0, sigma, (height, width, 1 if rng.random() < 0.5 else 3)).astype(np.float32)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.03:
        img = img.convert("L")
    quality = int(rng.integers(75, 96))
    progressive = bool(rng.random() < 0.15)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, progressive=progressive, optimize=False)
    return buf.getvalue()


def _near_dup(data, rng):
    """The same picture, resized and re-encoded: a near-duplicate for pHash."""
    img = Image.open(io.BytesIO(data))
    scale = float(rng.uniform(0.6, 0.9))
    img = img.resize((max(16, int(img.width * scale)), max(16, int(img.height * scale))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(rng.integers(70, 90)))
    return buf.getvalue()


def _render_to_file(args):
    i, seed, corpus = args
    data = _render(i, seed)
    with open(os.path.join(corpus, _name(i)), "wb") as f:
        f.write(data)
    return i


def _caption(i, rng):
    subjects = (
        "a red ellipse",
        "a street at dusk",
        "two shapes on a gradient",
        "a cloudy sky",
        "an abstract poster",
        "a blurred landscape",
        "a grainy night photo",
        "a still life",
    )
    return f"synthetic photo {i:05d} of {subjects[rng.integers(len(subjects))]}"


def paths(workdir):
    return {
        "corpus": os.path.join(workdir, "corpus"),
        "manifest": os.path.join(workdir, "cc3m.tsv"),
        "manifest_header": os.path.join(workdir, "cc3m_header.tsv"),
        "truth": os.path.join(workdir, "truth.tsv"),
        "stamp": os.path.join(workdir, "corpus.json"),
    }


def _write_manifests(p, port, seed):
    # URLs carry the port, so manifests are rewritten on every call (cheap); images are not.
    cap_rng = np.random.default_rng([seed, 123])
    with open(p["truth"]) as truth, open(p["manifest"], "w") as man, open(p["manifest_header"], "w") as manh:
        next(truth)
        manh.write("caption\turl\n")
        for i, line in enumerate(truth):
            name = line.split("\t", 1)[0]
            row = f"{_caption(i, cap_rng)}\thttp://127.0.0.1:{port}/img/{name}\n"
            man.write(row)
            manh.write(row)


def _plan(count, seed):
    """Which indices are fresh pictures (kind 0) and which copy an earlier one (1 exact, 2 near),
    decided up front; returns (kinds, fresh indices)."""
    plan_rng = np.random.default_rng([seed, 999_999_999])
    kinds = plan_rng.choice(3, size=count, p=[1 - EXACT_DUP_SHARE - NEAR_DUP_SHARE, EXACT_DUP_SHARE, NEAR_DUP_SHARE])
    kinds[: min(count, 10)] = 0  # duplicates need an earlier original
    return kinds, [i for i in range(count) if kinds[i] == 0]


def _source_of(i, seed, fresh):
    """The fresh picture that copy i copies, and the generator its near-duplicate edit goes on with."""
    rng = np.random.default_rng([seed, i, 1])
    src = fresh[int(rng.integers(len(fresh)))]
    while src >= i:
        src = fresh[int(rng.integers(len(fresh)))]
    return src, rng


def duplicate_sources(count=DEFAULT_COUNT, seed=DEFAULT_SEED):
    """{copy's file name: (its source's file name, "exact_dup" or "near_dup")}: the corpus' true
    duplicate pairs, from the same plan as build() (no image is rendered)."""
    kinds, fresh = _plan(count, seed)
    return {
        _name(i): (_name(_source_of(i, seed, fresh)[0]), ("fresh", "exact_dup", "near_dup")[kinds[i]])
        for i in range(count)
        if kinds[i]
    }


def build(count=DEFAULT_COUNT, port=DEFAULT_PORT, workdir=None, seed=DEFAULT_SEED, processes=None):
    """Create (or reuse) the corpus, truth.tsv and the manifests for `port`; returns the paths dict."""
    workdir = workdir or os.path.join(HERE, "work")
    p = paths(workdir)
    want = {"version": VERSION, "count": count, "seed": seed}
    if os.path.exists(p["stamp"]) and os.path.exists(p["truth"]):
        with open(p["stamp"]) as f:
            if json.load(f) == want:
                _write_manifests(p, port, seed)
                return p
    if os.path.exists(p["corpus"]):
        for name in os.listdir(p["corpus"]):
            os.remove(os.path.join(p["corpus"], name))
    os.makedirs(p["corpus"], exist_ok=True)
    kinds, fresh = _plan(count, seed)
    with multiprocessing.Pool(processes or os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_render_to_file, [(i, seed, p["corpus"]) for i in fresh], chunksize=8):
            pass
    for i in range(count):
        if kinds[i] == 0:
            continue
        src, rng = _source_of(i, seed, fresh)
        with open(os.path.join(p["corpus"], _name(src)), "rb") as f:
            data = f.read()
        if kinds[i] == 2:
            data = _near_dup(data, rng)
        with open(os.path.join(p["corpus"], _name(i)), "wb") as f:
            f.write(data)
    with open(p["truth"], "w") as truth:
        truth.write("name\tsha256\twidth\theight\tbytes\tkind\n")
        for i in range(count):
            with open(os.path.join(p["corpus"], _name(i)), "rb") as f:
                data = f.read()
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
            kind = ("fresh", "exact_dup", "near_dup")[kinds[i]]
            truth.write(f"{_name(i)}\t{hashlib.sha256(data).hexdigest()}\t{w}\t{h}\t{len(data)}\t{kind}\n")
    with open(p["stamp"], "w") as f:
        json.dump(want, f)
    _write_manifests(p, port, seed)
    return p


def read_truth(p):
    """{name: {"sha256", "width", "height", "bytes", "kind"}} from truth.tsv."""
    out = {}
    with open(p["truth"]) as f:
        next(f)
        for line in f:
            name, sha, w, h, n, kind = line.rstrip("\n").split("\t")
            out[name] = {"sha256": sha, "width": int(w), "height": int(h), "bytes": int(n), "kind": kind}
    return out


def describe(p):
    """Size figures of the corpus, for the README and the bench header."""
    truth = read_truth(p).values()
    s = np.array([t["bytes"] for t in truth])
    kinds = [t["kind"] for t in truth]
    return {
        "images": len(s),
        "total_mb": round(s.sum() / 1e6, 1),
        "bytes_p10_median_p90_max": [int(np.percentile(s, q)) for q in (10, 50, 90, 100)],
        "mean_megapixels": round(float(np.mean([t["width"] * t["height"] for t in truth])) / 1e6, 3),
        "exact_dups": kinds.count("exact_dup"),
        "near_dups": kinds.count("near_dup"),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=DEFAULT_COUNT)
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--workdir", default=os.path.join(HERE, "work"))
    args = ap.parse_args(argv)
    p = build(args.count, args.port, args.workdir, args.seed)
    print(json.dumps({"manifest": p["manifest"], **describe(p)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())

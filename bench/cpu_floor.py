"""Per-image CPU floor on the benchmark corpus: what decode + hashes cost measured alone.

Every image's bytes are read into memory first, so no I/O, network or framework is timed: only
the per-image work the pipeline cannot avoid. Each stage runs over the whole sample in its own
loop on one core; the two composite floors are also run on 2 processes for a measured 2-core
figure. Run it with the project venv (the same Pillow and imagehash as the pipeline):

    .venv/bin/python bench/cpu_floor.py [--sample 1000] [--json bench/work/cpu_floor.json]

Stages (CPU ms/image and images/s per core, from the process's CPU time so that other load on
a shared machine barely moves them; wall times are in the JSON):
  header          width/height from the JPEG header only (Image.open(...).size, no decode)
  sha256+md5      both digests of the bytes
  decode full     Image.open(...).load(): full-size RGB decode
  decode draft    im.draft("L", (S, S)) then load(): libjpeg DCT-domain downscale (1/2..1/8)
                  straight to greyscale, the smallest scale keeping both sides >= S
  phash/dhash on full   imagehash on the full decode (includes its convert("L") + LANCZOS resize)
  phash/dhash on draft  the same on the draft decode
  FLOOR full      decode full + phash + dhash + sha256 + md5
  FLOOR draft     header + decode draft + phash + dhash + sha256 + md5
  blob write      writing the bytes to a new file on the bench disk (what blob storage costs)
It also reports how often pHash/dHash of a draft decode equal those of the full decode.
"""

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time

import imagehash
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
DRAFT_SIZE = 64  # >= 2x pHash's 32 px input, so its LANCZOS resize still has pixels to filter


def _open(data):
    return Image.open(io.BytesIO(data))


def header(data):
    return _open(data).size


def digests(data):
    return hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


def decode_full(data):
    im = _open(data)
    im.load()
    return im


def decode_draft(data, size=DRAFT_SIZE):
    im = _open(data)
    if im.format == "JPEG":
        im.draft("L", (size, size))
    im.load()
    return im


def floor_full(data):
    im = decode_full(data)
    return im.size, str(imagehash.phash(im)), str(imagehash.dhash(im)), digests(data)


def floor_draft(data):
    size = header(data)
    im = decode_draft(data)
    return size, str(imagehash.phash(im)), str(imagehash.dhash(im)), digests(data)


def _time_loop(fn, items):
    """Seconds for fn over all items, wall and CPU of this process."""
    w0, c0 = time.perf_counter(), time.process_time()
    for x in items:
        fn(x)
    return time.perf_counter() - w0, time.process_time() - c0


_WORKER_DATA = {}


def _init_worker(blobs):
    _WORKER_DATA["blobs"] = blobs  # inherited through fork, not pickled


def _worker_chunk(args):
    name, lo, hi = args
    fn = {"full": floor_full, "draft": floor_draft}[name]
    for data in _WORKER_DATA["blobs"][lo:hi]:
        fn(data)
    return hi - lo


def _two_core(name, blobs, processes=2, tries=3):
    """Measured wall-clock images/s of a composite floor on `processes` worker processes.

    Best of `tries`: other load on the machine can only slow a try down, never speed it up.
    """
    ctx = multiprocessing.get_context("fork")
    n = len(blobs)
    step = max(1, n // (processes * 8))
    chunks = [(name, lo, min(n, lo + step)) for lo in range(0, n, step)]
    with ctx.Pool(processes, initializer=_init_worker, initargs=(blobs,)) as pool:
        pool.map(_worker_chunk, [(name, 0, min(n, processes))] * processes)  # warm up imports
        best = 0.0
        for _ in range(tries):
            t0 = time.perf_counter()
            done = sum(pool.map(_worker_chunk, chunks, chunksize=1))
            best = max(best, done / (time.perf_counter() - t0))
    return best


def load_sample(corpus, sample):
    names = sorted(f for f in os.listdir(corpus) if f.endswith(".jpg"))
    if sample and sample < len(names):
        stride = len(names) / sample
        names = [names[int(i * stride)] for i in range(sample)]
    blobs = []
    for name in names:
        with open(os.path.join(corpus, name), "rb") as f:
            blobs.append(f.read())
    return names, blobs


def agreement(blobs, sizes=(32, 64, 128)):
    """How far draft-decode hashes are from full-decode hashes (Hamming bits)."""
    full = [(imagehash.phash(im), imagehash.dhash(im)) for im in map(decode_full, blobs)]
    out = {}
    for s in sizes:
        dp, dd = [], []
        for (fp, fd), data in zip(full, blobs, strict=False):
            im = decode_draft(data, s)
            dp.append(int(imagehash.phash(im) - fp))
            dd.append(int(imagehash.dhash(im) - fd))
        n = len(blobs)
        out[s] = {
            "phash_identical_pct": round(100 * sum(d == 0 for d in dp) / n, 1),
            "phash_le2_pct": round(100 * sum(d <= 2 for d in dp) / n, 1),
            "phash_mean_bits": round(sum(dp) / n, 2),
            "phash_max_bits": max(dp),
            "dhash_identical_pct": round(100 * sum(d == 0 for d in dd) / n, 1),
            "dhash_mean_bits": round(sum(dd) / n, 2),
            "dhash_max_bits": max(dd),
        }
    return out


def measure(corpus, sample=1000, processes=2, with_agreement=True):
    names, blobs = load_sample(corpus, sample)
    n = len(blobs)
    full_imgs = [decode_full(b) for b in blobs]  # decoded once, for hash-only stages
    draft_imgs = [decode_draft(b) for b in blobs]
    blobdir = tempfile.mkdtemp(prefix="blobs-", dir=os.path.dirname(corpus))

    def write_blob(item):
        i, data = item
        with open(os.path.join(blobdir, f"{i}.jpg"), "wb") as f:
            f.write(data)

    stages = [
        ("header", header, blobs),
        ("sha256+md5", digests, blobs),
        ("decode full", decode_full, blobs),
        (f"decode draft (L, >={DRAFT_SIZE}px)", decode_draft, blobs),
        ("phash on full", imagehash.phash, full_imgs),
        ("dhash on full", imagehash.dhash, full_imgs),
        ("phash on draft", imagehash.phash, draft_imgs),
        ("dhash on draft", imagehash.dhash, draft_imgs),
        ("blob write (no fsync)", write_blob, list(enumerate(blobs))),
        ("FLOOR full: decode full + phash + dhash + sha256 + md5", floor_full, blobs),
        ("FLOOR draft: header + decode draft + phash + dhash + sha256 + md5", floor_draft, blobs),
    ]
    rows = []
    try:
        for label, fn, items in stages:
            wall, cpu = _time_loop(fn, items)
            # Per-core rates come from CPU time: other load on a shared machine stretches the
            # wall clock of a loop but hardly its CPU time.
            rows.append(
                {
                    "stage": label,
                    "wall_ms_per_image": round(1000 * wall / n, 3),
                    "cpu_ms_per_image": round(1000 * cpu / n, 3),
                    "images_per_s_1core": round(n / max(cpu, 1e-9), 1),
                }
            )
    finally:
        shutil.rmtree(blobdir, ignore_errors=True)
    del full_imgs, draft_imgs
    result = {
        "sample_images": n,
        "sample_mb": round(sum(map(len, blobs)) / 1e6, 1),
        "mean_megapixels": round(sum(_open(b).size[0] * _open(b).size[1] for b in blobs) / n / 1e6, 3),
        "pillow": Image.__version__,
        "imagehash": imagehash.__version__,
        "stages": rows,
        "floor_full_images_per_s_2cores_ideal": round(2 * rows[-2]["images_per_s_1core"], 1),
        "floor_draft_images_per_s_2cores_ideal": round(2 * rows[-1]["images_per_s_1core"], 1),
        "floor_full_images_per_s_measured": {f"{processes}cores": round(_two_core("full", blobs, processes), 1)},
        "floor_draft_images_per_s_measured": {f"{processes}cores": round(_two_core("draft", blobs, processes), 1)},
    }
    if with_agreement:
        result["draft_vs_full_hash_agreement"] = agreement(blobs)
    return result


def print_table(r, out=sys.stdout):
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p(
        f"CPU floor on {r['sample_images']} corpus images ({r['sample_mb']} MB, mean {r['mean_megapixels']} MP);"
        f" Pillow {r['pillow']}, imagehash {r['imagehash']}"
    )
    p(f"{'stage':<68}{'CPU ms/img':>11}{'img/s 1 core':>14}{'x2 cores':>10}")
    for row in r["stages"]:
        p(
            f"{row['stage']:<68}{row['cpu_ms_per_image']:>11.3f}{row['images_per_s_1core']:>14.1f}"
            f"{2 * row['images_per_s_1core']:>10.1f}"
        )
    for kind in ("full", "draft"):
        for cores, ips in r[f"floor_{kind}_images_per_s_measured"].items():
            p(f"FLOOR {kind}, measured on {cores} (2 processes, wall clock, best of 3): {ips:.1f} images/s")
    if "draft_vs_full_hash_agreement" in r:
        p("draft-decode hashes vs full-decode hashes (Hamming bits):")
        for s, a in r["draft_vs_full_hash_agreement"].items():
            p(
                f"  draft >= {s:>3} px: pHash identical {a['phash_identical_pct']}%, <=2 bits {a['phash_le2_pct']}%,"
                f" mean {a['phash_mean_bits']}, max {a['phash_max_bits']};"
                f" dHash identical {a['dhash_identical_pct']}%, mean {a['dhash_mean_bits']}, max {a['dhash_max_bits']}"
            )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=os.path.join(HERE, "work", "corpus"))
    ap.add_argument("--sample", type=int, default=1000, help="images, evenly spread over the corpus; 0 = all")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--no-agreement", action="store_true", help="skip the draft-vs-full hash comparison")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.corpus):
        sys.exit(f"no corpus at {args.corpus}: run bench/make_corpus.py first")
    r = measure(args.corpus, args.sample, args.processes, not args.no_agreement)
    print_table(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())

"""imagededup's PHash on the labelled near-duplicate set (runs in .venv-bench, see bench.mk).

    .venv-bench/bin/python -m bench.imagededup_quality --images DIR --result JSON [--thresholds 10,8] [--recursive]

PHash().encode_images(DIR) then find_duplicates(encoding_map=..., max_distance_threshold=t) for
each threshold: imagededup's own hashing (its pHash) and search, on the same files the ingest
fetched. Writes {threshold: [[file_a, file_b], ...]} (each unordered pair once) and the seconds.
"""

import argparse
import json
import time

from bench.imagededup_run import _import_phash


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--thresholds", default="10,8")
    parser.add_argument("--recursive", action="store_true", help="images in subfolders too (img2dataset's files)")
    args = parser.parse_args()
    PHash = _import_phash()  # noqa: N806 (imagededup's class)
    hasher = PHash(verbose=False)
    started = time.time()
    encodings = hasher.encode_images(image_dir=args.images, recursive=args.recursive)
    encode_seconds = time.time() - started
    out = {"encode_seconds": round(encode_seconds, 2), "images": len(encodings), "pairs": {}, "search_seconds": {}}
    for t in (int(x) for x in args.thresholds.split(",")):
        started = time.time()
        found = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=t)
        out["search_seconds"][t] = round(time.time() - started, 2)
        out["pairs"][t] = sorted({tuple(sorted((a, b))) for a, ns in found.items() for b in ns})
    with open(args.result, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()

"""imagededup's hash search on a bench/synth.py hash set (runs in .venv-bench, see bench.mk).

imagededup 0.3.3's package and `imagededup.methods` / `imagededup.utils` __init__ files import
torch, torchvision and matplotlib for its CNN and plotting features, which its hash search never
uses (PyPI's torch wheels are GBs of CUDA libraries). The venv installs imagededup with --no-deps
plus what hashing + search import (numpy, scipy, PyWavelets, Pillow, tqdm, scikit-learn), and
this script registers those two subpackages by path so their __init__ files are skipped.
The code that runs is imagededup's own: PHash().find_duplicates(encoding_map=...,
max_distance_threshold=k) with its default Linux search (brute_force_cython, a Pool over all
cores), on the same pHashes our pipeline gets. It compares pHash only (no dHash confirmation,
no URL/sha256 matching, no clustering): it returns, for every image, its neighbours.
"""

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
import types

import numpy as np


def _import_phash():
    root = os.path.dirname(importlib.util.find_spec("imagededup").origin)
    importlib.import_module("imagededup")
    for sub in ("methods", "utils"):
        module = types.ModuleType("imagededup." + sub)
        module.__path__ = [os.path.join(root, sub)]
        sys.modules["imagededup." + sub] = module
    from imagededup.methods.hashing import PHash

    return PHash


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument("--search-method", default="brute_force_cython")
    args = parser.parse_args()
    with np.load(args.data) as f:
        keys, phash = f["key"].tolist(), f["phash"]
    encodings = {k: f"{int(p):016x}" for k, p in zip(keys, phash.tolist(), strict=False)}
    PHash = _import_phash()  # noqa: N806 (imagededup's class)
    started = time.time()
    found = PHash(verbose=False).find_duplicates(
        encoding_map=encodings, max_distance_threshold=args.max_distance, scores=True, search_method=args.search_method
    )
    wall = time.time() - started
    group = {k: k.split(":")[1] for k in keys}
    planted, recalled, false_pairs, skew_pairs, pairs = {}, {}, 0, 0, 0
    for k, neighbours in found.items():
        g = group[k]
        if g.startswith("p") and k.endswith(":a"):
            d = g[1:].split("-")[0]
            planted[d] = planted.get(d, 0) + 1
            recalled[d] = recalled.get(d, 0) + any(group[n] == g for n, _ in neighbours)
        for n, _ in neighbours:
            if k < n:
                pairs += 1
                if group[n] != g:
                    false_pairs += 1
                elif g in ("skew", "sameurl"):
                    skew_pairs += 1
    with open(args.result, "w") as f:
        json.dump(
            {
                "rows": len(keys),
                "wall_seconds": round(wall, 2),
                "pairs": pairs,
                "false_pairs": false_pairs,
                "single_hash_group_pairs": skew_pairs,
                "planted": planted,
                "recalled": recalled,
                "search_method": args.search_method,
            },
            f,
        )


if __name__ == "__main__":
    main()

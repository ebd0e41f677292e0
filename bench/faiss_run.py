"""faiss's binary multi-hash search on the pHashes of a dedup job's input (the peer of
`bench.bench_dedup_job`).

    python -m bench.faiss_run --data bench/work/hashes-1000000-k8.npz --result out.json

Loads the synthetic hash set (bench/synth.py), keeps the DISTINCT pHashes (identical hashes are
one vertex in our search too; faiss would otherwise report every pair inside the 20,000-row
single-hash group), builds `IndexBinaryMultiHash(64, 3, 21)` with `nflip = 2` (3 bands of 21 bits,
2 flips probed per band: 3 x 3 > 8, the same recall guarantee as our banding) and range-searches
every hash against all of them within Hamming distance <= k. Timed: the search only (the index
build is reported apart). It checks the planted pairs' recall so both tools are held to the same
answer. pHash only: faiss has no dHash confirmation, so its pair count includes chance pairs.
"""

import argparse
import json
import time

import numpy as np

from bench import synth


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="OpenMP threads (0: faiss's default, all cores)")
    args = parser.parse_args(argv)
    import faiss  # the bench extra of setup.py

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    data = synth.load(args.data)
    distinct = np.unique(data["phash"])
    # faiss's binary vectors are bytes; byte order does not matter for Hamming distance.
    codes = distinct.view(np.uint8).reshape(-1, 8)
    started = time.time()
    index = faiss.IndexBinaryMultiHash(64, 3, 21)
    index.nflip = 2
    index.add(codes)
    built = time.time()
    # range_search keeps results with distance < radius
    lims, distances, labels = index.range_search(codes, args.max_distance + 1)
    searched = time.time()
    query = np.repeat(np.arange(len(codes)), np.diff(lims.astype(np.int64)))
    keep = query < labels  # each unordered pair once, no self pairs
    pairs = {
        (int(a), int(b)) for a, b in zip(distinct[query[keep]].tolist(), distinct[labels[keep]].tolist(), strict=False)
    }
    planted = recalled = 0
    keys = data["key"]
    phash = data["phash"]
    for i in range(0, len(keys), 2):  # planted pairs come first, a then b
        group = synth.group_of(str(keys[i]))
        if group[0] not in "pa":
            break
        if group[0] != "p":
            continue
        planted += 1
        a, b = int(phash[i]), int(phash[i + 1])
        recalled += a == b or (min(a, b), max(a, b)) in pairs
    doc = {
        "rows": int(len(keys)),
        "distinct_hashes": int(len(distinct)),
        "build_seconds": round(built - started, 2),
        "search_seconds": round(searched - built, 2),
        "pairs": int(keep.sum()),
        "planted": planted,
        "recalled": recalled,
        "threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
    }
    with open(args.result, "w") as handle:
        json.dump(doc, handle)


if __name__ == "__main__":
    main()

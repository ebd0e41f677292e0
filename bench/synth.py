"""Synthetic hash sets for the dedup benchmark (numpy only: the imagededup venv imports it too).

One set of n rows, deterministic for (n, seed):
  * planted near pairs: `pairs_per_distance` pairs at every pHash distance 0..k (dHash of the
    partner 0..8 bits off), dataset cc3m vs cc12m;            group "p<d>-<i>", expected merged
  * pairs at k+1 and k+2 bits, dHash 9-16 bits off (within the dHash confirmation, too loose
    for the wide rule of issue 14: pHash <= k+2 with dHash <= 8): must NOT merge;
                                                               group "a<d>-<i>"
  * a single-hash group: `skew_rows` rows of one picture at as many URLs (a placeholder);
                                                               group "skew", expected one cluster
  * a same-URL group: `same_url_rows` rows, one URL, one picture (exact, not a placeholder);
                                                               group "sameurl"
  * the rest: unrelated uniformly random 64-bit pHash/dHash;   group "u<i>", expected alone
With views=True (issue 14) every row also gets the picture views' hashes (uniformly random
mirror / crop / centre pHash+dHash, a trim view on 5 % of rows) and, per view, pairs planted
at view distance 0..view_k (row b's plain hashes, or its centre for the centre view, are row a's
view with some bits flipped):                                  group "w<view>_<d>-<i>", expected merged
Keys are "<dataset>:<group>:<member>" so evaluation needs no side table.
"""

import numpy as np

# Bumped whenever generate() changes what it plants: cached data files carry it in their name.
# 2: the above-threshold pairs' dHashes 9-16 bits apart (were equal) since the wide rule.
VERSION = 2

DATASETS = np.array(["cc3m", "cc12m", "openimages", "imagenet_captions", "zero"])


def _flip(values, distance, rng):
    """Each value with `distance` distinct random bits flipped."""
    out = values.copy()
    for i in range(len(values)):
        mask = 0
        for b in rng.choice(64, size=distance, replace=False):
            mask |= 1 << int(b)
        out[i] ^= np.uint64(mask)
    return out


VIEWS = ("mirror", "trim", "crop", "centre")


def generate(n, k=8, pairs_per_distance=500, skew_rows=20000, same_url_rows=5000, seed=1, views=False, view_k=5):
    rng = np.random.default_rng(seed)
    scale = min(1.0, n / 1_000_000)
    ppd = max(20, int(pairs_per_distance * scale))
    skew = max(500, int(skew_rows * scale))
    same = max(100, int(same_url_rows * scale))
    keys, phash, dhash, urls = [], [], [], []

    def rand(m):
        return rng.integers(0, 2**64, size=m, dtype=np.uint64, endpoint=False)

    for d in list(range(0, k + 1)) + [k + 1, k + 2]:
        tag = "p" if d <= k else "a"
        a_p, a_d = rand(ppd), rand(ppd)
        b_p = _flip(a_p, d, rng)
        low, high = (9, 17) if d > k else (0, 9)
        b_d = np.array(
            [_flip(a_d[i : i + 1], int(rng.integers(low, high)), rng)[0] for i in range(ppd)], dtype=np.uint64
        )
        for i in range(ppd):
            group = f"{tag}{d}-{i}"
            keys += [f"cc3m:{group}:a", f"cc12m:{group}:b"]
            urls += [f"http://a{i % 1000}.example/{group}/a.jpg", f"http://b{i % 1000}.example/{group}/b.jpg"]
        phash += [a_p, b_p]
        dhash += [a_d, b_d]
    # interleave a/b order into the flat arrays
    planted_p = np.empty(sum(len(x) for x in phash), dtype=np.uint64)
    planted_d = np.empty_like(planted_p)
    pos = 0
    for j in range(0, len(phash), 2):
        m = len(phash[j])
        planted_p[pos : pos + 2 * m : 2], planted_p[pos + 1 : pos + 2 * m : 2] = phash[j], phash[j + 1]
        planted_d[pos : pos + 2 * m : 2], planted_d[pos + 1 : pos + 2 * m : 2] = dhash[j], dhash[j + 1]
        pos += 2 * m
    skew_p, skew_d = rand(1)[0], rand(1)[0]
    same_p, same_d = rand(1)[0], rand(1)[0]
    keys += [f"{DATASETS[i % 2]}:skew:{i}" for i in range(skew)]
    urls += [f"http://f{i % 97}.example/dead/{i}.jpg" for i in range(skew)]
    keys += [f"{DATASETS[i % 5]}:sameurl:{i}" for i in range(same)]
    urls += ["http://one.example/popular.jpg"] * same
    rest = n - len(keys)
    if rest < 0:
        raise ValueError(f"n={n} is too small for the planted groups ({len(keys)})")
    keys += [f"{DATASETS[i % 5]}:u{i}:0" for i in range(rest)]
    urls += [f"http://u{i % 5000}.example/{i}.jpg" for i in range(rest)]
    all_p = np.concatenate(
        [planted_p, np.full(skew, skew_p, dtype=np.uint64), np.full(same, same_p, dtype=np.uint64), rand(rest)]
    )
    all_d = np.concatenate(
        [planted_d, np.full(skew, skew_d, dtype=np.uint64), np.full(same, same_d, dtype=np.uint64), rand(rest)]
    )
    # a zero dHash means "none" to the pipeline; random ones are never 0 in practice
    all_d[all_d == 0] = 1
    out = {
        "key": np.array(keys),
        "url": np.array(urls),
        "phash": all_p,
        "dhash": all_d,
        "k": k,
        "pairs_per_distance": ppd,
        "skew_rows": skew,
        "same_url_rows": same,
    }
    if views:
        _plant_views(out, rest, view_k, ppd, rng, rand)
    return out


def _plant_views(out, rest, view_k, ppd, rng, rand):
    """Random views for every row; then, among the unrelated rows, view pairs at 0..view_k."""
    n = len(out["key"])
    for view in VIEWS:
        out[f"phash_{view}"], out[f"dhash_{view}"] = rand(n), rand(n) | np.uint64(1)
    trimless = rng.random(n) >= 0.05
    out["phash_trim"][trimless] = 0
    out["dhash_trim"][trimless] = 0
    keys = out["key"].astype(object)
    first = n - rest  # unrelated rows start here; take consecutive (a, b) rows of them
    pos = first
    for view in VIEWS:
        for d in range(view_k + 1):
            for i in range(ppd):
                a, b = pos, pos + 1
                pos += 2
                target = "centre" if view == "centre" else None
                source_p, source_d = out[f"phash_{view}"][a], out[f"dhash_{view}"][a]
                if source_p == 0:
                    source_p = out[f"phash_{view}"][a] = rand(1)[0] | np.uint64(1)
                    source_d = out[f"dhash_{view}"][a] = rand(1)[0] | np.uint64(1)
                flipped = _flip(np.array([source_p], dtype=np.uint64), d, rng)[0]
                if target:
                    out["phash_centre"][b], out["dhash_centre"][b] = flipped, source_d
                else:
                    out["phash"][b], out["dhash"][b] = flipped, source_d
                group = f"w{view}_{d}-{i}"
                keys[a], keys[b] = f"cc3m:{group}:a", f"cc12m:{group}:b"
    out["key"] = np.array(keys.tolist())


def save(path, data):
    np.savez(path, **data)


def load(path):
    with np.load(path, allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def group_of(key):
    return key.split(":")[1]

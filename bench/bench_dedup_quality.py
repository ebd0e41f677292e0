"""`make bench-dedup-quality`: near-duplicate recall and precision on real photographs.

    python -m bench.bench_dedup_quality [--max-photos N] [--no-baseline] [--no-imagededup]

1. The labelled set (bench/dedup_quality_set.py): tiles of the photos inside the scikit-image
   and scikit-learn wheels, copies made by everyday edits at several strengths, different tiles
   of one photo as hard negatives.
2. Served from a loopback web server (pipelines/demo/sample_site.py) and listed in a CC3M and a
   CC12M manifest (originals and copies alternate between them).
3. Run through `python -m pipelines.ingest` with default options (plus --allow-network for
   loopback); with --views none as well (the matching before issue 14), unless --no-baseline.
4. Scored from OUT/images: pairwise recall (original and copy in one cluster) per edit and
   strength, pairwise precision over every pair of rows sharing a cluster, false merges
   (clusters holding two different pictures), and the ingest's wall time.
5. imagededup's PHash.find_duplicates on the same files (bench/imagededup_quality.py in
   .venv-bench), thresholds 10 and 8: its pairs scored the same way (a pair counts as found when
   imagededup lists it; its false merges are the connected components of its pairs that join
   two pictures).

Results: bench/work/dedup-quality/results.json and Markdown tables on stdout.
"""

import argparse
import collections
import itertools
import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow.dataset as ds

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work", "dedup-quality")
BENCH_PY = os.path.join(ROOT, ".venv-bench", "bin", "python")
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def serve(directory, items):
    """Start a loopback server with every file of the set; returns it."""
    from pipelines.demo.sample_site import Reply, SampleWebServer

    routes = {}
    for item in items:
        with open(os.path.join(directory, item["file"]), "rb") as f:
            body = f.read()
        routes["/" + item["file"]] = Reply(200, body, {"Content-Type": CONTENT_TYPES[item["file"].rsplit(".", 1)[1]]})
    web = SampleWebServer(routes)
    web.start()
    return web


def write_manifests(web, items, directory):
    """CC3M (caption TAB url) and CC12M (url TAB caption) manifests, items alternating."""
    cc3m, cc12m = [], []
    for i, item in enumerate(items):
        url, caption = web.url("/" + item["file"]), f"{item['group']} {item['edit']} {item['strength']}"
        (cc3m if i % 2 == 0 else cc12m).append((url, caption))
    paths = {"cc3m": os.path.join(directory, "cc3m.tsv"), "cc12m": os.path.join(directory, "cc12m.tsv")}
    with open(paths["cc3m"], "w") as f:
        f.writelines(f"{c}\t{u}\n" for u, c in cc3m)
    with open(paths["cc12m"], "w") as f:
        f.writelines(f"{u}\t{c}\n" for u, c in cc12m)
    return paths


def run_ingest(manifests, out, extra=()):
    """The ingest with default options; returns wall seconds."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "pipelines.ingest",
        "--manifest",
        f"cc3m={manifests['cc3m']}",
        "--manifest",
        f"cc12m={manifests['cc12m']}",
        "--output",
        out,
        "--allow-network",
        "127.0.0.1/32",
        *extra,
    ]
    started = time.time()
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return time.time() - started


def clusters_of_ingest(out):
    """file name -> cluster id (None: alone), from OUT/images."""
    table = (
        ds.dataset(os.path.join(out, "images"), format="parquet")
        .to_table(columns=["url", "status", "cluster_id"])
        .to_pylist()
    )
    bad = [r for r in table if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"{len(bad)} rows not ok, e.g. {bad[0]}")
    return {r["url"].rsplit("/", 1)[1]: r["cluster_id"] for r in table}


def clusters_of_pairs(files, pairs):
    """Connected components of a pair list: file -> component id (None: alone)."""
    parent = {f: f for f in files}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    roots = collections.Counter(find(f) for f in files)
    return {f: (find(f) if roots[find(f)] > 1 else None) for f in files}


def score(items, cluster_of, pairs=None):
    """Recall per edit (and strength), precision, false merges.

    cluster_of: file -> cluster id or None. pairs: for a pairwise tool, the set of found
    (file, file) pairs, which then decide recall and precision (clusters decide false merges).
    """
    group = {i["file"]: i["group"] for i in items}
    original = {i["group"]: i["file"] for i in items if i["kind"] == "original"}

    def together(a, b):
        if pairs is not None:
            return (min(a, b), max(a, b)) in pairs
        return cluster_of[a] is not None and cluster_of[a] == cluster_of[b]

    per_edit, per_strength, per_kind = {}, {}, {}
    for item in items:
        if item["kind"] == "original":
            continue
        hit = together(original[item["group"]], item["file"])
        for table, key in (
            (per_edit, item["edit"]),
            (per_strength, f"{item['edit']} {item['strength']}"),
            (per_kind, item["kind"]),
        ):
            n, h = table.get(key, (0, 0))
            table[key] = (n + 1, h + hit)
    members = collections.defaultdict(list)
    for f, c in cluster_of.items():
        if c is not None:
            members[c].append(f)
    if pairs is not None:
        judged = list(pairs)
    else:
        judged = [p for m in members.values() for p in itertools.combinations(sorted(m), 2)]
    wrong = sum(1 for a, b in judged if group[a] != group[b])
    false_merges = sum(1 for m in members.values() if len({group[f] for f in m}) > 1)
    ratio = lambda t: {k: round(h / n, 3) for k, (n, h) in sorted(t.items())}  # noqa: E731
    return {
        "recall": ratio(per_kind),
        "recall_by_edit": ratio(per_edit),
        "recall_by_strength": ratio(per_strength),
        "pairs": len(judged),
        "wrong_pairs": wrong,
        "precision": round(1 - wrong / len(judged), 4) if judged else 1.0,
        "false_merges": false_merges,
    }


def summary_views(out):
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    dedup = summary.get("dedup") or summary.get("duplicates") or {}
    return {
        "matches": dedup.get("matches"),
        "view_pairs": dedup.get("view_pairs"),
        "near_pairs": dedup.get("near_pairs"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-photos", type=int, default=None, help="only the first N photos")
    parser.add_argument("--no-baseline", action="store_true", help="skip the --views none run")
    parser.add_argument("--no-imagededup", action="store_true")
    parser.add_argument("--work", default=WORK)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    from bench.dedup_quality_set import build_set

    images = os.path.join(args.work, "images")
    shutil.rmtree(images, ignore_errors=True)
    items = build_set(images, args.max_photos)
    groups = len({i["group"] for i in items})
    print(
        f"{len(items)} images: {groups} pictures (tiles of {len({i['photo'] for i in items})} photos) and their copies",
        flush=True,
    )
    web = serve(images, items)
    results = {"images": len(items), "pictures": groups, "runs": {}}
    try:
        manifests = write_manifests(web, items, args.work)
        runs = [("ours", [])] + ([] if args.no_baseline else [("ours --views none", ["--views", "none"])])
        for name, extra in runs:
            out = os.path.join(args.work, "out-" + name.split()[-1])
            seconds = run_ingest(manifests, out, extra)
            result = score(items, clusters_of_ingest(out))
            result["wall_seconds"] = round(seconds, 1)
            result.update(summary_views(out))
            results["runs"][name] = result
            print(f"{name}: {seconds:.1f} s, recall {result['recall']}", flush=True)
    finally:
        web.stop()
    if not args.no_imagededup:
        if not os.path.exists(BENCH_PY):
            raise SystemExit(f"{BENCH_PY} missing: run `make bench-venv` first")
        result_path = os.path.join(args.work, "imagededup.json")
        subprocess.run(
            [BENCH_PY, "-m", "bench.imagededup_quality", "--images", images, "--result", result_path],
            cwd=ROOT,
            check=True,
        )
        with open(result_path) as f:
            found = json.load(f)
        files = [i["file"] for i in items]
        for t, pairs in found["pairs"].items():
            pairs = {tuple(p) for p in pairs}
            result = score(items, clusters_of_pairs(files, pairs), pairs)
            result["wall_seconds"] = round(found["encode_seconds"] + found["search_seconds"][t], 1)
            results["runs"][f"imagededup PHash t={t}"] = result
    os.makedirs(args.work, exist_ok=True)
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print_tables(results)


def print_tables(results):
    runs = results["runs"]
    names = list(runs)
    print(f"\n{results['images']} images, {results['pictures']} pictures\n")
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for kind in ("easy", "hard"):
        print(f"| recall, {kind} edits | " + " | ".join(f"{runs[n]['recall'].get(kind, 0):.3f}" for n in names) + " |")
    for edit in runs[names[0]]["recall_by_edit"]:
        print(f"| {edit} | " + " | ".join(f"{runs[n]['recall_by_edit'].get(edit, 0):.3f}" for n in names) + " |")
    print("| pairwise precision | " + " | ".join(f"{runs[n]['precision']:.4f}" for n in names) + " |")
    print(
        "| wrong pairs / pairs | " + " | ".join(f"{runs[n]['wrong_pairs']} / {runs[n]['pairs']}" for n in names) + " |"
    )
    print("| false merges | " + " | ".join(str(runs[n]["false_merges"]) for n in names) + " |")
    print("| wall seconds | " + " | ".join(str(runs[n]["wall_seconds"]) for n in names) + " |")
    print("\nby strength:\n")
    print("| edit strength | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for key in runs[names[0]]["recall_by_strength"]:
        print(f"| {key} | " + " | ".join(f"{runs[n]['recall_by_strength'].get(key, 0):.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()

"""End to end against img2dataset + imagededup (issue 16): download, hash and find duplicates.

`run_bench.py --e2e` runs, in the same run as the others, on the same URLs:

  peer  img2dataset 1.47 (its best configuration, `--output_format files`: one JPEG file per image,
        which imagededup reads), then imagededup 0.3.3's `PHash().encode_images(DIR,
        recursive=True)` + `find_duplicates(max_distance_threshold=T)` (bench/imagededup_quality.py
        in .venv-bench, imagededup's default T=10); wall and CPU are the sums of the two steps;
  ours  `python -m pipelines.ingest` as in the plain comparison: its run already stores blobs and
        clusters duplicates (exact by sha256, near by pHash + dHash and the picture views).

Both results are scored against the corpus' own plan (`make_corpus.duplicate_sources`): each
exact copy (same bytes) and near copy (resized, re-encoded) is found when the tool puts it in one
group with its source; a wrongly grouped image is a member of a group that does not belong to the
group's main true picture. imagededup reports pairs; its groups are their connected components.
"""

import collections
import glob
import json
import os
import shutil

import pyarrow.parquet as pq

__all__ = ["score", "groups_of_ours", "groups_of_imagededup", "run_peer_e2e", "duplicate_sources_of"]


def _name_of(url):
    return url.rsplit("/", 1)[-1]


def _components(pairs):
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    return {x: find(x) for x in parent}


def score(group_of, sources):
    """How a tool's groups match the corpus' true duplicates.

    Args:
        group_of: {file name: group id} of the images the tool grouped with another (others absent).
        sources: make_corpus.duplicate_sources(): {copy name: (source name, kind)}.
    Returns:
        {"exact_found", "exact_total", "near_found", "near_total", "wrongly_grouped", "groups"}.
    """
    truth = _components((copy, src) for copy, (src, _kind) in sources.items())
    found = collections.Counter()
    total = collections.Counter()
    for copy, (src, kind) in sources.items():
        total[kind] += 1
        if copy in group_of and group_of.get(copy) == group_of.get(src):
            found[kind] += 1
    members = collections.defaultdict(list)
    for name, group in group_of.items():
        members[group].append(truth.get(name, name))
    wrong = sum(len(m) - max(collections.Counter(m).values()) for m in members.values())
    return {
        "exact_found": found["exact_dup"],
        "exact_total": total["exact_dup"],
        "near_found": found["near_dup"],
        "near_total": total["near_dup"],
        "wrongly_grouped": wrong,
        "groups": len(members),
    }


def groups_of_ours(out):
    """{file name: cluster_id} of the clustered rows in our OUT/images/*.parquet."""
    group_of = {}
    for path in sorted(glob.glob(os.path.join(out, "images", "*.parquet"))):
        for r in pq.read_table(path, columns=["url", "cluster_id"]).to_pylist():
            if r["cluster_id"] is not None:
                group_of[_name_of(r["url"])] = r["cluster_id"]
    return group_of


def groups_of_imagededup(files_dir, pairs):
    """{file name: component} from imagededup's pairs of img2dataset file keys ("00000/000000012.jpg"),
    mapped back to the corpus names through img2dataset's .json sidecars (their "url")."""
    url_of = {}
    for path in glob.glob(os.path.join(files_dir, "*", "*.json")):
        with open(path) as f:
            url = json.load(f).get("url")
        if url:
            key = os.path.relpath(path, files_dir)[: -len(".json")]
            url_of[key] = url
    named = []
    for a, b in pairs:
        ua, ub = url_of.get(os.path.splitext(a)[0]), url_of.get(os.path.splitext(b)[0])
        if ua and ub:
            named.append((_name_of(ua), _name_of(ub)))
    return _components(named)


def run_peer_e2e(args, p, out_root, tag, nginx, sources, measure, peer_command, threshold=10):
    """img2dataset (files) then imagededup on its output; the two steps measured apart and summed.

    Args:
        args: run_bench's arguments (peer_python, bench_python, wait_quiet, workdir, root paths).
        p: make_corpus paths; out_root, tag: where the run writes; nginx: run_bench.Nginx.
        sources: make_corpus.duplicate_sources() of the corpus.
        measure: run_bench.run_measured; peer_command: run_bench.peer_command.
        threshold: imagededup's max_distance_threshold (its default, 10).
    Returns:
        The figures of both steps, their sums and the score.
    """
    out = os.path.join(out_root, tag)
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, **args.offline_env}
    cmd = peer_command(
        args.peer_python, p["manifest_header"], out, args.peer_processes, args.peer_threads, args.peer_shard_size
    )
    cmd[cmd.index("--output_format") + 1] = "files"
    download = measure(cmd, out + ".log", env=env, cwd=args.workdir, nginx=nginx, quiet_wait_s=args.wait_quiet)
    download["images_ok"] = len(glob.glob(os.path.join(out, "*", "*.jpg")))
    download["command"] = " ".join(cmd)
    result = out + "-imagededup.json"
    dedup_cmd = [
        args.bench_python,
        "-m",
        "bench.imagededup_quality",
        "--images",
        out,
        "--result",
        result,
        "--thresholds",
        str(threshold),
        "--recursive",
    ]
    dedup = measure(dedup_cmd, out + "-imagededup.log", cwd=args.bench_root, nginx=nginx, quiet_wait_s=args.wait_quiet)
    dedup["command"] = " ".join(dedup_cmd)
    r = {
        "tool": "img2dataset 1.47 (files) + imagededup 0.3.3 PHash",
        "download": download,
        "dedup": dedup,
        "threshold": threshold,
        "returncode": download["returncode"] or dedup["returncode"],
    }
    for key in ("wall_s", "cpu_s"):
        r[key] = round(download[key] + dedup[key], 2)
    r["other_cpu_pct"] = max(download["other_cpu_pct"], dedup["other_cpu_pct"])
    r["peak_rss_mb"] = max(download["peak_rss_mb"], dedup["peak_rss_mb"])
    r["images_ok"] = download["images_ok"]
    if dedup["returncode"] == 0:
        with open(result) as f:
            found = json.load(f)
        r["imagededup_encode_s"] = found["encode_seconds"]
        r["imagededup_search_s"] = found["search_seconds"][str(threshold)]
        r["score"] = score(groups_of_imagededup(out, found["pairs"][str(threshold)]), sources)
    if not args.keep_output:
        shutil.rmtree(out, ignore_errors=True)
    return r


def duplicate_sources_of(make_corpus, count):
    """make_corpus.duplicate_sources for the corpus of `count` images (the default seed)."""
    return make_corpus.duplicate_sources(count)

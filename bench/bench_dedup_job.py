"""`make bench-dedup-job`: the standalone dedup job (`python -m pipelines.dedup`) against faiss's
binary multi-hash search on the same hashes, side by side in one run.

    python -m bench.bench_dedup_job [--sizes 1000000[,10000000]] [--views] [--job-arg=--direct_num_workers=1]

For each size N: bench/synth.py's hash set (near pairs planted at every distance 0..k, pairs at
k+1/k+2 that must not merge, a single-hash placeholder group, a same-URL group, the rest random)
becomes an ingest output of N rows (`IN1/images/*.parquet`, 20,000-row shards like the ingest's,
every public column, a sha256 per picture, a caption), plus a later ingest `IN2` that re-fetched
the first 2000 unrelated rows (same keys, newer fetched_at): N + 2000 rows in, N rows out, 2000
replaced. Then, one after the other in the same run:

  * ours: `python -m pipelines.dedup --input IN1 --input IN2 --output OUT --max-distance k`
    (the job's defaults otherwise), whole process: wall time and peak RSS of its process tree
    (driver + SDK workers, /proc every 0.2 s, bench/proctree.py);
  * faiss: bench/faiss_run.py, `IndexBinaryMultiHash` on the distinct pHashes, search only (its
    process wall and peak RSS also reported).

The job's output is checked afterwards (not timed): N rows, replaced_rows 2000, recall of the
planted pairs, no above-threshold pair merged, unrelated rows clustered, the single-hash group one
placeholder cluster. Results: bench/work/dedup-job-results.json and a Markdown table.

With --views (issue 16: the view search at scale), the hash set is synth's views=True one (every
row has random mirror / crop / centre pHash+dHash, a trim view on 5 % of rows, and view pairs
planted at view distance 0..5: row b's plain hashes, or its centre view, are row a's view with
bits flipped), the tables carry the phash_<view>/dhash_<view> columns (inputs in
bench/work/dedup-job-N-views), the job matches through them (its default --views), `evaluate`
also counts the planted view pairs found, and faiss is not run (it searches plain pHashes only).
Without --views, nothing changes: the earlier figures stay reproducible.
"""

import argparse
import datetime
import hashlib
import json
import os
import resource
import shutil
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import synth
from bench.proctree import run_sampled
from transforms import schema

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
SHARD_ROWS = 20000
REFETCHED = 2000


def measured(cmd):
    """Run cmd from the repository root; (exit code, wall seconds, peak tree RSS MiB, stderr tail,
    CPU seconds: user+sys of the process and every descendant it reaped)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    returncode, err, peak = run_sampled(cmd, ROOT, env)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return returncode, wall, peak / 2**20, err.decode(errors="replace")[-3000:], cpu


def hash_file(n, k, views=False):
    """The size-n hash set (bench_dedup.data_file's name, so either bench reuses the other's)."""
    os.makedirs(WORK, exist_ok=True)
    path = os.path.join(WORK, f"hashes-{n}-k{k}{'-views' if views else ''}-v{synth.VERSION}.npz")
    if not os.path.exists(path):
        synth.save(path, synth.generate(n, k=k, views=views))
    return path


def _hex_or_null(values):
    """16-digit hex strings, None where the value is 0 (a view the picture lacks)."""
    return [f"{v:016x}" if v else None for v in values.tolist()]


def _table(keys, urls, phash, dhash, day, views=None):
    """One ingest-output table; views: {column: uint64 array} of phash_<view>/dhash_<view>."""
    n = len(keys)
    hexp = [f"{v:016x}" for v in phash.tolist()]
    hexd = [f"{v:016x}" for v in dhash.tolist()]
    columns = {
        "dataset": [k.split(":", 1)[0] for k in keys],
        "key": keys,
        "url": urls,
        "caption": [f"a photo of item {k} seen on a page about something" for k in keys],
        "status": ["ok"] * n,
        "http_status": pa.array(np.full(n, 200, dtype=np.int32)),
        "sha256": [hashlib.sha256((p + d).encode()).hexdigest() for p, d in zip(hexp, hexd, strict=False)],
        "phash": hexp,
        "dhash": hexd,
        "width": pa.array(np.full(n, 640, dtype=np.int32)),
        "height": pa.array(np.full(n, 480, dtype=np.int32)),
        "fetched_at": pa.array(np.full(n, np.datetime64(day, "us")), type=pa.timestamp("us", tz="UTC")),
        "format": ["JPEG"] * n,
        "size_bytes": pa.array(np.full(n, 51234, dtype=np.int64)),
    }
    for name, values in (views or {}).items():
        columns[name] = _hex_or_null(values)
    arrays = [
        pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(n, f.type)
        for f in schema.IMAGE_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=schema.IMAGE_SCHEMA)


def _view_columns(data, rows):
    """{phash_<view>/dhash_<view>: values of `rows`} of a views=True hash set ({} otherwise)."""
    return {name: data[name][rows] for name in sorted(data) if name.startswith(("phash_", "dhash_"))}


def make_inputs(n, k, views=False):
    """(IN1, IN2) ingest outputs of the size-n hash set, made once and reused."""
    root = os.path.join(WORK, f"dedup-job-{n}{'-views' if views else ''}")
    stamp = os.path.join(root, "done")
    in1, in2 = os.path.join(root, "in1"), os.path.join(root, "in2")
    if os.path.exists(stamp):
        return in1, in2
    shutil.rmtree(root, ignore_errors=True)
    data = synth.load(hash_file(n, k, views))
    keys, urls = data["key"].tolist(), data["url"].tolist()
    for folder in (in1, in2):
        os.makedirs(os.path.join(folder, "images"))
    for i, start in enumerate(range(0, n, SHARD_ROWS)):
        stop = min(n, start + SHARD_ROWS)
        pq.write_table(
            _table(
                keys[start:stop],
                urls[start:stop],
                data["phash"][start:stop],
                data["dhash"][start:stop],
                "2024-01-01",
                _view_columns(data, slice(start, stop)),
            ),
            os.path.join(in1, "images", f"part-{i:05d}.parquet"),
        )
    unrelated = [i for i, key in enumerate(keys) if synth.group_of(key).startswith("u")][:REFETCHED]
    pq.write_table(
        _table(
            [keys[i] for i in unrelated],
            [urls[i] for i in unrelated],
            data["phash"][unrelated],
            data["dhash"][unrelated],
            "2024-02-01",
            _view_columns(data, unrelated),
        ),
        os.path.join(in2, "images", "part-00000.parquet"),
    )
    open(stamp, "w").close()
    return in1, in2


def evaluate(out, n):
    """What the job's output says about the planted groups (read after the run, not timed)."""
    table = pq.read_table(os.path.join(out, "images"), columns=["key", "cluster_id", "is_placeholder", "fetched_at"])
    keys = table.column("key").to_pylist()
    cids = table.column("cluster_id").to_pylist()
    flags = table.column("is_placeholder").to_pylist()
    by_key = dict(zip(keys, cids, strict=False))
    planted = recalled = above = above_merged = unrelated_clustered = 0
    skew_ids, skew_flagged = set(), 0
    view_planted: dict[str, int] = {}
    view_recalled: dict[str, int] = {}
    for key, cid, flag in zip(keys, cids, flags, strict=False):
        group = synth.group_of(key)
        if group.startswith("p") and key.endswith(":a"):
            planted += 1
            partner = by_key.get(key.replace("cc3m:", "cc12m:")[:-2] + ":b")
            recalled += cid is not None and cid == partner
        elif group.startswith("w") and key.endswith(":a"):  # a planted view pair: "w<view>_<d>-<i>"
            view = group[1:].split("_")[0]
            partner = by_key.get(key.replace("cc3m:", "cc12m:")[:-2] + ":b")
            view_planted[view] = view_planted.get(view, 0) + 1
            view_recalled[view] = view_recalled.get(view, 0) + (cid is not None and cid == partner)
        elif group.startswith("a") and key.endswith(":a"):
            above += 1
            above_merged += cid is not None
        elif group.startswith("u"):
            unrelated_clustered += cid is not None
        elif group == "skew":
            skew_ids.add(cid)
            skew_flagged += bool(flag)
    newer = datetime.datetime(2024, 2, 1, tzinfo=datetime.timezone.utc)
    with open(os.path.join(out, "summary.json")) as handle:
        summary = json.load(handle)
    views = {}
    if view_planted:
        views = {
            "view_planted_pairs": sum(view_planted.values()),
            "view_recalled_pairs": sum(view_recalled.values()),
            "view_recall_by_view": {v: f"{view_recalled[v]}/{view_planted[v]}" for v in sorted(view_planted)},
            "view_pairs": summary.get("view_pairs"),
        }
    return {
        "rows_out": len(keys),
        "distinct_keys": len(by_key),
        "rows_expected": n,
        "refetched_rows_kept": sum(1 for t in table.column("fetched_at").to_pylist() if t == newer),
        "replaced_rows": summary.get("replaced_rows"),
        "planted_pairs": planted,
        "recalled_pairs": recalled,
        "above_threshold_pairs": above,
        "above_threshold_merged": above_merged,
        "unrelated_rows_clustered": unrelated_clustered,
        "skew_clusters": len(skew_ids),
        "skew_rows_flagged": skew_flagged,
        "near_pairs": summary.get("near_pairs"),
        "clusters": summary.get("clusters"),
        **views,
    }


def run_size(n, k, job_args, threads, views=False):
    in1, in2 = make_inputs(n, k, views)
    out = os.path.join(os.path.dirname(in1), "out")
    shutil.rmtree(out, ignore_errors=True)
    load = round(os.getloadavg()[0], 2)
    code, wall, rss, err, cpu = measured(
        [
            sys.executable,
            "-m",
            "pipelines.dedup",
            "--input",
            in1,
            "--input",
            in2,
            "--output",
            out,
            "--max-distance",
            str(k),
            *job_args,
        ]
    )
    if code:
        raise SystemExit(f"pipelines.dedup at {n} rows failed ({code}):\n{err}")
    ours = {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_mib": round(rss),
        "load_at_start": load,
        "load_at_end": round(os.getloadavg()[0], 2),
        "command_args": job_args,
        **evaluate(out, n),
    }
    shutil.rmtree(out, ignore_errors=True)
    if views:  # faiss searches plain pHashes only: nothing to compare the view search with
        return {"rows": n, "views": True, "ours": ours}
    result = os.path.join(WORK, f"faiss-{n}.json")
    load = round(os.getloadavg()[0], 2)
    code, wall, rss, err, cpu = measured(
        [
            sys.executable,
            "-m",
            "bench.faiss_run",
            "--data",
            hash_file(n, k),
            "--result",
            result,
            "--max-distance",
            str(k),
            "--threads",
            str(threads),
        ]
    )
    if code:
        raise SystemExit(f"faiss at {n} rows failed ({code}):\n{err}")
    with open(result) as handle:
        peer = json.load(handle)
    peer.update(
        process_wall_seconds=round(wall, 1),
        process_cpu_seconds=round(cpu, 1),
        peak_rss_mib=round(rss),
        load_at_start=load,
        load_at_end=round(os.getloadavg()[0], 2),
    )
    return {
        "rows": n,
        "ours": ours,
        "faiss": peer,
        "wall_ratio_vs_faiss_search": round(ours["wall_seconds"] / peer["search_seconds"], 2),
        "rss_ratio_vs_faiss": round(ours["peak_rss_mib"] / max(1, peer["peak_rss_mib"]), 2),
    }


def _markdown(runs):
    lines = [
        "| rows | ours wall s (CPU s) | ours peak RSS MiB | faiss search s (process s) | faiss peak RSS MiB |"
        " wall ours / faiss search | recall ours / faiss | replaced | load |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    if any(r.get("views") for r in runs):
        return _markdown_views(runs)
    for r in runs:
        o, f = r["ours"], r["faiss"]
        lines.append(
            f"| {r['rows']:,} | {o['wall_seconds']} ({o.get('cpu_seconds')}) | {o['peak_rss_mib']} "
            f"| {f['search_seconds']} "
            f"({f['process_wall_seconds']}) | {f['peak_rss_mib']} | x{r['wall_ratio_vs_faiss_search']} | "
            f"{o['recalled_pairs']}/{o['planted_pairs']} / {f['recalled']}/{f['planted']} | "
            f"{o['replaced_rows']} | {o['load_at_start']} / {f['load_at_start']} |"
        )
    return "\n".join(lines)


def _markdown_views(runs):
    lines = [
        "| rows (with views) | ours wall s (CPU s) | ours peak RSS MiB | planted pairs found | view pairs found"
        " | above-threshold merged | unrelated clustered | load |",
        "|---:|---:|---:|---|---|---:|---:|---|",
    ]
    for r in runs:
        o = r["ours"]
        lines.append(
            f"| {r['rows']:,} | {o['wall_seconds']} ({o.get('cpu_seconds')}) | {o['peak_rss_mib']} "
            f"| {o['recalled_pairs']}/{o['planted_pairs']} "
            f"| {o.get('view_recalled_pairs')}/{o.get('view_planted_pairs')} "
            f"| {o['above_threshold_merged']} | {o['unrelated_rows_clustered']} | {o['load_at_start']} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument(
        "--job-arg",
        action="append",
        default=[],
        help="extra argument of pipelines.dedup (repeatable, e.g. --job-arg=--direct_num_workers=1)",
    )
    parser.add_argument(
        "--views",
        action="store_true",
        help="rows with picture views and planted view pairs; the job matches through them (faiss not run)",
    )
    parser.add_argument("--faiss-threads", type=int, default=0)
    parser.add_argument("--results", default=os.path.join(WORK, "dedup-job-results.json"))
    args = parser.parse_args(argv)
    runs = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        runs.append(run_size(n, args.max_distance, args.job_arg, args.faiss_threads, args.views))
        print(json.dumps(runs[-1]), flush=True)
    report = {"cores": os.cpu_count(), "max_distance": args.max_distance, "views": args.views, "runs": runs}
    if len(runs) >= 2:
        a, b = runs[0]["ours"], runs[-1]["ours"]
        report["memory_growth"] = round(b["peak_rss_mib"] / a["peak_rss_mib"], 2)
        report["time_growth"] = round(b["wall_seconds"] / a["wall_seconds"], 2)
    with open(args.results, "w") as handle:
        json.dump(report, handle, indent=2)
    print(_markdown(runs))


if __name__ == "__main__":
    main()

"""`make bench-dedup-job`: the standalone dedup job (`python -m pipelines.dedup`) against faiss's
binary multi-hash search on the same hashes, side by side in one run.

    python -m bench.bench_dedup_job [--sizes 1000000[,10000000]] [--job-arg=--direct_num_workers=1]

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


def hash_file(n, k):
    os.makedirs(WORK, exist_ok=True)
    path = os.path.join(WORK, f"hashes-{n}-k{k}-v{synth.VERSION}.npz")
    if not os.path.exists(path):
        synth.save(path, synth.generate(n, k=k))
    return path


def _table(keys, urls, phash, dhash, day):
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
    arrays = [
        pa.array(columns[f.name], type=f.type) if f.name in columns else pa.nulls(n, f.type)
        for f in schema.IMAGE_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=schema.IMAGE_SCHEMA)


def make_inputs(n, k):
    """(IN1, IN2) ingest outputs of the size-n hash set, made once and reused."""
    root = os.path.join(WORK, f"dedup-job-{n}")
    stamp = os.path.join(root, "done")
    in1, in2 = os.path.join(root, "in1"), os.path.join(root, "in2")
    if os.path.exists(stamp):
        return in1, in2
    shutil.rmtree(root, ignore_errors=True)
    data = synth.load(hash_file(n, k))
    keys, urls = data["key"].tolist(), data["url"].tolist()
    for folder in (in1, in2):
        os.makedirs(os.path.join(folder, "images"))
    for i, start in enumerate(range(0, n, SHARD_ROWS)):
        stop = min(n, start + SHARD_ROWS)
        pq.write_table(
            _table(
                keys[start:stop], urls[start:stop], data["phash"][start:stop], data["dhash"][start:stop], "2024-01-01"
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
    for key, cid, flag in zip(keys, cids, flags, strict=False):
        group = synth.group_of(key)
        if group.startswith("p") and key.endswith(":a"):
            planted += 1
            partner = by_key.get(key.replace("cc3m:", "cc12m:")[:-2] + ":b")
            recalled += cid is not None and cid == partner
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
    }


def run_size(n, k, job_args, threads):
    in1, in2 = make_inputs(n, k)
    out = os.path.join(WORK, f"dedup-job-{n}", "out")
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
    parser.add_argument("--faiss-threads", type=int, default=0)
    parser.add_argument("--results", default=os.path.join(WORK, "dedup-job-results.json"))
    args = parser.parse_args(argv)
    runs = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        runs.append(run_size(n, args.max_distance, args.job_arg, args.faiss_threads))
        print(json.dumps(runs[-1]), flush=True)
    report = {"cores": os.cpu_count(), "max_distance": args.max_distance, "runs": runs}
    if len(runs) >= 2:
        a, b = runs[0]["ours"], runs[-1]["ours"]
        report["memory_growth"] = round(b["peak_rss_mib"] / a["peak_rss_mib"], 2)
        report["time_growth"] = round(b["wall_seconds"] / a["wall_seconds"], 2)
    with open(args.results, "w") as handle:
        json.dump(report, handle, indent=2)
    print(_markdown(runs))


if __name__ == "__main__":
    main()

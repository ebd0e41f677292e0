"""`make bench-dedup`: the Dedup transform on synthetic hashes, and imagededup on the same data.

    python -m bench.bench_dedup [--sizes 100000,300000,1000000] [--imagededup-sizes 10000,20000]

For each size: a synthetic set (bench/synth.py: near pairs planted at every distance 0..k,
pairs at k+1/k+2, a 20K-row single-hash placeholder group, a 5K-row same-URL group, unrelated
random hashes) is run through Dedup on the local runner (pipelines.dedup's default: FnApiRunner,
2 worker processes) in a subprocess. Reported: recall of planted pairs by distance, false matches
(unrelated or above-threshold rows clustered, clusters mixing planted groups), wall time, and
peak RSS of the whole process tree (driver + workers, sampled every 0.2 s from /proc).
At the imagededup sizes the same files also go through imagededup's hash search
(bench/imagededup_run.py in .venv-bench); its O(n^2) time is extrapolated to the largest size.
Results: bench/work/dedup-results.json and a Markdown table on stdout.
"""

import argparse
import json
import math
import os
import sys
import time

from bench import synth
from bench.proctree import run_sampled

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
BENCH_PY = os.path.join(ROOT, ".venv-bench", "bin", "python")


def wait_quiet(limit_seconds, threshold=0.7):
    """Wait (at most limit_seconds) for the 1-minute load average to drop below threshold:
    the machine may be shared, and timings taken under load say little."""
    deadline = time.time() + limit_seconds
    while os.getloadavg()[0] >= threshold and time.time() < deadline:
        time.sleep(5)
    return round(os.getloadavg()[0], 2)


WAIT_QUIET = [0]
LOADS = []  # 1-minute load average when each run started


def measured(cmd):
    """Run cmd; return (exit code, wall seconds, peak RSS of its process tree in MiB)."""
    LOADS.append(wait_quiet(WAIT_QUIET[0]))
    started = time.time()
    returncode, err, peak = run_sampled(cmd, ROOT)
    if returncode:
        sys.stderr.write(err.decode(errors="replace")[-4000:])
    return returncode, time.time() - started, peak / 2**20


def data_file(n, k, views=False):
    os.makedirs(WORK, exist_ok=True)
    path = os.path.join(WORK, f"hashes-{n}-k{k}{'-views' if views else ''}-v{synth.VERSION}.npz")
    if not os.path.exists(path):
        synth.save(path, synth.generate(n, k=k, views=views))
    return path


def run_dedup(n, k, extra=(), views_data=False):
    tag = "".join(extra).replace("-", "_") + ("_viewdata" if views_data else "")
    result = os.path.join(WORK, f"dedup-{n}{tag}.json")
    code, wall, rss = measured(
        [
            sys.executable,
            "-m",
            "bench.dedup_run",
            "--data",
            data_file(n, k, views_data),
            "--result",
            result,
            "--max-distance",
            str(k),
            *extra,
        ]
    )
    if code:
        raise SystemExit(f"dedup run at {n} failed")
    with open(result) as f:
        doc = json.load(f)
    ev = doc["evaluation"]
    ev.setdefault("planted", {})
    ev.setdefault("recalled", {})
    planted = sum(ev["planted"].values()) or 1
    counted = doc.get("counters", {}).get("bench/rows_out")
    if ev.get("rows_out") != n or counted != n:  # the evaluation must see every row, else its figures mean little
        print(
            f"WARNING: {n:,} rows in, the evaluation saw {ev.get('rows_out')} rows out "
            f"(a counter on the rows out: {counted})",
            file=sys.stderr,
        )
    return {
        "rows": n,
        "wall_seconds": round(wall, 1),
        "pipeline_seconds": doc["wall_seconds"],
        "load_at_start": LOADS[-1],
        "load_at_end": round(os.getloadavg()[0], 2),
        "peak_rss_mib": round(rss),
        "rows_out": ev.get("rows_out"),
        "rows_out_counter": doc.get("counters", {}).get("bench/rows_out"),
        "rows_lost": n - (counted if counted is not None else ev.get("rows_out") or 0),
        "counters": doc.get("counters"),
        "planted_pairs": planted,
        "recalled_pairs": sum(ev["recalled"].values()),
        "recall": sum(ev["recalled"].values()) / planted,
        "recall_by_distance": {d: f"{ev['recalled'][d]}/{ev['planted'][d]}" for d in sorted(ev["planted"], key=int)},
        "false_matched_rows": ev.get("false_matched_rows", 0),
        "above_threshold_merged": ev.get("above_threshold_merged", 0),
        "impure_clusters": ev.get("impure_clusters", 0),
        "false_merges": ev.get("false_merges", 0),
        "skew_group": {
            "rows": ev.get("skew_rows"),
            "clusters": ev.get("skew_clusters"),
            "flagged_placeholder": ev.get("skew_placeholder_rows"),
        },
        "same_url_group": {"rows": ev.get("sameurl_rows"), "clusters": ev.get("sameurl_clusters")},
        "near_pairs": doc["stats"]["near_pairs"],
        "clusters": doc["stats"]["clusters"],
        "dhash_confirmation": doc["dhash"],
        "views": doc.get("views"),
        "view_recall_by_view_distance": {
            v: f"{ev.get('view_recalled', {}).get(v, 0)}/{n_}" for v, n_ in sorted(ev.get("view_planted", {}).items())
        },
        "view_pairs": doc["stats"].get("view_pairs"),
    }


def run_imagededup(n, k):
    if not os.path.exists(BENCH_PY):
        return {"rows": n, "skipped": ".venv-bench missing: run `make bench-venv`"}
    result = os.path.join(WORK, f"imagededup-{n}.json")
    code, wall, rss = measured(
        [
            BENCH_PY,
            "-m",
            "bench.imagededup_run",
            "--data",
            data_file(n, k),
            "--result",
            result,
            "--max-distance",
            str(k),
        ]
    )
    if code:
        return {"rows": n, "skipped": "imagededup run failed (stderr above)"}
    with open(result) as f:
        doc = json.load(f)
    planted = sum(doc["planted"].values())
    return {
        "rows": n,
        "search_seconds": doc["wall_seconds"],
        "wall_seconds": round(wall, 1),
        "load_at_start": LOADS[-1],
        "load_at_end": round(os.getloadavg()[0], 2),
        "peak_rss_mib": round(rss),
        "recall": sum(doc["recalled"].values()) / planted,
        "false_pairs": doc["false_pairs"],
        "pairs_reported": doc["pairs"],
        "single_hash_group_pairs": doc["single_hash_group_pairs"],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--imagededup-sizes", default="10000,20000")
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument(
        "--no-dhash-size",
        type=int,
        default=1000000,
        help="also run this size with pHash only, to show what dHash removes (0: skip)",
    )
    parser.add_argument(
        "--views-size",
        type=int,
        default=0,
        help="also run this size on hashes with picture views (issue 14), with the "
        "views matched and with --views none, side by side (0: skip)",
    )
    parser.add_argument("--only-views", action="store_true", help="only the --views-size runs")
    parser.add_argument(
        "--wait-quiet", type=int, default=0, help="before each run wait up to this many seconds for load < 0.7"
    )
    args = parser.parse_args()
    WAIT_QUIET[0] = args.wait_quiet
    k = args.max_distance
    sizes = [int(s) for s in args.sizes.split(",") if s]
    small = [int(s) for s in args.imagededup_sizes.split(",") if s]
    report = {
        "max_distance": k,
        "cores": os.cpu_count(),
        "dedup": [],
        "imagededup": [],
        "dedup_at_imagededup_sizes": [],
    }
    if args.views_size:
        report["views"] = [
            run_dedup(args.views_size, k, ("--views", "none"), views_data=True),
            run_dedup(args.views_size, k, (), views_data=True),
        ]
        for r in report["views"]:
            print(json.dumps(r), flush=True)
        a, b = report["views"]
        report["views_cost"] = {
            "time_ratio": round(b["pipeline_seconds"] / a["pipeline_seconds"], 2),
            "peak_rss_ratio": round(b["peak_rss_mib"] / a["peak_rss_mib"], 2),
        }
        print(json.dumps(report["views_cost"]), flush=True)
    if args.only_views:
        small, sizes, args.no_dhash_size = [], [], 0
    for n in small:
        report["dedup_at_imagededup_sizes"].append(run_dedup(n, k))
        report["imagededup"].append(run_imagededup(n, k))
        print(json.dumps(report["imagededup"][-1]), flush=True)
    for n in sizes:
        report["dedup"].append(run_dedup(n, k))
        print(json.dumps(report["dedup"][-1]), flush=True)
    if args.no_dhash_size:
        report["dedup_phash_only"] = run_dedup(args.no_dhash_size, k, ("--no-dhash",))
    _growth(report)
    with open(os.path.join(WORK, "dedup-results.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(_markdown(report))


def _growth(report):
    runs = report["dedup"]
    if len(runs) >= 2:
        a, b = runs[0], runs[-1]
        report["growth"] = {
            "from_rows": a["rows"],
            "to_rows": b["rows"],
            "time_ratio": round(b["pipeline_seconds"] / a["pipeline_seconds"], 2),
            "exponent": round(
                math.log(b["pipeline_seconds"] / a["pipeline_seconds"]) / math.log(b["rows"] / a["rows"]), 2
            ),
        }
    done = [r for r in report["imagededup"] if "search_seconds" in r]
    if done and runs:
        ref, top = done[-1], runs[-1]
        extrapolated = ref["search_seconds"] * (top["rows"] / ref["rows"]) ** 2
        report["imagededup_extrapolated"] = {
            "rows": top["rows"],
            "seconds": round(extrapolated),
            "from_rows": ref["rows"],
            "model": "O(n^2), from the largest measured size",
            "ratio_vs_dedup": round(extrapolated / top["pipeline_seconds"]),
        }
        same = [r for r in report["dedup_at_imagededup_sizes"] if r["rows"] == ref["rows"]]
        if same:
            report["imagededup_extrapolated"]["ratio_at_measured_size"] = round(
                ref["search_seconds"] / same[0]["pipeline_seconds"], 1
            )


def _markdown(report):
    lines = [
        "| run | rows | recall | false matches | wall s | peak RSS MiB | load |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]

    def lost(r):  # a run that lost rows out: its figures are not comparable (docs/duplicates.md)
        return f" (**{r['rows_lost']:,} rows lost**)" if r.get("rows_lost") else ""

    def false(r):
        return (
            f"{r['false_merges']} false merges ({r['false_matched_rows']} unrelated rows clustered)"
            if r["false_merges"] or r["false_matched_rows"]
            else "0"
        )

    for r in report.get("views", []):
        lines.append(
            f"| Dedup, hashes with views, --views {','.join(r['views']) or 'none'}{lost(r)} | {r['rows']:,} | "
            f"{r['recall']:.0%} | {false(r)} | {r['pipeline_seconds']} | {r['peak_rss_mib']} | "
            f"{r['load_at_start']} |"
        )
    for r in report["dedup_at_imagededup_sizes"] + report["dedup"]:
        lines.append(
            f"| Dedup (Beam, local){lost(r)} | {r['rows']:,} | {r['recall']:.0%} | {false(r)} | "
            f"{r['pipeline_seconds']} | {r['peak_rss_mib']} | {r['load_at_start']} |"
        )
    if "dedup_phash_only" in report:
        r = report["dedup_phash_only"]
        lines.append(
            f"| Dedup, pHash only | {r['rows']:,} | {r['recall']:.0%} | {false(r)} | "
            f"{r['pipeline_seconds']} | {r['peak_rss_mib']} | {r['load_at_start']} |"
        )
    for r in report["imagededup"]:
        if "skipped" in r:
            lines.append(f"| imagededup | {r['rows']:,} | skipped: {r['skipped']} | | | | |")
        else:
            lines.append(
                f"| imagededup brute_force_cython | {r['rows']:,} | {r['recall']:.0%} |"
                f" {r['false_pairs']} pairs | {r['search_seconds']} | "
                f"{r['peak_rss_mib']} | {r['load_at_start']} |"
            )
    if "imagededup_extrapolated" in report:
        e = report["imagededup_extrapolated"]
        lines.append(f"| imagededup (extrapolated, n^2) | {e['rows']:,} | | | ~{e['seconds']:,} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

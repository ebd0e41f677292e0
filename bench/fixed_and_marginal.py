"""What a run costs whatever its size, and what each more image costs: both tools, fitted.

A whole-run ratio at 6000 images mixes two things that scale differently: the fixed cost of a
run (interpreter and framework start-up, graph construction, worker start, the report) and the
cost of each image. On Dataflow at 12M rows only the second is the bill, so this runs
`run_bench.py` (img2dataset and our ingest, same corpus, same block) at several corpus sizes,
alternating sizes within each repetition, and fits `seconds = fixed + per_image x images` by
least squares for CPU (user+sys of each whole process tree) and wall time.

    .venv/bin/python bench/fixed_and_marginal.py [--counts 300,6000,12000] [--repeat 2]
    .venv/bin/python bench/fixed_and_marginal.py --fit bench/work-fit/run-*.json   # refit only

Each size gets its own work directory (bench/work-<count>/, the corpus built once), and every
run_bench result is kept as bench/work-fit/run-<count>-<rep>.json (--results DIR keeps another
set). Run it under the bench lock on a quiet machine (run_bench reports other CPU %); needs the
img2dataset venv of `make bench`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

import numpy

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _first(run):
    return run[0] if isinstance(run, list) else run


def _points(paths):
    """[(images, tool, cpu_s, wall_s, other_cpu_pct)] from run_bench JSON results."""
    points = []
    for path in paths:
        with open(path) as handle:
            result = json.load(handle)
        for tool in ("peer", "ours"):
            run = _first(result[tool])
            ok = run.get("images_ok")
            if run.get("returncode", 0) != 0 or not ok:
                sys.exit(f"{path}: {tool} did not finish cleanly (rc {run.get('returncode')}, ok {ok})")
            points.append((ok, tool, run["cpu_s"], run["wall_s"], run.get("other_cpu_pct", 0.0)))
    return points


def fit(paths):
    """Prints and returns {tool: {cpu|wall: (fixed s, per-image ms)}} and the ratios ours/peer."""
    points = _points(paths)
    sizes = sorted({p[0] for p in points})
    if len(sizes) < 2:
        sys.exit("a fit needs runs at two corpus sizes at least")
    fitted = {}
    for tool in ("peer", "ours"):
        mine = [p for p in points if p[1] == tool]
        images = numpy.array([p[0] for p in mine], float)
        fitted[tool] = {}
        for column, name in ((2, "cpu"), (3, "wall")):
            per_image, fixed = numpy.polyfit(images, numpy.array([p[column] for p in mine]), 1)
            fitted[tool][name] = (round(float(fixed), 2), round(float(per_image) * 1000, 3))
    labels = {"peer": "img2dataset", "ours": "ours"}
    print(f"{len(points) // 2} runs of each tool at {', '.join(map(str, sizes))} images")
    print(f"{'tool':12s} {'CPU fixed s':>12s} {'CPU ms/image':>13s} {'wall fixed s':>13s} {'wall ms/image':>14s}")
    for tool, label in labels.items():
        cpu, wall = fitted[tool]["cpu"], fitted[tool]["wall"]
        print(f"{label:12s} {cpu[0]:12.1f} {cpu[1]:13.2f} {wall[0]:13.1f} {wall[1]:14.2f}")
    ratios = {
        "cpu_per_image": round(fitted["ours"]["cpu"][1] / fitted["peer"]["cpu"][1], 3),
        "speed_per_image": round(fitted["peer"]["wall"][1] / fitted["ours"]["wall"][1], 3),
    }
    print(
        f"per image, ours/img2dataset: CPU x{ratios['cpu_per_image']:.2f}, speed x{ratios['speed_per_image']:.2f}"
        f" (issue 16 goals: CPU <= x0.7, speed >= x1.3); busiest run: other CPU {max(p[4] for p in points):.1f} %"
    )
    return {"fitted": fitted, "ratios": ratios, "points": points}


def measure(counts, repeat, extra, out_dir):
    """Runs run_bench.py at each count, `repeat` times, sizes alternated; returns the JSON paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for rep in range(1, repeat + 1):
        for count in counts:
            path = os.path.join(out_dir, f"run-{count}-{rep}.json")
            command = [
                sys.executable,
                os.path.join(HERE, "run_bench.py"),
                "--count",
                str(count),
                "--workdir",
                os.path.join(HERE, f"work-{count}"),
                "--skip-floor",
                "--skip-probe",
                "--json",
                path,
                *extra,
            ]
            print("+", " ".join(command), flush=True)
            subprocess.run(command, cwd=ROOT, check=True)
            paths.append(path)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="300,6000,12000", help="corpus sizes, comma-separated")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--fit", nargs="+", metavar="JSON", help="fit these run_bench results; run nothing")
    ap.add_argument("--json", help="write the fit here too")
    ap.add_argument("--results", default=os.path.join(HERE, "work-fit"), help="where run_bench results are kept")
    args, extra = ap.parse_known_args(argv)  # anything else goes to run_bench.py
    paths = args.fit or measure([int(c) for c in args.counts.split(",")], args.repeat, extra, args.results)
    result = fit(sorted(p for pattern in paths for p in glob.glob(pattern)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()

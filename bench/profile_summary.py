"""Summarize a py-spy raw (collapsed stacks) profile: where the CPU of a run went.

    .venv/bin/python bench/run_bench.py --skip-peer --profile     # writes bench/work/profile-ours-0.txt
    .venv/bin/python bench/profile_summary.py bench/work/profile-ours-0.txt [--top 25]

Prints, as % of all samples (py-spy samples running threads only, so ~CPU time):
  - by process (the Beam launcher vs its SDK workers, ...);
  - by the deepest frame in the project's own code (transforms/, pipelines/): which stage costs;
  - by leaf function (self time): which library call the CPU actually sits in.
"""

import argparse
import collections
import re
import sys

PROJECT = re.compile(r"\((?:.*/)?(transforms|pipelines)/[^)]*\)")
PROCESS = re.compile(r'^process \d+:"(.*)"$')


def parse(path):
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                yield stack.split(";"), int(count)


def summarize(path, top=20):
    by_proc, by_project, by_leaf = collections.Counter(), collections.Counter(), collections.Counter()
    total = 0
    for frames, n in parse(path):
        total += n
        procs = [m.group(1) for m in map(PROCESS.match, frames) if m]
        code = [f for f in frames if not PROCESS.match(f)]
        by_proc[(procs[-1] if procs else "?")[:100] or "(launcher)"] += n
        owned = [f for f in code if PROJECT.search(f)]
        by_project[owned[-1] if owned else "(outside project code: Beam, runner, threads)"] += n
        by_leaf[code[-1] if code else "?"] += n
    return total, by_proc, by_project, by_leaf


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args(argv)
    total, by_proc, by_project, by_leaf = summarize(args.profile, args.top)
    if not total:
        sys.exit("no samples")
    for title, counter in (
        ("by process", by_proc),
        ("by deepest project frame", by_project),
        ("by leaf function (self)", by_leaf),
    ):
        print(f"\n{title} ({total} samples)")
        for key, n in counter.most_common(args.top):
            print(f"  {100 * n / total:5.1f}%  {key}")


if __name__ == "__main__":
    sys.exit(main())

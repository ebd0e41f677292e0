"""What the integrity checks cost: this tree against a peer tree (e.g. the commit before them).

    .venv/bin/python bench/bench_integrity.py --peer /tmp/base [--rows 400] [--lines 300000] [--repeat 3]

1. Reading a .gz manifest: transforms.io.readers.open_stream of each tree (the peer's goes through
   Beam's CompressedFile, this one's through CheckedDecompressor), `--lines` CC3M lines, counted.
2. A whole ingest of `--rows` JPEG URLs served on loopback, each tree's `python -m pipelines.ingest`
   in turn (lease, stale sweep, books included in this one).
Runs alternate between the trees; medians and the ratio this/peer are printed as JSON.
"""

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

READ_SNIPPET = """
import sys, time
from transforms.io.readers import open_stream
start = time.perf_counter()
n = 0
with open_stream(sys.argv[1]) as stream:
    for _ in stream:
        n += 1
print(n, time.perf_counter() - start)
"""


def _python(tree, args, **kwargs):
    env = dict(os.environ, PYTHONPATH=tree)
    return subprocess.run(
        [sys.executable, *args], cwd=tree, env=env, capture_output=True, text=True, check=True, **kwargs
    )


def bench_read(trees, path, repeat):
    times = {name: [] for name in trees}
    for _ in range(repeat):
        for name, tree in trees.items():
            lines, seconds = _python(tree, ["-c", READ_SNIPPET, path]).stdout.split()
            times[name].append(float(seconds))
    return {
        name: {"lines": int(lines), "median_s": round(statistics.median(t), 3), "runs": t} for name, t in times.items()
    }


def bench_ingest(trees, manifest, workdir, repeat):
    times = {name: [] for name in trees}
    for i in range(repeat):
        for name, tree in trees.items():
            out = os.path.join(workdir, f"{name}-{i}")
            start = time.perf_counter()
            _python(
                tree,
                [
                    "-m",
                    "pipelines.ingest",
                    "--manifest",
                    f"cc3m={manifest}",
                    "--output",
                    out,
                    "--allow-network",
                    "127.0.0.1/32",
                    "--no-progress",
                    "--no-report",
                ],
            )
            times[name].append(round(time.perf_counter() - start, 2))
    return {name: {"median_s": statistics.median(t), "runs": t} for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", required=True, help="the other source tree (e.g. `git archive` of a commit)")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    from pipelines.demo.sample_site import Reply, SampleWebServer, jpeg  # noqa: PLC0415

    trees = {"this": HERE, "peer": os.path.abspath(args.peer)}
    with tempfile.TemporaryDirectory(prefix="bench-integrity-") as workdir:
        big = os.path.join(workdir, "cc3m.tsv.gz")
        with gzip.open(big, "wt", compresslevel=6) as handle:
            for n in range(args.lines):
                handle.write(f"a photo of thing number {n} on a table\thttp://img{n % 97}.example/{n}.jpg\n")
        read = bench_read(trees, big, args.repeat)
        with SampleWebServer() as web:
            for n in range(args.rows):
                web.routes[f"/{n}.jpg"] = Reply(
                    200, jpeg(n % 50 + n // 50 * 1000, size=(160, 120)), {"Content-Type": "image/jpeg"}
                )
            manifest = os.path.join(workdir, "rows.tsv")
            with open(manifest, "w", encoding="utf-8") as handle:
                handle.writelines(f"photo {n}\t{web.url(f'/{n}.jpg')}\n" for n in range(args.rows))
            ingest = bench_ingest(trees, manifest, workdir, args.repeat)
    result = {
        "read_gz": read,
        "read_ratio_this_over_peer": round(read["this"]["median_s"] / read["peer"]["median_s"], 3),
        "ingest": ingest,
        "ingest_ratio_this_over_peer": round(ingest["this"]["median_s"] / ingest["peer"]["median_s"], 3),
        "rows": args.rows,
        "lines": args.lines,
        "repeat": args.repeat,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""One benchmark run of the Dedup transform on a synthetic hash set (bench/synth.py).

    python -m bench.dedup_run --data bench/work/hashes-1000000.npz --result out.json [beam options]

Reads the rows from the .npz in chunks inside the pipeline, runs Dedup on the local runner
(the job's default: FnApiRunner, 2 worker processes), and evaluates the output against the
planted groups inside the pipeline too (nothing is collected on the driver). Writes a JSON
result: wall time, recall by planted distance, false matches, placeholder handling, stats.
"""

import argparse
import json
import os
import time

import apache_beam as beam
import numpy as np

from bench import synth
from pipelines.dedup import pipeline_options
from transforms.clustering.clusters import Dedup, SumNestedCounts
from transforms.clustering.dedup_settings import parse_views

CHUNK = 20000


class _ReadChunk(beam.DoFn):
    def __init__(self, path):
        self._path = path

    def setup(self):
        self._data = synth.load(self._path)

    def process(self, start):
        d = self._data
        stop = min(start + CHUNK, len(d["key"]))
        views = [(name, d[name][start:stop].tolist()) for name in sorted(d) if name.startswith(("phash_", "dhash_"))]
        for i, (key, url, p, h) in enumerate(
            zip(
                d["key"][start:stop].tolist(),
                d["url"][start:stop].tolist(),
                d["phash"][start:stop].tolist(),
                d["dhash"][start:stop].tolist(),
                strict=False,
            )
        ):
            row = {
                "key": key,
                "dataset": key.split(":")[0],
                "url": url,
                "status": "ok",
                "phash": f"{p:016x}",
                "dhash": f"{h:016x}",
                "sha256": None,
                "width": 256,
                "height": 256,
            }
            for name, values in views:  # picture views (synth views=True), 0 = none
                row[name] = f"{values[i]:016x}" if values[i] else None
            yield row


def _evaluate_group(element, k):
    group, members = element
    members = list(members)
    ids = {cid for _, cid, _ in members}
    clustered = [m for m in members if m[1] is not None]
    if group.startswith("p"):
        d = int(group[1:].split("-")[0])
        found = len(ids) == 1 and None not in ids and len(members) == 2
        return {"planted": {str(d): 1}, "recalled": {str(d): int(found)}}
    if group.startswith("w"):  # a planted view pair: "w<view>_<d>-<i>"
        found = len(ids) == 1 and None not in ids and len(members) == 2
        label = group[1:].split("-")[0]
        return {"view_planted": {label: 1}, "view_recalled": {label: int(found)}}
    if group in ("skew", "sameurl"):
        return {
            f"{group}_rows": len(members),
            f"{group}_clusters": len(ids - {None}),
            f"{group}_placeholder_rows": sum(1 for m in members if m[2]),
            f"{group}_unclustered_rows": len(members) - len(clustered),
        }
    # unrelated rows and above-threshold pairs must stay alone
    return {
        "false_matched_rows": len(clustered),
        "above_threshold_pairs": 1 if group.startswith("a") else 0,
        "above_threshold_merged": 1 if group.startswith("a") and clustered else 0,
    }


def _purity(element):
    _cid, groups = element
    groups = set(groups)
    # each extra planted group in a cluster is one wrongful merge (a chance match)
    return {"impure_clusters": 1 if len(groups) > 1 else 0, "false_merges": len(groups) - 1, "clusters_seen": 1}


def _count_out(row):
    beam.metrics.Metrics.counter("bench", "rows_out").inc()
    return None


def _counters(result):
    """Committed counter values of the run, by name (rows_out and Dedup's own counters)."""
    from apache_beam.metrics.metric import MetricsFilter

    out = {}
    for c in result.metrics().query(MetricsFilter())["counters"]:
        name = f"{c.key.metric.namespace}/{c.key.metric.name}"
        out[name] = out.get(name, 0) + (c.committed if c.committed is not None else c.attempted)
    return out


def _write(doc, path):
    with open(path, "w") as f:
        json.dump(doc, f)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument("--no-dhash", action="store_true", help="pHash only, no dHash check")
    parser.add_argument("--views", default=None, help="Dedup views (comma-separated, 'none'); default all")
    args, beam_args = parser.parse_known_args(argv)
    n = int(np.load(args.data, mmap_mode=None)["phash"].shape[0])
    workdir = os.path.dirname(os.path.abspath(args.result))
    options = pipeline_options(beam_args)
    # why: one temporary file per run (two runs sharing a directory must not read each other's)
    tmp = os.path.join(workdir, f"eval-tmp-{os.getpid()}.json")
    started = time.time()
    with beam.Pipeline(options=options) as p:
        rows = (
            p
            | beam.Create(list(range(0, n, CHUNK)))
            | beam.Reshuffle()
            | beam.ParDo(_ReadChunk(os.path.abspath(args.data)))
        )
        views = parse_views(args.views)
        out = rows | Dedup(
            max_distance=args.max_distance, dhash_max_distance=None if args.no_dhash else 16, views=views
        )
        # Only rows that can tell something: clustered ones and the planted pairs (unclustered
        # unrelated rows are right by definition), so evaluation stays small next to Dedup.
        marks = (
            out["rows"]
            | "Telling" >> beam.Filter(lambda r: r["cluster_id"] is not None or r["key"].split(":")[1][0] in "paw")
            | "Marks"
            >> beam.Map(lambda r: (synth.group_of(r["key"]), (r["key"], r["cluster_id"], r["is_placeholder"])))
        )
        # why: a second, independent count of the rows out (a metrics counter), to tell a loss of
        # rows in Dedup from a loss in this evaluation's own combine
        _ = out["rows"] | "CounterOut" >> beam.Map(_count_out)
        rows_out = (
            out["rows"]
            | "CountOut" >> beam.combiners.Count.Globally()
            | "RowsOut" >> beam.Map(lambda c: {"rows_out": c})
        )
        per_group = marks | "ByGroup" >> beam.GroupByKey() | "EvalGroup" >> beam.Map(_evaluate_group, args.max_distance)
        purity = (
            marks
            | "ClusterGroup" >> beam.FlatMap(lambda m: [(m[1][1], m[0])] if m[1][1] is not None else [])
            | "ByCluster" >> beam.GroupByKey()
            | "Purity" >> beam.Map(_purity)
        )
        evaluation = (
            (per_group, purity, rows_out) | beam.Flatten() | "SumEval" >> beam.CombineGlobally(SumNestedCounts())
        )
        (
            evaluation
            | "JoinStats"
            >> beam.Map(lambda e, s: {"evaluation": e, "stats": s}, s=beam.pvalue.AsSingleton(out["stats"]))
            | "Write" >> beam.Map(_write, tmp)
        )
    wall = time.time() - started
    with open(tmp) as f:
        doc = json.load(f)
    os.remove(tmp)
    doc["counters"] = _counters(p.result)  # Pipeline.__exit__ ran it and keeps its result
    doc.update(rows=n, wall_seconds=round(wall, 2), dhash=not args.no_dhash, views=list(parse_views(args.views)))
    _write(doc, args.result)


if __name__ == "__main__":
    main()

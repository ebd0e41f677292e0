"""Shared helpers of the dedup tests: synthetic rows and a runner that reads outputs back."""

import glob
import json
import os
import random

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from transforms import schema
from transforms.clustering.clusters import Dedup, DedupShards, WriteDuplicates, slim_row
from transforms.io.table import WriteTableShards


def flip(hex16, bits):
    """hex16 with the given bit positions flipped."""
    value = int(hex16, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:016x}"


def at_distance(hex16, distance, rng):
    return flip(hex16, rng.sample(range(64), distance))


def random_hash(rng):
    return f"{rng.getrandbits(64):016x}"


def row(key, dataset="cc3m", url=None, phash=None, dhash=None, sha256=None, status="ok", width=100, height=100):
    if url is None:
        url = f"http://img.example/{key.replace(':', '/')}.jpg"
    if status != "ok":
        return schema.new_row(dataset, key, url, status=status, error="failed")
    return schema.new_row(
        dataset,
        key,
        url,
        status="ok",
        phash=phash,
        dhash=dhash,
        sha256=sha256 or f"sha-{key}",
        width=width,
        height=height,
    )


def run_dedup(rows, tmp_path, **options):
    """Run Dedup on the FnApiRunner; return (rows, clusters, stats, metrics counters)."""
    out = str(tmp_path / "out")
    p = beam.Pipeline(runner="FnApiRunner")
    result = p | beam.Create(rows, reshuffle=False) | Dedup(**options)
    return _finish(p, result, out)


def run_dedup_shards(rows, tmp_path, shard_rows=7, **options):
    """Like run_dedup, through DedupShards: rows written to Parquet shards of `shard_rows` rows,
    dedup on their slim projection and members read back from the shards. Only clustered rows
    come out."""
    out = str(tmp_path / "out")
    p = beam.Pipeline(runner="FnApiRunner")
    rows_in = p | beam.Create(rows, reshuffle=False)
    shards = rows_in | WriteTableShards(out, "test", shard_rows=shard_rows)
    result = {"slim": rows_in | beam.Map(slim_row), "shards": shards} | DedupShards(**options)
    (
        shards
        | beam.combiners.Count.Globally()
        | "ShardCount" >> beam.Map(str)
        | "WriteShardCount" >> beam.io.WriteToText(os.path.join(out, "shards"), file_name_suffix=".txt")
    )
    found = _finish(p, result, out)
    return found + (int(_lines(out, "shards-*.txt")[0]),)


def _lines(out, pattern):
    return [line.strip() for path in sorted(glob.glob(os.path.join(out, pattern))) for line in open(path)]


def _finish(p, result, out):
    """Writes Dedup's outputs under `out`, runs the pipeline, reads them back."""
    (
        result["rows"]
        | "RowJson" >> beam.Map(lambda r: json.dumps(r, default=str))
        | "WriteRows" >> beam.io.WriteToText(os.path.join(out, "rows"), file_name_suffix=".jsonl")
    )
    result["clusters"] | WriteDuplicates(out)
    (
        result["stats"]
        | "StatsJson" >> beam.Map(json.dumps)
        | "WriteStats" >> beam.io.WriteToText(os.path.join(out, "stats"), file_name_suffix=".json")
    )
    run = p.run()
    run.wait_until_finish()
    counters = {}
    for c in run.metrics().query(MetricsFilter())["counters"]:  # summed over steps (spill/bytes of several)
        counters[c.key.metric.name] = counters.get(c.key.metric.name, 0) + c.committed
    return (
        _read(out, "rows-*.jsonl"),
        _read(out, "duplicates/clusters-*.jsonl"),
        _read(out, "stats-*.json")[0],
        counters,
    )


def _read(out, pattern):
    records = []
    for path in sorted(glob.glob(os.path.join(out, pattern))):
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def check_invariants(rows_in, rows_out, clusters):
    """Every row exactly once; one canonical per cluster; records agree with rows."""
    assert sorted(r["key"] for r in rows_out) == sorted(r["key"] for r in rows_in)
    by_cluster = {}
    for r in rows_out:
        if r["cluster_id"] is None:
            assert r["is_canonical"] is True and r["is_placeholder"] is False
        else:
            by_cluster.setdefault(r["cluster_id"], []).append(r)
    assert sorted(by_cluster) == sorted(c["cluster_id"] for c in clusters)
    for c in clusters:
        members = by_cluster[c["cluster_id"]]
        assert len(members) == c["size"] >= 2
        assert [m["key"] for m in members if m["is_canonical"]] == [c["canonical_key"]]
        listed = [m["key"] for m in c["members"]]
        assert len(listed) == c["members_listed"] and listed[0] == c["canonical_key"]
        assert sum(c["datasets"].values()) == c["size"]
        assert sum(c["matches"].values()) == c["size"] - 1
        if c["members_listed"] == c["size"]:
            assert sorted(m["key"] for m in members) == sorted(listed)
        else:  # capped: a subset of the members, the canonical first
            assert set(listed) <= {m["key"] for m in members}
    return by_cluster


def cluster_of(rows_out):
    return {r["key"]: r["cluster_id"] for r in rows_out}


__all__ = ["flip", "at_distance", "random_hash", "row", "run_dedup", "check_invariants", "cluster_of", "random"]

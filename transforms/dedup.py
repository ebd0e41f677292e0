"""Exact-duplicate clustering (stand-in until the scalable near-duplicate Dedup lands).

Rows sharing a normalized URL or a sha256 share a cluster_id. Union-find in one combine: fine
for test and demo sizes only.
"""
import hashlib
import urllib.parse

import apache_beam as beam

DEFAULT_PRIORITY = ("openimages", "cc12m", "cc3m", "imagenet_captions", "zero")


def normalize_url(url):
    if not url:
        return None
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return url.strip()
    host = (parts.hostname or "").lower()
    port = parts.port if parts.port not in (None, 80, 443) else None
    netloc = f"{host}:{port}" if port else host
    return urllib.parse.urlunsplit(("", netloc, parts.path or "/", parts.query, ""))


class Dedup(beam.PTransform):
    def __init__(self, max_distance=None, dataset_priority=DEFAULT_PRIORITY):
        super().__init__()
        self._priority = tuple(dataset_priority)

    def expand(self, rows):
        keyed = rows | "ByKey" >> beam.Map(lambda row: (row["key"], row))
        links = (
            rows
            | "Links" >> beam.FlatMap(lambda r: [(("u", normalize_url(r["url"])), r["key"])] +
                                      ([(("s", r["sha256"]), r["key"])] if r.get("sha256") else []))
            | "GroupLinks" >> beam.GroupByKey()
            | "Multi" >> beam.Filter(lambda kv: len(set(kv[1])) > 1)
            | "Sets" >> beam.Map(lambda kv: sorted(set(kv[1])))
            | "AllSets" >> beam.combiners.ToList()
            | "UnionFind" >> beam.FlatMap(_components)
        )
        priority = self._priority
        clustered = (
            {"row": keyed, "cluster": links}
            | "Join" >> beam.CoGroupByKey()
            | "Assign" >> beam.FlatMap(lambda kv: [dict(r, cluster_id=(list(kv[1]["cluster"]) or [None])[0])
                                                   for r in kv[1]["row"]])
        )
        singles = clustered | "Singles" >> beam.Filter(lambda r: r["cluster_id"] is None) \
            | "MarkSingle" >> beam.Map(lambda r: dict(r, is_canonical=True))
        grouped = (
            clustered
            | "Members" >> beam.Filter(lambda r: r["cluster_id"] is not None)
            | "ByCluster" >> beam.Map(lambda r: (r["cluster_id"], r))
            | "GroupCluster" >> beam.GroupByKey()
        )
        members = grouped | "Canonical" >> beam.FlatMap(_mark_canonical, priority)
        out_rows = (singles, members) | "AllRows" >> beam.Flatten()
        clusters = grouped | "Describe" >> beam.Map(lambda kv: {"cluster_id": kv[0],
                                                                "members": sorted(r["key"] for r in kv[1])})
        stats = clusters | "Stats" >> beam.combiners.Count.Globally() \
            | "StatsDict" >> beam.Map(lambda n: {"clusters": n})
        return {"rows": out_rows, "clusters": clusters, "stats": stats}


def _components(sets):
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for members in sets:
        root = find(members[0])
        for m in members[1:]:
            other = find(m)
            if other != root:
                parent[max(root, other)] = min(root, other)
                root = min(root, other)
    groups = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    for root, keys in groups.items():
        cid = hashlib.sha1(root.encode()).hexdigest()[:16]
        for k in keys:
            yield k, cid


def _mark_canonical(kv, priority):
    rows = list(kv[1])

    def rank(r):
        ds = priority.index(r["dataset"]) if r["dataset"] in priority else len(priority)
        return (r["status"] != "ok", -((r.get("width") or 0) * (r.get("height") or 0)), ds, r["key"])

    best = min(rows, key=rank)
    for r in rows:
        yield dict(r, is_canonical=r is best)

"""Exact and near-duplicate clustering of image rows, across datasets (issue 3).

How rows are matched (each a graph edge; clusters are connected components):
  * exact URL: same `normalize_url(url)` (any status: failed rows still dedup by URL), as
    evidence of one picture only where no picture contradicts it: two DIFFERENT pictures
    (vertices) at one URL are not linked by it (a site changed the picture between two
    ingests, or serves another one on each fetch); the URL's failed rows then join its smallest
    picture vertex only (all of them would re-join the pictures through a failed row), and a
    re-encode at one URL still meets its original through the sha256 or near match. Such URLs
    are counted in stats (`urls_with_several_pictures`). Rows with a pHash take part in the
    picture matches below whatever their status (the status only matters to the canonical choice);
  * exact bytes: same sha256;
  * same picture: same pHash and dHash. Rows with one (phash, dhash) are ONE vertex of the
    graph, so thousands of rows with one hash cost one vertex, never a quadratic bucket;
  * near: pHash Hamming distance <= max_distance AND, where both rows have a dHash,
    dHash distance <= dhash_max_distance (the confirmation cuts chance pHash collisions).
    Candidates come from `transforms.clustering.near_search` (multi-index banding with bit-flip probing, recall
    guaranteed up to the threshold, arithmetic in that module).

Default thresholds (64-bit imagehash pHash/dHash): max_distance=8 catches re-encodes, resizes
and small crops (typically 0-6 bits) while a chance pair of unrelated 64-bit hashes lands within
8 bits with probability ~3e-10; requiring dHash <= 16 as well (chance ~3e-5, independent) brings
the expected chance matches among 25M distinct hashes below one.

Placeholders: one picture served for many dead URLs (Flickr's "photo unavailable"), or a blank
image. A (phash, dhash) group spanning >= placeholder_min_urls distinct normalised URLs, or whose
sha256/phash is in `placeholder_hashes`, is a placeholder. Its rows form ONE cluster flagged
is_placeholder (cluster record and row column), take part in no other match (so a dead URL that
also appears in another dataset is not merged into a real photo's cluster), are kept out of the
near search, and are reported separately in stats, not as duplicates. Like every cluster it has
exactly one is_canonical row (same policy); consumers drop rows with is_placeholder.

Canonical row of a cluster (deterministic): status "ok" first, then a row without uniform borders
(no phash_trim view: not letterboxed or padded) before one with, then the largest width*height,
then the earliest dataset in `dataset_priority` (unknown datasets last), then the smallest key.
cluster_id: first 16 hex digits of sha1(smallest member key) for real clusters, of
sha1("placeholder:" + pHash + dHash) for placeholders; the same input always gives the same ids.
Keys must be unique in the input (the standalone job enforces it; DedupShards counts the ingest's
distinct keys for its books, row_keys.py).

Public transforms (rows are `schema.Row` dicts):

- `Dedup(...)`: rows -> {"rows": every row with cluster_id / is_canonical / is_placeholder,
  "clusters": one cluster record dict per cluster, "stats": one dict for summary.json}.
- `DedupShards(...)`: {"slim": `slim_row` dicts, "shards": `str` shard paths} -> {"rows": the rows
  of clusters only, "clusters", "stats"} (the ingest: full rows stay in their shards).
- `WriteDuplicates(out_dir)`: cluster records -> `str` paths of OUT/duplicates/clusters-*.jsonl.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import typing
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from transforms import schema
from transforms.clustering.components import ConnectedComponents
from transforms.clustering.near_search import DEFAULT_VIEW_MAX_DISTANCE, VIEW_SPACES, NearDuplicatePairs, ViewPairs
from transforms.clustering.placeholders import known_placeholder_hashes
from transforms.clustering.row_keys import ROW_KEY_RECORD, count_row_keys, row_key_digests
from transforms.clustering.spill import GroupEncoded, GroupRecords, split_by
from transforms.clustering.urls import normalize_url
from transforms.io.table import RemoveDirectory

__all__ = [
    "Dedup",
    "DedupShards",
    "slim_row",
    "WriteDuplicates",
    "SumNestedCounts",
    "normalize_url",
    "canonical_sort_key",
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_DHASH_MAX_DISTANCE",
    "DEFAULT_DATASET_PRIORITY",
    "DEFAULT_PLACEHOLDER_MIN_URLS",
]

DEFAULT_MAX_DISTANCE = 8
DEFAULT_DHASH_MAX_DISTANCE = 16
DEFAULT_DATASET_PRIORITY = ("openimages", "cc12m", "cc3m", "imagenet_captions", "zero")
DEFAULT_PLACEHOLDER_MIN_URLS = 50

# The views dedup matches through by default (transforms/hashing.py VIEWS, docs/duplicates.md).
DEFAULT_MATCH_VIEWS = ("mirror", "trim", "crop", "centre")
# With views on (issue 14), the plain search also keeps a pair its probes meet past max_distance,
# up to max_distance + WIDE_EXTRA bits, when the two dHashes are within WIDE_DHASH_MAX_DISTANCE:
# two hash families agreeing closely (a 3 % corner crop of a texture: pHash 10, dHash 5-8 away).
# No pair of different pictures of the quality set passes it (docs/duplicates.md).
WIDE_EXTRA = 2
WIDE_DHASH_MAX_DISTANCE = 8
VIEW_NAMES = tuple(VIEW_SPACES)
MATCH_KINDS = ("sha256", "url", "phash", "near") + VIEW_NAMES + ("transitive",)

_NS = "dedup"
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_PLACEHOLDER = "x"  # component-key prefix of placeholder groups (vertices start with p or k)


def _counter(name):
    return beam.metrics.Metrics.counter(_NS, name)


def _hex16(value):
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    return value if _HEX16.match(value) else None


def _vertex(row):
    """Graph vertex of a row: its (phash, dhash) picture, or the row itself (a digest of its key)
    without a pHash.

    A dHash of all zeros (a flat image: no gradient) is treated as missing, as in the search.
    """
    phash = _hex16(row.get("phash"))
    if phash is None:  # 128 bits of the key: fixed size, so it packs into the key records below
        return "k" + hashlib.blake2b(str(row.get("key")).encode("utf-8"), digest_size=16).hexdigest()
    dhash = _hex16(row.get("dhash"))
    if dhash is None or dhash == "0" * 16:
        dhash = ""
    return "p" + phash + dhash


def _vertex_of_ints(phash, dhash):
    return f"p{phash:016x}" + (f"{dhash:016x}" if dhash else "")


def _cluster_id(text):
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def canonical_sort_key(row: schema.Row, dataset_priority: Sequence[str] = DEFAULT_DATASET_PRIORITY) -> tuple:
    """Smallest sorts first = canonical: ok status, no letterbox bars or padding (a trim view),
    largest area, dataset priority, key."""
    priority = list(dataset_priority)
    dataset = row.get("dataset")
    rank = priority.index(dataset) if dataset in priority else len(priority)
    area = (row.get("width") or 0) * (row.get("height") or 0)
    bordered = _hex16(row.get("phash_trim")) is not None  # its bars would count as area
    return (row.get("status") != schema.OK, bordered, -area, rank, str(row.get("key")))


def _hamming(a, b):
    a, b = _hex16(a), _hex16(b)
    if a is None or b is None:
        return None
    return (int(a, 16) ^ int(b, 16)).bit_count()


# --- steps 1-2: compact key records, grouped by shard ----------------------------------------
#
# Every row contributes a picture record (its vertex, URL digest, known-placeholder sha256) and
# one exact-key record per URL / sha256 digest. They cross the shuffle as numpy arrays of fixed
# size records, a few hundred per shard and batch, instead of one Python tuple per row: the local
# runner keeps a shuffle's whole input in memory, where a tuple per row costs ~300 bytes and a
# record 30 (and with spill_dir they go through files instead, transforms.clustering.spill). A shard's
# records are then grouped with numpy sorts.

KEY_SHARDS = 256


def _digest(kind, text):
    # 96-bit digests stand for URLs and sha256s in the shuffles: 4x smaller, and a chance
    # collision among 10^8 values has odds ~1e-13.
    return kind + hashlib.blake2b(text.encode("utf-8"), digest_size=12).digest()


_PICTURE_RECORD = np.dtype([("phash", "<u8"), ("dhash", "<u8"), ("nurl", "S13"), ("known", "?")])
_EXACT_RECORD = np.dtype([("key", "S13"), ("kind", "S1"), ("a", "<u8"), ("b", "<u8")])
_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: spreads (phash, dhash) over shards


def _key_record_dtype(key):
    return {"p": _PICTURE_RECORD, "r": ROW_KEY_RECORD}.get(key[0], _EXACT_RECORD)


def _vertex_parts(vertex):
    """'p' + pHash [+ dHash] or 'k' + 128-bit key digest -> (kind, a, b) with two 64-bit ints."""
    return vertex[0], int(vertex[1:17], 16), int(vertex[17:33], 16) if len(vertex) > 17 else 0


def _vertex_of_parts(kind, a, b):
    if kind == "k":
        return f"k{a:016x}{b:016x}"
    return _vertex_of_ints(a, b)


def _by_shard(kind, records, shards):
    for shard, indices in split_by(shards):
        yield (kind, shard), records[indices]


@beam.typehints.with_output_types(tuple[tuple[str, int], typing.Any])
class _KeyRecords(beam.DoFn):
    """A batch of slim rows -> (("p", shard), picture records), (("x", shard), exact-key records),
    and with row_keys (("r", shard), row key digests) for the ingest's distinct-keys check."""

    def __init__(self, known_hashes, shards=KEY_SHARDS, row_keys=False):
        self._known = frozenset(known_hashes)
        self._shards = shards
        self._row_keys = row_keys

    def process(self, batch):
        if self._row_keys:
            # why here: the digests ride the shuffle the key records take anyway (row_keys.py)
            yield from _by_shard("r", *row_key_digests([slim["key"] for slim in batch], self._shards))
        pictures, exact = [], []
        for slim in batch:
            kind, a, b = _vertex_parts(slim["vertex"])
            nurl, sha256 = slim["nurl"], slim["sha256"]
            if kind == "p":
                pictures.append((a, b, nurl or b"", bool(sha256) and sha256 in self._known))
            if nurl is not None:
                exact.append((nurl, kind, a, b))
            if sha256:
                exact.append((_digest(b"s", sha256), kind, a, b))
        if pictures:
            records = np.array(pictures, dtype=_PICTURE_RECORD)
            with np.errstate(over="ignore"):
                mixed = (records["phash"] ^ records["dhash"]) * _MIX
            yield from _by_shard("p", records, mixed % np.uint64(self._shards))
        if exact:
            records = np.array(exact, dtype=_EXACT_RECORD)
            # The digests are uniform already: their first byte after the kind picks the shard.
            first = np.ascontiguousarray(records["key"]).view(np.uint8).reshape(-1, _EXACT_RECORD["key"].itemsize)[:, 1]
            yield from _by_shard("x", records, first.astype(np.int64) % self._shards)


@beam.typehints.with_output_types(tuple[typing.Any, typing.Any])
class _KeyShard(beam.DoFn):
    """One shard's records -> what the graph needs of them.

    Picture shards: the search nodes as (pHash array, dHash array) batches of every non-placeholder
    picture (main output), `placeholder` (vertex, cluster id) of placeholder pictures, `several` vertex of
    a picture with several rows (a cluster even without any other match).
    Exact shards: `exact` (key digest, [vertices]) for a URL or sha256 shared by several vertices.
    Row key shards: `row_keys` (distinct, doubled, the first doubled digests) (row_keys.count_row_keys).
    """

    PLACEHOLDER = "placeholder"
    SEVERAL = "several"
    EXACT = "exact"
    ROW_KEYS = "row_keys"

    def __init__(self, min_urls, known_hashes):
        self._min_urls = min_urls
        self._known = np.array(sorted({int(h, 16) for h in known_hashes if _HEX16.match(h)}), dtype=np.uint64)

    NODE_BATCH = 8192  # search nodes go on in batches this big: a shard's few hundred would
    # multiply the near search's routed records (one per band and shard) by as many batches

    def start_bundle(self):
        self._nodes, self._node_count = [], 0

    def process(self, element):
        (kind, _shard), parts = element
        records = np.concatenate(list(parts))
        if kind == "p":
            yield from self._pictures(records)
        elif kind == "r":
            yield beam.pvalue.TaggedOutput(self.ROW_KEYS, count_row_keys(records))
        else:
            yield from self._exact(records)
        if self._node_count >= self.NODE_BATCH:
            yield self._take_nodes()

    def finish_bundle(self):
        if self._node_count:
            yield GlobalWindows.windowed_value(self._take_nodes())

    def _take_nodes(self):
        phash = np.concatenate([p for p, _ in self._nodes])
        dhash = np.concatenate([d for _, d in self._nodes])
        self._nodes, self._node_count = [], 0
        return phash, dhash

    def _pictures(self, r):
        r = r[np.lexsort((r["nurl"], r["dhash"], r["phash"]))]
        n = len(r)
        new_vertex = np.ones(n, dtype=bool)
        new_vertex[1:] = (r["phash"][1:] != r["phash"][:-1]) | (r["dhash"][1:] != r["dhash"][:-1])
        starts = np.flatnonzero(new_vertex)
        rows = np.diff(np.append(starts, n))
        new_url = new_vertex.copy()
        new_url[1:] |= r["nurl"][1:] != r["nurl"][:-1]
        urls = np.add.reduceat((new_url & (r["nurl"] != b"")).astype(np.int64), starts)
        phash, dhash = r["phash"][starts], r["dhash"][starts]
        known = (
            np.logical_or.reduceat(r["known"], starts)
            | np.isin(phash, self._known)
            | ((dhash != 0) & np.isin(dhash, self._known))
        )
        # why: 0 turns the many-URLs rule off (as the refresh's option does), not every picture a placeholder
        placeholder = known | ((urls >= self._min_urls) & (self._min_urls > 0))
        for p, d in zip(phash[placeholder].tolist(), dhash[placeholder].tolist(), strict=True):
            _counter("placeholder_groups").inc()
            vertex = _vertex_of_ints(p, d)
            yield beam.pvalue.TaggedOutput(self.PLACEHOLDER, (vertex, _cluster_id("placeholder:" + vertex[1:])))
        several = (rows > 1) & ~placeholder
        for p, d in zip(phash[several].tolist(), dhash[several].tolist(), strict=True):
            yield beam.pvalue.TaggedOutput(self.SEVERAL, _vertex_of_ints(p, d))
        if not placeholder.all():
            self._nodes.append((phash[~placeholder], dhash[~placeholder]))
            self._node_count += int((~placeholder).sum())

    def _exact(self, r):
        r = np.unique(r)  # distinct (key, vertex), sorted by key
        new_key = np.ones(len(r), dtype=bool)
        new_key[1:] = r["key"][1:] != r["key"][:-1]
        starts = np.flatnonzero(new_key)
        vertices = np.diff(np.append(starts, len(r)))
        for lo, count in zip(starts[vertices > 1].tolist(), vertices[vertices > 1].tolist(), strict=True):
            group = r[lo : lo + count]
            yield beam.pvalue.TaggedOutput(
                self.EXACT,
                (
                    group["key"][0],
                    [
                        _vertex_of_parts(k.decode(), a, b)
                        for k, a, b in zip(
                            group["kind"].tolist(), group["a"].tolist(), group["b"].tolist(), strict=True
                        )
                    ],
                ),
            )


# --- step 2: exact URL / sha256 groups: stars ---------------------------------------------


_SEVERAL_PICTURES = "several_pictures"


def _star_edges(element, placeholders):
    """The edges of one URL or sha256 group: its distinct vertices linked to the smallest (a star,
    not a clique); but for a URL group of several pictures, its row vertices (failed rows) linked
    to the smallest picture only, the pictures not to each other (tagged output `several_pictures`:
    the group's digest, once).

    Args:
        element: (key digest: b"u..." for a normalised URL, b"s..." for a sha256, [vertices]).
        placeholders: vertex -> cluster id of the placeholder pictures (they match nothing).

    Returns:
        (vertex, hub) edges, and the URL's digest as `several_pictures` where its pictures differ.
    """
    group, vertices = element
    distinct = {v for v in vertices if v not in placeholders}
    pictures = {v for v in distinct if v.startswith("p")}
    if bytes(group)[:1] == b"u" and len(pictures) > 1:
        # why: a URL is evidence of one picture only where no picture contradicts it; two pictures
        # fetched from one URL are two pictures (a re-encode meets its original by sha256 or near)
        yield beam.pvalue.TaggedOutput(_SEVERAL_PICTURES, bytes(group))
        distinct = (distinct - pictures) | {min(pictures)}
    if len(distinct) > 1:
        hub = min(distinct)
        for v in distinct:
            if v != hub:
                yield v, hub


# --- step 5: rows meet their component -------------------------------------------------------

# A vertex's component, the smallest rank wins: placeholder group, else its connected
# component, else its own picture (several rows, no other match).
_RANK_PLACEHOLDER, _RANK_EDGE, _RANK_PICTURE = 0, 1, 2
_SINGLE = "single"


def _place(row, components, singles=True, placeholder_views=True):
    """(component, row) for a row in a cluster; a row alone gets its final cluster columns
    (tagged output `single`), or nothing when singles=False. placeholder_views=False: a row of a
    placeholder group goes without its view columns but phash_trim (its match is "placeholder":
    only canonical_sort_key reads a view), for callers that only keep the rows' cluster columns."""
    found = components.get(_vertex(row))
    if found is not None:
        if not placeholder_views and found[1].startswith(_PLACEHOLDER):
            # why: the group GroupClusters holds in memory whole; the largest is a placeholder's
            row = {k: v for k, v in row.items() if k not in _VIEW_FIELDS}
        yield found[1], row
    elif singles:
        _counter("unique_rows").inc()
        yield beam.pvalue.TaggedOutput(_SINGLE, dict(row, cluster_id=None, is_canonical=True, is_placeholder=False))


# --- step 6: one cluster -----------------------------------------------------------------------


@beam.typehints.with_output_types(dict[str, typing.Any])
class _Cluster(beam.DoFn):
    """(component, rows) -> rows with cluster columns set, plus one cluster record."""

    CLUSTERS = "clusters"

    def __init__(
        self,
        dataset_priority,
        max_distance,
        dhash_max_distance,
        max_listed,
        views=(),
        view_max_distance=DEFAULT_VIEW_MAX_DISTANCE,
    ):
        self._priority = tuple(dataset_priority)
        self._max_distance = max_distance
        self._dhash_max = dhash_max_distance
        self._max_listed = max_listed
        self._views = tuple(views)
        self._view_max = view_max_distance

    def process(self, element):
        component, rows = element
        placeholder = component.startswith(_PLACEHOLDER)
        best = best_index = canonical = min_key = None
        listed = {}  # row index -> member facts, for at most max_listed rows (+ the canonical)
        datasets = {}
        # Pass 1 keeps slim facts of a bounded number of rows; pass 2 re-reads the
        # (re-iterable) group, so a 1M-row placeholder never sits in memory twice.
        for i, row in enumerate(rows):
            sort_key = canonical_sort_key(row, self._priority)
            member = None
            if best is None or sort_key < best:
                member = _member(row)
                best, best_index, canonical = sort_key, i, member
            if len(listed) < self._max_listed:
                listed[i] = member or _member(row)
            key = str(row.get("key"))
            min_key = key if min_key is None or key < min_key else min_key
            datasets[row.get("dataset")] = datasets.get(row.get("dataset"), 0) + 1
        listed.setdefault(best_index, canonical)
        if placeholder:
            cluster_id = _cluster_id("placeholder:" + component[2:])
        else:
            cluster_id = _cluster_id(min_key)
        matches = {}
        max_distance = None
        size = 0
        for i, row in enumerate(rows):
            size += 1
            member = listed.get(i) or _member(row)
            member["distance"] = _hamming(member["phash"], canonical["phash"])
            member["dhash_distance"] = _hamming(member["dhash"], canonical["dhash"])
            if i == best_index:
                member["match"] = "canonical"
            else:
                member["match"] = "placeholder" if placeholder else self._match(member, canonical)
                matches[member["match"]] = matches.get(member["match"], 0) + 1
            if member["distance"] is not None:
                max_distance = max(max_distance or 0, member["distance"])
            yield dict(row, cluster_id=cluster_id, is_canonical=(i == best_index), is_placeholder=placeholder)
        _counter("placeholder_clusters" if placeholder else "clusters").inc()
        members = sorted(listed.values(), key=lambda m: (m["match"] != "canonical", m["key"]))
        for m in members:
            del m["_nurl"], m["_vertex"], m["_views"]
        yield beam.pvalue.TaggedOutput(
            self.CLUSTERS,
            {
                "cluster_id": cluster_id,
                "canonical_key": canonical["key"],
                "is_placeholder": placeholder,
                "size": size,
                "kind": "placeholder"
                if placeholder
                else ("near" if set(matches) & ({"near", "transitive"} | set(VIEW_NAMES)) else "exact"),
                "datasets": datasets,
                "matches": matches,
                "max_distance": max_distance,
                "members_listed": len(members),
                "members": members,
            },
        )

    def _match(self, member, canonical):
        if member["sha256"] and member["sha256"] == canonical["sha256"]:
            return "sha256"
        if member["_nurl"] is not None and member["_nurl"] == canonical["_nurl"]:
            # why: two different pictures at one URL are not joined by it (_star_edges): say how they met
            if not (_is_picture(member) and _is_picture(canonical) and member["_vertex"] != canonical["_vertex"]):
                return "url"
        if member["_vertex"] == canonical["_vertex"] and _is_picture(member):
            return "phash"
        distance = member["distance"]
        if distance is not None and distance <= self._max_distance:
            dd = member["dhash_distance"]
            if dd is None or self._dhash_max is None or dd <= self._dhash_max:
                return "near"
        dd = member["dhash_distance"]
        if self._views and distance is not None and distance <= self._max_distance + WIDE_EXTRA:
            if self._dhash_max is not None and dd is not None and dd <= WIDE_DHASH_MAX_DISTANCE:
                return "near"  # the wide plain rule (WIDE_EXTRA), as the search applies it
        view = self._view_match(member, canonical)
        if view is not None:
            name, distance, dhash_distance = view
            member["view_distance"], member["view_dhash_distance"] = distance, dhash_distance
            return name
        return "transitive"

    def _view_match(self, member, canonical):
        """(view, pHash distance, dHash distance) of the first view through which the member
        meets the canonical row directly (either's view against the other's plain hashes, or
        centre against centre), as the view search would; None if none does."""
        for view in self._views:
            if view == "centre":
                sides = [(member["_views"].get(view), canonical["_views"].get(view))]
            else:
                plain_m, plain_c = (member["phash"], member["dhash"]), (canonical["phash"], canonical["dhash"])
                sides = [(member["_views"].get(view), plain_c), (canonical["_views"].get(view), plain_m)]
            for a, b in sides:
                if a is None or b is None:
                    continue
                distance = _hamming(a[0], b[0])
                if distance is None or distance > self._view_max:
                    continue
                dd = _hamming(a[1], b[1])
                if a[1] == "0" * 16 or b[1] == "0" * 16:
                    dd = None
                if dd is None or self._dhash_max is None or dd <= self._dhash_max:
                    return view, distance, dd
        return None


def _is_picture(member):
    return member["_vertex"].startswith("p")


def _lower(value):
    return value.strip().lower() if isinstance(value, str) and value.strip() else None


def _member(row):
    return {
        "key": str(row.get("key")),
        "dataset": row.get("dataset"),
        "url": row.get("url"),
        "status": row.get("status"),
        "sha256": _lower(row.get("sha256")),
        "phash": _lower(row.get("phash")),
        "dhash": _lower(row.get("dhash")),
        "width": row.get("width"),
        "height": row.get("height"),
        "distance": None,
        "dhash_distance": None,
        "_nurl": normalize_url(row.get("url")),
        "_vertex": _vertex(row),
        "_views": {
            v: (_lower(row.get(f"phash_{v}")), _lower(row.get(f"dhash_{v}")))
            for v in VIEW_NAMES
            if _hex16(row.get(f"phash_{v}"))
        },
    }


# --- stats -------------------------------------------------------------------------------------


def _dataset_order(name):
    order = list(schema.DATASETS)
    return (order.index(name) if name in order else len(order), str(name))


def _cluster_stats(record):
    """One cluster's contribution to summary.json (summed by SumNestedCounts)."""
    size = record["size"]
    if record["is_placeholder"]:
        return {
            "placeholder_groups": 1,
            "placeholder_rows": size,
            "placeholder_rows_by_dataset": dict(record["datasets"]),
        }
    stats = {
        "clusters": 1,
        "duplicated_rows": size,
        "redundant_rows": size - 1,
        f"{record['kind']}_clusters": 1,
        "matches": {},
        "within_dataset": {},
        "across_datasets": {},
    }
    stats["matches"] = dict(record["matches"])
    datasets = sorted(record["datasets"], key=_dataset_order)
    for d in datasets:
        n = record["datasets"][d]
        if n > 1:
            stats["within_dataset"][d] = {"clusters": 1, "rows": n}
    for a, b in itertools.combinations(datasets, 2):
        stats["across_datasets"][f"{a}|{b}"] = {"clusters": 1, "rows": record["datasets"][a] + record["datasets"][b]}
    return stats


def _add(into, other):
    for k, v in other.items():
        if isinstance(v, dict):
            _add(into.setdefault(k, {}), v)
        else:
            into[k] = into.get(k, 0) + v
    return into


class SumNestedCounts(beam.CombineFn):
    """Sums nested dicts of counts into one dict."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, element):
        return _add(acc, element)

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for acc in accumulators:
            _add(merged, acc)
        return merged

    def extract_output(self, acc):
        return acc


def _finish_stats(stats, config):
    out = {
        "rows": 0,
        "clusters": 0,
        "duplicated_rows": 0,
        "redundant_rows": 0,
        "exact_clusters": 0,
        "near_clusters": 0,
        "matches": {k: 0 for k in MATCH_KINDS},
        "within_dataset": {},
        "across_datasets": {},
        "near_pairs": 0,
        "view_pairs": {},
        "urls_with_several_pictures": 0,
        "placeholder_groups": 0,
        "placeholder_rows": 0,
        "placeholder_rows_by_dataset": {},
    }
    _add(out, stats)
    out["within_dataset"] = dict(sorted(out["within_dataset"].items(), key=lambda kv: _dataset_order(kv[0])))
    out["across_datasets"] = dict(
        sorted(out["across_datasets"].items(), key=lambda kv: tuple(_dataset_order(d) for d in kv[0].split("|")))
    )
    out["config"] = config
    return out


# --- the transform -----------------------------------------------------------------------------


def slim_row(row):
    """What dedup needs of a row to find its matches: key, graph vertex, normalised URL (digest), sha256."""
    nurl = normalize_url(row.get("url"))
    return {
        "key": row.get("key"),
        "vertex": _vertex(row),
        "nurl": None if nurl is None else _digest(b"u", nurl),
        "sha256": _lower(row.get("sha256")),
        "views": _view_ints(row),
    }


def _view_ints(row):
    """(pHash, dHash) ints of each view in VIEW_NAMES order, flattened, 0 where missing; None for
    a row without any view (or without a plain pHash: no vertex to match through)."""
    if _hex16(row.get("phash")) is None:
        return None
    out = []
    for view in VIEW_NAMES:
        p, d = _hex16(row.get(f"phash_{view}")), _hex16(row.get(f"dhash_{view}"))
        out += [int(p, 16) if p else 0, int(d, 16) if (p and d) else 0]
    return tuple(out) if any(out) else None


class _ViewNodes(beam.DoFn):
    """A batch of slim rows -> one (pHash array, dHash array, {view: (pHash, dHash arrays)}) batch
    of the distinct non-placeholder pictures that have views, for the view search."""

    def __init__(self, views):
        self._views = tuple(views)

    def process(self, batch, placeholders):
        seen = {}
        for slim in batch:
            views, vertex = slim.get("views"), slim["vertex"]
            if views is None or vertex[0] != "p" or vertex in placeholders or vertex in seen:
                continue
            _kind, a, b = _vertex_parts(vertex)
            seen[vertex] = (a, b) + views
        if not seen:
            return
        table = np.array(list(seen.values()), dtype=np.uint64)
        views = {v: (table[:, 2 + 2 * i], table[:, 3 + 2 * i]) for i, v in enumerate(VIEW_NAMES) if v in self._views}
        yield table[:, 0], table[:, 1], views


def _view_edge(pair):
    pa, da, pb, db = pair[:4]
    return _vertex_of_ints(pa, da), _vertex_of_ints(pb, db)


def _no_placeholder(pair, placeholders):
    """A view pair neither of whose pictures is a placeholder (those match nothing)."""
    pa, da, pb, db = pair[:4]
    return _vertex_of_ints(pa, da) not in placeholders and _vertex_of_ints(pb, db) not in placeholders


def _near_edge(pair):
    pa, da, pb, db, _pdist, _ddist = pair
    return _vertex_of_ints(pa, da), _vertex_of_ints(pb, db)


# The spill subdirectories of the search, removed once the components are known; "clusters" (the
# clustered rows) goes with the whole spill directory when the clusters are done.
_SEARCH_SPILLS = ("keys", "near", "views")


class Dedup(beam.PTransform):
    """Rows -> {"rows": rows with cluster_id/is_canonical/is_placeholder, "clusters": cluster
    records (see WriteDuplicates), "stats": one dict for summary.json}.

    max_distance: pHash Hamming distance at or under which two pictures are near-duplicates.
    dhash_max_distance: dHash confirmation threshold (None: pHash alone).
    dataset_priority: tie-break of the canonical policy (see module docstring).
    placeholder_min_urls / placeholder_hashes: placeholder recognition.
    cc_rounds: large/small-star rounds before the exact union-find finish.
    bands / shard_bits: override the near-search geometry (transforms.clustering.near_search.BandPlan);
        shard_bits shards the view search's bands too.
    max_listed_members: members listed per cluster record (the canonical always is); `size`
        and the counts stay exact, and rows carry cluster_id whatever the cap.
    spill_dir: a local directory through which the per-row key records, the near and view
        searches' routed hashes and the clustered rows are grouped (transforms.clustering.spill),
        removed when done; local runs only. None: the runner's GroupByKey (Dataflow's shuffle is
        on disk already).
    views: the picture views matched through (phash_<view>/dhash_<view> columns; default all of
        mirror, trim, crop, centre; () turns the view search off), docs/duplicates.md.
    view_max_distance: pHash distance at or under which two view keys meet (dHash of the same
        views confirms, as dhash_max_distance says).
    """

    # why a class flag: only the ingest (DedupShards) checks its keys; the dedup job's inputs may hold
    # a key twice (older outputs) and it checks its keys in its own first pass (key_versions.py)
    CHECKS_ROW_KEYS = False

    def __init__(
        self,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        dataset_priority: Sequence[str] = DEFAULT_DATASET_PRIORITY,
        dhash_max_distance: int | None = DEFAULT_DHASH_MAX_DISTANCE,
        placeholder_min_urls: int = DEFAULT_PLACEHOLDER_MIN_URLS,
        placeholder_hashes: Iterable[str] = known_placeholder_hashes(),
        cc_rounds: int = 6,
        bands: int | None = None,
        shard_bits: int = 3,
        max_listed_members: int = 10000,
        spill_dir: str | None = None,
        views: Sequence[str] = DEFAULT_MATCH_VIEWS,
        view_max_distance: int = DEFAULT_VIEW_MAX_DISTANCE,
    ) -> None:
        super().__init__()
        self._spill_dir = spill_dir
        unknown = set(views) - set(VIEW_NAMES)
        if unknown:
            raise ValueError(f"unknown views {sorted(unknown)}; known: {', '.join(VIEW_NAMES)}")
        self._views = tuple(v for v in VIEW_NAMES if v in views)
        self._view_max = int(view_max_distance)
        # The view search is sharded as the plain search (issue 16): a view group's owners are one
        # key a picture per band (its plain pHash, or its centre view), as many as the plain
        # search's, so the same shard bits bound its owner index whatever the row count. The
        # price is disk (and Dataflow shuffle): each view query key is copied to V(s, 1) = s + 1
        # shards of a band (the cap of 1 bit, 9aba29c, predates the streamed query chunks).
        self._view_search = (
            ViewPairs(self._view_max, dhash_max_distance, shard_bits=shard_bits, spill_dir=self._spill("views"))
            if self._views
            else None
        )
        self._max_distance = int(max_distance)
        self._priority = tuple(dataset_priority)
        self._dhash_max = dhash_max_distance
        self._min_urls = int(placeholder_min_urls)
        self._known = frozenset(h.strip().lower() for h in placeholder_hashes)
        self._rounds = cc_rounds
        self._max_listed = int(max_listed_members)
        # why: with views on, candidates met past max_distance that dHash confirms closely join too
        self._wide = (
            (self._max_distance + WIDE_EXTRA, WIDE_DHASH_MAX_DISTANCE)
            if self._views and dhash_max_distance is not None
            else None
        )
        self._near = NearDuplicatePairs(
            self._max_distance,
            dhash_max_distance,
            bands=bands,
            shard_bits=shard_bits,
            arrays=True,
            spill_dir=self._spill("near"),
            wide=self._wide,
        )

    @property
    def views(self) -> tuple[str, ...]:
        """The views matched through (VIEW_NAMES order; () when the view search is off)."""
        return self._views

    def _spill(self, name):
        """The spill subdirectory `name` (one of _SEARCH_SPILLS, or "clusters"); None remote."""
        return None if self._spill_dir is None else os.path.join(self._spill_dir, name)

    def config(self) -> dict[str, Any]:
        """The thresholds and search geometry, as summary.json reports them."""
        return {
            "max_distance": self._max_distance,
            "dhash_max_distance": self._dhash_max,
            "dataset_priority": list(self._priority),
            "placeholder_min_urls": self._min_urls,
            "near_search": self._near.plan.describe(),
            "cc_rounds": self._rounds,
            "views": list(self._views),
            "view_max_distance": self._view_max if self._views else None,
            "view_search": self._view_search.plan.describe() if self._view_search else None,
            "near_wide": list(self._wide) if self._wide else None,
        }

    def expand(self, rows):
        slim = rows | "Slim" >> beam.Map(slim_row)
        found = self.find_components(slim)
        components = beam.pvalue.AsDict(found["components"])
        placed = rows | "Place" >> beam.FlatMap(_place, components=components).with_output_types(
            tuple[str, typing.Any]
        ).with_outputs(_SINGLE, main="members")
        clustered = self.cluster(placed.members)
        out_rows = (placed[_SINGLE], clustered["rows"]) | "AllRows" >> beam.Flatten()
        stats = self.stats(clustered["clusters"], slim, found)
        return {"rows": out_rows, "clusters": clustered["clusters"], "stats": stats}

    def find_components(self, slim):
        """Slim rows -> {"components": (vertex, (rank, component)) for every vertex in a cluster,
        "near_pairs": the near search's pairs, "view_pairs": the view search's (None without views),
        "row_keys": the key shards' counts, "several_pictures": the digest of each URL that held
        several pictures}. Vertices not listed are alone."""
        shards = (
            slim
            | "BatchKeys" >> beam.BatchElements(min_batch_size=256, max_batch_size=8192)
            | "KeyRecords" >> beam.ParDo(_KeyRecords(self._known, row_keys=self.CHECKS_ROW_KEYS))
            | "GroupKeyShards" >> GroupRecords(self._spill("keys"), dtype_of=_key_record_dtype)
            | "KeyShards"
            >> beam.ParDo(_KeyShard(self._min_urls, self._known)).with_outputs(
                _KeyShard.PLACEHOLDER, _KeyShard.SEVERAL, _KeyShard.EXACT, _KeyShard.ROW_KEYS, main="nodes"
            )
        )
        placeholder_groups = shards[_KeyShard.PLACEHOLDER]
        placeholders = beam.pvalue.AsDict(placeholder_groups)
        exact = shards[_KeyShard.EXACT] | "StarEdges" >> beam.FlatMap(
            _star_edges, placeholders=placeholders
        ).with_outputs(_SEVERAL_PICTURES, main="edges")
        exact_edges = exact.edges
        near_pairs = shards.nodes | "NearSearch" >> self._near
        near_edges = near_pairs | "NearEdges" >> beam.Map(_near_edge)
        edges = [exact_edges, near_edges]
        view_pairs = None
        if self._views:
            view_pairs = (
                slim
                | "BatchViews" >> beam.BatchElements(min_batch_size=256, max_batch_size=8192)
                # why: distinct pictures with their view keys, as numpy batches; placeholders are
                # dropped from the pairs below, not here: a side input here would keep this stage
                # from fusing with the slim rows', and a local runner would hold every slim row
                | "ViewNodes" >> beam.ParDo(_ViewNodes(self._views), placeholders={})
                # why: copies that pHash misses (mirrored, letterboxed, cropped, captioned)
                | "ViewSearch" >> self._view_search
                | "NoPlaceholderPairs" >> beam.Filter(_no_placeholder, placeholders=placeholders)
            )
            edges.append(view_pairs | "ViewEdges" >> beam.Map(_view_edge))
        labels = tuple(edges) | "AllEdges" >> beam.Flatten() | "Components" >> ConnectedComponents(rounds=self._rounds)
        # Only vertices in a cluster are listed, so the map stays as small as the duplicates.
        components = (
            (
                placeholder_groups
                | "PlaceholderRank"
                >> beam.MapTuple(lambda vertex, _: (vertex, (_RANK_PLACEHOLDER, _PLACEHOLDER + vertex))),
                labels | "EdgeRank" >> beam.MapTuple(lambda vertex, label: (vertex, (_RANK_EDGE, label))),
                shards[_KeyShard.SEVERAL] | "PictureRank" >> beam.Map(lambda vertex: (vertex, (_RANK_PICTURE, vertex))),
            )
            | "AllComponents" >> beam.Flatten()
            | "OneComponent" >> beam.CombinePerKey(min)
        )
        if self._spill_dir is not None:  # every reader of the search's records is upstream of this
            _ = components | "DropSpill" >> RemoveDirectory(*(self._spill(name) for name in _SEARCH_SPILLS))
        return {
            "components": components,
            "near_pairs": near_pairs,
            "view_pairs": view_pairs,
            "row_keys": shards[_KeyShard.ROW_KEYS],
            "several_pictures": exact[_SEVERAL_PICTURES],
        }

    def cluster(self, members):
        """(component, row) -> {"rows": member rows with cluster columns, "clusters": records}."""
        clustered = (
            members
            # why through files in a local run: every clustered row crosses this shuffle, and a
            # local runner would hold them all (encoded, then a group decoded) in memory
            | "GroupClusters" >> GroupEncoded(self._spill("clusters"))
            | "Cluster"
            >> beam.ParDo(
                _Cluster(
                    self._priority, self._max_distance, self._dhash_max, self._max_listed, self._views, self._view_max
                )
            ).with_outputs(_Cluster.CLUSTERS, main="rows")
        )
        if self._spill_dir is not None:  # the last reader of the spill: all of it goes once it is done
            _ = (
                clustered.rows
                | "CountClustered" >> beam.combiners.Count.Globally()
                | "DropClusterSpill" >> RemoveDirectory(self._spill_dir)
            )
        return {"rows": clustered.rows, "clusters": clustered[_Cluster.CLUSTERS]}

    def stats(self, clusters: Any, slim: Any, found: dict[str, Any]) -> Any:
        """One summary dict (duplicates figures) of a run.

        Args:
            clusters: the cluster records (`cluster`'s "clusters").
            slim: the slim rows.
            found: what `find_components` returned (its near and view pairs, and the URLs of
                several pictures).

        Returns:
            A PCollection of one dict for summary.json's "duplicates".
        """
        near_pairs, view_pairs = found["near_pairs"], found["view_pairs"]
        partials = [
            clusters | "ClusterStats" >> beam.Map(_cluster_stats),
            slim | "CountRows" >> beam.combiners.Count.Globally() | "RowsStat" >> beam.Map(lambda n: {"rows": n}),
            near_pairs
            | "CountNear" >> beam.combiners.Count.Globally()
            | "NearStat" >> beam.Map(lambda n: {"near_pairs": n}),
            found["several_pictures"]
            | "CountSeveralPictures" >> beam.combiners.Count.Globally()
            | "SeveralPicturesStat" >> beam.Map(lambda n: {"urls_with_several_pictures": n}),
        ]
        if view_pairs is not None:
            partials.append(view_pairs | "CountViewPairs" >> beam.Map(lambda p: {"view_pairs": {p[4]: 1}}))
        return (
            tuple(partials)
            | "AllStats" >> beam.Flatten()
            | "SumStats" >> beam.CombineGlobally(SumNestedCounts())
            | "FinishStats" >> beam.Map(_finish_stats, self.config())
        )


class DedupShards(Dedup):
    """Dedup for rows that are already in Parquet shards (the ingest): the full rows never cross
    a shuffle (the local runner holds whatever crosses one in memory).

    Input {"slim": slim_row() of every row, "shards": paths of the shards holding the rows}.
    Output {"rows": the rows of clusters only, with their cluster columns (rows not listed are
    alone: cluster_id None, is_canonical True, is_placeholder False), "clusters", "stats",
    "row_keys": each key shard's (distinct keys, doubled key digests), for row_keys.KeyBooks}.
    """

    CHECKS_ROW_KEYS = True

    def expand(self, inputs):
        found = self.find_components(inputs["slim"])
        members = inputs["shards"] | "Members" >> beam.FlatMap(
            _shard_members, components=beam.pvalue.AsDict(found["components"])
        )
        clustered = self.cluster(members)
        stats = self.stats(clustered["clusters"], inputs["slim"], found)
        return {
            "rows": clustered["rows"],
            "clusters": clustered["clusters"],
            "stats": stats,
            "row_keys": found["row_keys"],
        }


# the view columns a placeholder group's rows go without (phash_trim: the canonical policy reads it)
_VIEW_FIELDS = frozenset(f"{h}_{v}" for v in VIEW_NAMES for h in ("phash", "dhash")) - {"phash_trim"}
MEMBER_FIELDS = ("key", "dataset", "url", "status", "sha256", "phash", "dhash", "width", "height") + tuple(
    f"{h}_{v}" for v in VIEW_NAMES for h in ("phash", "dhash")
)


def _shard_members(path, components):
    if not components:
        return
    from transforms.io.checked_parquet import open_table_file, table_batches  # only workers need pyarrow

    parquet = open_table_file(path)
    names = set(parquet.schema_arrow.names)  # tables written before the view columns lack them
    for batch in table_batches(path, [c for c in MEMBER_FIELDS if c in names], parquet=parquet):
        for row in batch.to_pylist():
            yield from _place(row, components, singles=False)


class WriteDuplicates(beam.PTransform):
    """Cluster records -> OUT/duplicates/clusters-SSSSS-of-NNNNN.jsonl (one JSON object a line).

    JSON Lines because members are a variable-length nested list and the files are meant to be
    read by people and `jq` as much as by programs. Fields: cluster_id, canonical_key,
    is_placeholder, size, kind (exact | near | placeholder), datasets {name: rows}, matches
    {match: rows}, max_distance, members_listed (<= Dedup's max_listed_members, 10000 by
    default: a 500K-row placeholder is not one 100 MB line), members [{key, dataset, url,
    status, sha256, phash, dhash, width, height, distance, dhash_distance, match}] with the
    canonical first; distance = pHash (dhash_distance = dHash)
    Hamming distance to the canonical row; match = canonical | sha256 | url | phash | near |
    transitive (linked only through other members) | placeholder.
    Works on any Beam filesystem (local, gs://).
    """

    def __init__(self, out_dir: str, num_shards: int = 0) -> None:
        super().__init__()
        self._prefix = FileSystems.join(out_dir, "duplicates", "clusters")
        self._num_shards = num_shards

    def expand(self, clusters):
        return (
            clusters
            | "ToJson" >> beam.Map(lambda c: json.dumps(c, ensure_ascii=False, sort_keys=False))
            | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl", num_shards=self._num_shards)
        )

"""Near-duplicate candidate search over 64-bit perceptual hashes, without all-pairs comparison.

The scheme is multi-index hashing (pigeonhole banding) with bit-flip probing, and its recall is
exact up to the threshold, not probabilistic. The arithmetic:

* The 64 hash bits are split into `m` disjoint bands (sizes differ by at most one bit).
* If two hashes differ in d <= k bits and every band differed in r+1 bits or more, d would be at
  least m*(r+1). So with r = floor(k / m) (and then m*(r+1) > k) at least ONE band of the pair
  differs in <= r bits. Searching every band for band values within radius r therefore finds
  every pair at distance <= k. Each candidate is then checked on the full 64 bits (and on dHash).
* Per band of b bits a hash probes V(b, r) = sum_{i<=r} C(b, i) band values, each an exact lookup
  (two reads of a dense offsets table of the shard) that meets about U / 2^b owners (U distinct
  hashes, for evenly spread bits). `plan_bands` picks m to minimise
      m * V(64/m, r) * (1 + U / 2^(64/m) * pair_cost)
  For the default k=8 this gives m=3, r=2: bands of 22/21/21 bits, 232 probes per band, about
  700 lookups per hash, and ~0.5 candidates per lookup at U=1M, i.e. O(U) work instead of O(U^2).
* pHash bits are DCT coefficients in row-major order, so neighbouring bits are correlated and
  bit 0 (DC) is nearly always set. Bands take every m-th bit (interleaved) so each band mixes
  low and high frequencies and buckets stay even. A permutation keeps Hamming distances.

Distribution (Beam): each band is cut into 2^s shards by the top s bits of the band value. A hash
is the OWNER of one shard per band and is sent as a QUERY to every shard whose prefix is within r
of its own prefix (V(s, r) shards), with the flips left over (r minus the prefix flips) spent on
the low bits inside the shard. The shuffle carries numpy arrays of (hash, dhash) per batch, so
the element count is batches x shards, not hashes x probes. Inside a shard, lookups and checks
are vectorised with numpy and processed in bounded chunks, so a crowded bucket costs memory in
proportion to the chunk, not to the square of its size (its TIME still grows with the number
of distinct hashes sharing a band value times their probes: exact recall has to check them).

Each unordered pair is emitted once: only from the query side with (query < owner), and only in
the lowest-numbered band in which the pair is within r (later bands skip it).
Identical hashes are the caller's business: pass DISTINCT (phash, dhash) values; thousands of
rows with one hash are one node here, so they cannot blow up a bucket quadratically.

Public transform: `NearDuplicatePairs(max_distance, dhash_max_distance)`: distinct `(phash, dhash)`
-> `(phash_a, dhash_a, phash_b, dhash_b, phash_distance, dhash_distance)` int tuples, each pair once
(`BandPlan` is its geometry, `plan_bands` / `volume` its arithmetic).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import apache_beam as beam
import numpy as np

from transforms.clustering.freed_memory import release_freed_memory
from transforms.clustering.spill import GroupRecords, split_by

__all__ = [
    "HASH_BITS",
    "NO_DHASH",
    "ROUTED_RECORD",
    "OWNERS_PER_GROUP",
    "QUERY_CHUNK",
    "volume",
    "plan_bands",
    "shard_bits_for",
    "gather_owners",
    "query_chunks",
    "BandPlan",
    "NearDuplicatePairs",
]

HASH_BITS = 64
NO_DHASH = np.uint64(0)
# One routed hash: an owner of its (band, shard) or a query into it.
ROUTED_RECORD = np.dtype([("owner", "?"), ("phash", "<u8"), ("dhash", "<u8")])

# The most owners a (band, shard) group should hold (its index: ~25 bytes an owner, ~80 while
# built): shard_bits_for picks the shard count from the expected hashes so that memory stays
# flat in the row count; and the queries a group searches at once (17 bytes a record on disk,
# ~60 while searched: 2^20 of them made the near search the one stage that grew from 100K to
# 1M rows, +140 MiB, bench/stage_memory.py).
OWNERS_PER_GROUP = 1 << 20
QUERY_CHUNK = 1 << 18

# A shard's dense lookup table (owner_index) has 2^low_bits slots: built only where the owners number
# at least 1/2^8 of them (16K owners at 22 bits, a 1M-row run's shards hold ~125K).
_DENSE_TABLE_SLOTS_PER_OWNER_BITS = 8

# Relative cost of checking one candidate pair vs one sorted-table lookup (measured roughly:
# a vectorised xor+popcount is ~20x cheaper than a searchsorted probe).
_PAIR_COST = 0.05


def volume(bits: int, radius: int) -> int:
    """V(b, r): how many b-bit values lie within Hamming distance r of a given one."""
    return sum(math.comb(bits, i) for i in range(radius + 1))


def plan_bands(max_distance: int, expected_hashes: int = 1 << 24) -> tuple[int, int]:
    """(m, r): band count and per-band probe radius with guaranteed recall up to max_distance.

    Any m works with r = max_distance // m (see the module docstring); m is chosen to minimise
    the estimated lookups + candidate checks for `expected_hashes` distinct hashes (default 16M,
    CC12M scale). Bands narrower than 8 bits are never used: their buckets would be huge.
    """
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance must be in [0, {HASH_BITS}), got {max_distance}")
    best: tuple[float, int, int] = (math.inf, 0, 0)  # (cost, m, r)
    for m in range(1, HASH_BITS // 8 + 1):
        r = max_distance // m
        b = HASH_BITS / m
        cost = m * volume(int(b), r) * (1 + expected_hashes / 2.0**b * _PAIR_COST)
        if cost < best[0]:
            best = (cost, m, r)
    return best[1], best[2]


def shard_bits_for(hashes: int, owners_per_group: int = OWNERS_PER_GROUP) -> int:
    """The fewest shard bits s with at most `owners_per_group` owners in each of the 2^s shards
    of a band, for `hashes` distinct hashes spread evenly (each band's owners are all hashes).

    Fewer shards cost less: each query is copied to V(s, r) shards of a band. More keep the
    owner index of a group bounded, whatever the row count.

    Args:
        hashes: the expected distinct hashes (the row count is an upper bound).
        owners_per_group: the most owners a group should hold.

    Returns:
        s, from 0 (one shard per band) to 16.
    """
    bits = 0
    while bits < 16 and hashes > owners_per_group << bits:
        bits += 1
    return bits


class BandPlan:
    """The fixed geometry of one search: bands, shards, bit permutation and probe masks."""

    def __init__(
        self, max_distance: int, bands: int | None = None, shard_bits: int = 3, expected_hashes: int = 1 << 24
    ) -> None:
        if bands is None:
            bands, radius = plan_bands(max_distance, expected_hashes)
        else:
            if not 1 <= bands <= HASH_BITS:
                raise ValueError(f"bands must be in [1, 64], got {bands}")
            radius = max_distance // bands
        assert bands * (radius + 1) > max_distance  # the pigeonhole guarantee
        self.max_distance = max_distance
        self.bands = bands
        self.radius = radius
        # Band j holds the bits i with i % m == j (interleaved), packed into a contiguous
        # field of the permuted hash: band 0 in the low bits, band m-1 in the high bits.
        self.sizes = [len(range(j, HASH_BITS, bands)) for j in range(bands)]
        self.offsets = [sum(self.sizes[:j]) for j in range(bands)]
        self.shard_bits = max(0, min(shard_bits, min(self.sizes)))
        position = {}
        for j in range(bands):
            for t, i in enumerate(range(j, HASH_BITS, bands)):
                position[i] = self.offsets[j] + t
        # Byte lookup tables: permuting a hash is 8 table lookups and ORs, vectorised.
        self._lut = np.zeros((8, 256), dtype=np.uint64)
        for byte in range(8):
            for value in range(256):
                out = 0
                for bit in range(8):
                    if value >> bit & 1:
                        out |= 1 << position[8 * byte + bit]
                self._lut[byte, value] = out
        self.band_masks = [np.uint64(((1 << s) - 1) << o) for s, o in zip(self.sizes, self.offsets, strict=True)]
        # Probe masks over the low (in-shard) bits of each band, by popcount.
        self._low_masks = {}
        for j in range(bands):
            low = self.sizes[j] - self.shard_bits
            self._low_masks[j] = [_masks(low, t) for t in range(radius + 1)]
        self._prefix_masks = [_masks(self.shard_bits, t) for t in range(radius + 1)]

    def __getstate__(self):  # small to pickle: rebuild the tables on the worker
        return (self.max_distance, self.bands, self.shard_bits)

    def __setstate__(self, state):
        max_distance, bands, shard_bits = state
        self.__init__(max_distance, bands=bands, shard_bits=shard_bits)

    def describe(self) -> dict[str, Any]:
        """The geometry as summary.json reports it."""
        return {
            "max_distance": self.max_distance,
            "bands": self.bands,
            "radius": self.radius,
            "band_bits": self.sizes,
            "shard_bits": self.shard_bits,
            "shards": self.bands << self.shard_bits,
            "probes_per_hash": sum(volume(s, self.radius) for s in self.sizes),
            "query_copies_per_hash": self.bands * volume(self.shard_bits, self.radius),
        }

    def permute(self, hashes):
        hashes = np.asarray(hashes, dtype=np.uint64)
        out = np.zeros_like(hashes)
        for byte in range(8):
            index = ((hashes >> np.uint64(8 * byte)) & np.uint64(255)).astype(np.intp)
            out |= self._lut[byte][index]
        return out

    def band(self, permuted, j):
        return (permuted >> np.uint64(self.offsets[j])) & np.uint64((1 << self.sizes[j]) - 1)

    def prefix(self, band_values, j):
        return band_values >> np.uint64(self.sizes[j] - self.shard_bits)

    def route(self, phash, dhash):
        """Yield ((band, shard), role, phash, dhash) numpy slices for one batch of hashes.

        role "o" (owner) once per band; role "q" (query) once per shard within r of the prefix.
        """
        phash = np.asarray(phash, dtype=np.uint64)
        dhash = np.asarray(dhash, dtype=np.uint64)
        permuted = self.permute(phash)
        for j in range(self.bands):
            prefix = self.prefix(self.band(permuted, j), j)
            for shard, idx in split_by(prefix):
                yield (j, shard), "o", phash[idx], dhash[idx]
            for masks in self._prefix_masks:
                for mask in masks:
                    for shard, idx in split_by(prefix ^ np.uint64(mask)):
                        yield (j, shard), "q", phash[idx], dhash[idx]

    def search_shard(
        self,
        j,
        shard,
        owners,
        queries,
        dhash_max_distance=None,
        chunk_pairs=1 << 20,
        chunk_probes=1 << 18,
        ordered=True,
        wide=None,
    ):
        """Pairs within the threshold between queries and owners of shard (band j, shard).

        owners/queries: (phash uint64 array, dhash uint64 array, has_dhash bool array).
        Yields (phash_q, dhash_q, phash_o, dhash_o, pdist, ddist) arrays per chunk, with the
        pair-once rules of the module docstring applied. ordered=False drops the
        "query below owner" rule (queries and owners are different keys: the view search).
        wide=(pHash k', dHash d'): also keep a pair the probes met at pHash distance <= k' (beyond
        max_distance) whose dHashes are both there and within d' (see NearDuplicatePairs).
        """
        if len(owners[0]) == 0 or len(queries[0]) == 0:
            return
        index = self.owner_index(j, owners)
        yield from self.search_index(
            index, shard, queries, dhash_max_distance, chunk_pairs, chunk_probes, ordered, wide=wide
        )

    def owner_index(self, j, owners):
        """The lookup index of one shard's owners in band j, built once and searched by any
        number of query chunks (`search_index`).

        Args:
            j: the band.
            owners: (phash uint64 array, dhash uint64 array, has_dhash bool array).

        Returns:
            An opaque tuple for search_index: the owners sorted by their in-shard band bits and
            a lookup of those bits (a dense offsets table up to 24 bits, else binary search).
        """
        o_p, o_d, o_has = owners
        low_bits = self.sizes[j] - self.shard_bits
        low_mask = np.uint64((1 << low_bits) - 1)
        o_perm = self.permute(o_p)
        o_low = self.band(o_perm, j) & low_mask
        order = np.argsort(o_low, kind="stable")
        o_p, o_d, o_has, o_perm, o_low = (a[order] for a in (o_p, o_d, o_has, o_perm, o_low))
        if low_bits <= 24 and len(o_low) << _DENSE_TABLE_SLOTS_PER_OWNER_BITS >= 1 << low_bits:
            # Dense offsets table (CSR): lookup of a low value is two array reads, ~7x faster
            # than a binary search. 2^low_bits + 1 int32 entries (16 MiB at 22 bits), built in
            # place from the owners' distinct values, so no table-sized temporary. Why not for a
            # few owners: building the table costs ~10 ms whatever their count, and a small
            # shard's queries are as few (each query is a copy of some shard's owner), so a
            # binary search over a short array costs less than the table; a small run has ~50
            # such shards, each paying it.
            values, counts = np.unique(o_low, return_counts=True)
            starts = np.zeros((1 << low_bits) + 1, dtype=np.int32 if len(o_low) < 2**31 else np.int64)
            starts[values.astype(np.intp) + 1] = counts
            np.cumsum(starts, out=starts)

            def lookup(probes):
                probes = probes.astype(np.intp)
                lo = starts[probes]
                return lo, starts[probes + 1]
        else:

            def lookup(probes):
                return (np.searchsorted(o_low, probes, side="left"), np.searchsorted(o_low, probes, side="right"))

        return j, (o_p, o_d, o_has, o_perm), lookup

    def search_index(
        self,
        index,
        shard,
        queries,
        dhash_max_distance=None,
        chunk_pairs=1 << 20,
        chunk_probes=1 << 18,
        ordered=True,
        wide=None,
    ):
        """Pairs within the threshold between `queries` and the owners of `index` (owner_index),
        as search_shard yields them; memory in proportion to the queries given and the chunks.

        Args:
            index: owner_index(j, owners) of the shard's owners.
            shard: the shard (prefix) the queries were routed to.
            queries: (phash uint64 array, dhash uint64 array, has_dhash bool array).
            dhash_max_distance, chunk_pairs, chunk_probes, ordered, wide: as search_shard's.

        Yields:
            (phash_q, dhash_q, phash_o, dhash_o, pdist, ddist) arrays per chunk.
        """
        j, owners, lookup = index
        q_p, q_d, q_has = queries
        if len(owners[0]) == 0 or len(q_p) == 0:
            return
        low_mask = np.uint64((1 << (self.sizes[j] - self.shard_bits)) - 1)
        q_perm = self.permute(q_p)
        q_band = self.band(q_perm, j)
        q_low = q_band & low_mask
        # Flips already spent reaching this shard's prefix; the rest goes to the low bits.
        budget = self.radius - np.bitwise_count(self.prefix(q_band, j) ^ np.uint64(shard)).astype(np.int64)
        earlier = self.band_masks[:j]
        for b in range(self.radius + 1):
            sel = np.nonzero(budget == b)[0]
            if len(sel) == 0:
                continue
            masks = np.array([m for t in range(b + 1) for m in self._low_masks[j][t]], dtype=np.uint64)
            step = max(1, chunk_probes // len(masks))  # bounds memory: queries x masks
            for start in range(0, len(sel), step):
                qi = sel[start : start + step]
                probes = q_low[qi][:, None] ^ masks[None, :]
                lo, hi = lookup(probes)
                row, _col = np.nonzero(hi > lo)
                if len(row) == 0:
                    continue
                hit = hi > lo
                probe_q, lo, hi = qi[row], lo[hit], hi[hit]
                for pq, po in _expand(probe_q, lo, hi, chunk_pairs):
                    yield from self._check(
                        pq, po, (q_p, q_d, q_has, q_perm), owners, earlier, dhash_max_distance, ordered, wide
                    )

    def _check(self, pq, po, queries, owners, earlier, dhash_max_distance, ordered=True, wide=None):
        """The candidate pairs (queries[pq], owners[po]) within the thresholds, as arrays (see
        search_index); `queries` and `owners` are (phash, dhash, has_dhash, permuted phash)."""
        q_p, q_d, q_has, q_perm = queries
        o_p, o_d, o_has, o_perm = owners
        qp, qd, op, od = q_p[pq], q_d[pq], o_p[po], o_d[po]
        if ordered:
            # Pair once: query strictly below owner in (phash, dhash) order (also drops self).
            ok = (qp < op) | ((qp == op) & (qd < od))
        else:
            ok = np.ones(len(pq), dtype=bool)
        x = q_perm[pq] ^ o_perm[po]
        pdist = np.bitwise_count(x).astype(np.int64)
        for mask in earlier:  # found in an earlier band: that band emits it
            ok &= np.bitwise_count(x & mask) > self.radius
        both = q_has[pq] & o_has[po]
        ddist = np.where(both, np.bitwise_count(qd ^ od).astype(np.int64), -1)
        if wide is None:
            ok &= pdist <= self.max_distance
        else:  # a candidate met anyway, past the guarantee: kept only when dHash agrees closely
            ok &= (pdist <= self.max_distance) | ((pdist <= wide[0]) & both & (ddist <= wide[1]))
        if dhash_max_distance is not None:
            ok &= ~both | (ddist <= dhash_max_distance)
        if ok.any():
            yield qp[ok], qd[ok], op[ok], od[ok], pdist[ok], ddist[ok]


def _masks(bits, popcount):
    """All `bits`-wide masks with exactly `popcount` bits set."""
    return [sum(1 << i for i in c) for c in combinations(range(bits), popcount)]


def _expand(probe_q, lo, hi, chunk_pairs):
    """Yield (query index, owner index) arrays for every owner in [lo, hi) of each probe,
    at most about chunk_pairs at a time (a huge bucket is sliced, never materialised whole)."""
    counts = hi - lo
    start = 0
    n = len(counts)
    while start < n:
        csum = np.cumsum(counts[start:])
        stop = start + max(1, int(np.searchsorted(csum, chunk_pairs, side="right")))
        if counts[start] > chunk_pairs:  # one crowded bucket: slice it
            for s in range(int(lo[start]), int(hi[start]), chunk_pairs):
                e = min(s + chunk_pairs, int(hi[start]))
                yield np.full(e - s, probe_q[start]), np.arange(s, e)
            start += 1
            continue
        c = counts[start:stop]
        total = int(c.sum())
        pq = np.repeat(probe_q[start:stop], c)
        # owner index = lo of its probe + position within the probe's run
        offsets = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
        po = np.repeat(lo[start:stop], c) + offsets
        yield pq, po
        start = stop


def _int(hex_or_int):
    if hex_or_int is None:
        return None
    if isinstance(hex_or_int, str):
        return int(hex_or_int, 16)
    return int(hex_or_int)


class _RouteToShards(beam.DoFn):
    def __init__(self, plan):
        self._plan = plan

    def process(self, batch):
        if isinstance(batch, tuple):  # (pHash array, dHash array) already
            phash, dhash = batch
        else:
            phash = np.fromiter((_int(p) for p, _ in batch), dtype=np.uint64, count=len(batch))
            # A missing dHash travels as 0 (NO_DHASH), see NearDuplicatePairs.
            dhash = np.fromiter((_int(d) or 0 for _, d in batch), dtype=np.uint64, count=len(batch))
        beam.metrics.Metrics.counter("dedup", "near_nodes").inc(len(phash))
        for key, role, p, d in self._plan.route(phash, dhash):
            if role == "o":
                beam.metrics.Metrics.counter("dedup", "near_owner_records").inc(len(p))
            else:
                beam.metrics.Metrics.counter("dedup", "near_query_records").inc(len(p))
            records = np.empty(len(p), dtype=ROUTED_RECORD)
            records["owner"], records["phash"], records["dhash"] = role == "o", p, d
            yield key, records


class _SearchShard(beam.DoFn):
    """((band, shard), re-iterable of ROUTED_RECORD arrays) -> pairs. Two passes over the group:
    its owners become one index, then its queries are searched against it `query_chunk` at a
    time, so memory holds the shard's owners (bounded by the shard count, `shard_bits_for`) and
    one chunk of queries, however many queries the shard got."""

    def __init__(self, plan, dhash_max_distance, query_chunk=QUERY_CHUNK, wide=None):
        self._plan = plan
        self._dhash_max = dhash_max_distance
        self._query_chunk = query_chunk
        self._wide = wide

    def process(self, element):
        (j, shard), parts = element
        owners = gather_owners(parts, ROUTED_RECORD)
        if not len(owners):
            return
        index = self._plan.owner_index(j, _arrays(owners))
        del owners  # the index holds its own sorted copies
        pairs = beam.metrics.Metrics.counter("dedup", "near_pairs")
        for queries in query_chunks(parts, self._query_chunk):
            found = self._plan.search_index(index, shard, _arrays(queries), self._dhash_max, wide=self._wide)
            for qp, qd, op, od, pdist, ddist in found:
                pairs.inc(len(qp))
                yield from zip(
                    qp.tolist(), qd.tolist(), op.tolist(), od.tolist(), pdist.tolist(), ddist.tolist(), strict=True
                )
        del index
        release_freed_memory()  # why: the group's temporaries would stay resident for the stages after


def gather_owners(parts, dtype):
    """The owner records (owner True) of a group's record arrays, as one array.

    Counted first, then copied into an array of that size: the owners are held once, not once
    as filtered parts and again while concatenated (at 1M owners of 34 bytes, 32 MiB less).

    Args:
        parts: a re-iterable of record arrays with an "owner" field (GroupRecords' group).
        dtype: their dtype.
    Returns:
        The owner records, in their order in `parts`.
    """
    owners = np.empty(sum(int(np.count_nonzero(part["owner"])) for part in parts), dtype=dtype)
    at = 0
    for part in parts:
        mine = part[part["owner"]]
        owners[at : at + len(mine)] = mine
        at += len(mine)
    return owners


def query_chunks(parts, chunk):
    """The query records (owner False) of ROUTED_RECORD arrays, in arrays of at most `chunk`.

    Args:
        parts: an iterable of ROUTED_RECORD arrays (a group's, as GroupRecords gives them).
        chunk: the most records an array yielded holds.

    Yields:
        ROUTED_RECORD arrays of queries, each of 1..chunk records, in their order in `parts`.
    """
    pending, count = [], 0
    for part in parts:
        queries = part[~part["owner"]]
        while len(queries):
            take = queries[: chunk - count]
            queries = queries[len(take) :]
            pending.append(take)
            count += len(take)
            if count >= chunk:
                yield np.concatenate(pending)
                pending, count = [], 0
    if count:
        yield np.concatenate(pending)


def _arrays(records):
    p, d = records["phash"], records["dhash"]
    return p, d, d != NO_DHASH


class NearDuplicatePairs(beam.PTransform):
    """PCollection of DISTINCT (phash, dhash) -> every pair within the thresholds, once.

    Input elements: (phash, dhash) as 16-hex-digit strings or ints; dhash may be None (then the
    pair is judged on pHash alone). With arrays=True, batches instead: (phash array, dhash array)
    of uint64, a missing dHash as 0. Output: (phash_a, dhash_a, phash_b, dhash_b, phash_distance,
    dhash_distance) as ints with (phash_a, dhash_a) < (phash_b, dhash_b); dhash_distance is -1
    where either dhash is missing. A dHash of exactly 0 is treated as missing (a flat image has
    no gradient to compare).
    spill_dir: a local directory the routed hashes are grouped through (transforms.clustering.spill; local
    runs only), instead of the runner's in-memory GroupByKey.
    wide: (pHash k', dHash d') or None. The probes also meet many pairs past max_distance (every
    pair that agrees within r bits in some band); with wide, such a pair is kept too when its
    pHash distance is <= k' and both dHashes are within d' (two hash families agreeing closely:
    e.g. a 3 % corner crop of a texture, pHash 10 and dHash 5-8 away). Recall is exact up to
    max_distance only; past it, a pair is found when the probes meet it.
    query_chunk: the most query records a (band, shard) group searches at once (its queries
    stream from the spill files or the runner's iterable; its owners are held as one index).
    """

    def __init__(
        self,
        max_distance: int,
        dhash_max_distance: int | None = None,
        bands: int | None = None,
        shard_bits: int = 3,
        batch_size: int = 8192,
        arrays: bool = False,
        spill_dir: str | None = None,
        wide: tuple[int, int] | None = None,
        query_chunk: int = QUERY_CHUNK,
    ) -> None:
        super().__init__()
        self._wide = wide
        self._query_chunk = query_chunk
        self._arrays = arrays
        self._spill_dir = spill_dir
        self._plan = BandPlan(max_distance, bands=bands, shard_bits=shard_bits)
        self._dhash_max = dhash_max_distance
        self._batch_size = batch_size

    @property
    def plan(self):
        return self._plan

    def expand(self, nodes):
        if not self._arrays:
            nodes = nodes | "Batch" >> beam.BatchElements(
                min_batch_size=min(256, self._batch_size), max_batch_size=self._batch_size
            )
        return (
            nodes
            | "RouteToShards" >> beam.ParDo(_RouteToShards(self._plan))
            # why: a group's records stay in its spill files, read back a chunk at a time
            | "GroupShards"
            >> GroupRecords(self._spill_dir, dtype_of=lambda _key: ROUTED_RECORD, chunk_records=self._query_chunk)
            | "SearchShards" >> beam.ParDo(_SearchShard(self._plan, self._dhash_max, self._query_chunk, self._wide))
        )


# --- the view search (issue 14): extra keys of each picture, docs/duplicates.md -------------------
#
# A picture's views (transforms/hashing.py VIEWS) are more 64-bit pHashes of the same decode: of
# the mirrored picture, without uniform borders, of its centre 85 % and 75 %. A copy that pHash
# misses meets its original through a view: a mirrored copy's plain pHash is the original's
# "mirror" view, a letterboxed copy's "trim" view is the original's plain pHash, a 10-20 %
# cropped copy's plain pHash is close to the original's "crop" view; "centre" views are compared
# with each other (a corner watermark, a caption banner or a small rotation leaves the centre).
# So there are two key spaces, each its own banded search with the arithmetic above:
#   space 0 "plain": owners = the plain pHash of every picture; queries = its mirror, trim and
#                    crop views;
#   space 1 "centre": owners and queries = the centre view of every picture.
# Each record carries the key searched, the dHash of the same view (the confirmation) and the
# picture's own (pHash, dHash) vertex, so a pair names the two vertices and the view. The plan is
# its own (view_max_distance, 3 bands: radius 1 for the default 5), which costs ~66 probes a key
# instead of the plain search's ~700: a view is an exact-ish match of pixels that were there.

VIEW_SPACES = {"mirror": 0, "trim": 0, "crop": 0, "centre": 1}
VIEW_IDS = {"plain": 0, "mirror": 1, "trim": 2, "crop": 3, "centre": 4}
VIEW_NAMES = {i: name for name, i in VIEW_IDS.items()}
# One routed view key: owner or query, which view, the key searched, the dHash of that view,
# the picture's vertex (plain pHash, plain dHash).
VIEW_RECORD = np.dtype(
    [("owner", "?"), ("view", "u1"), ("key", "<u8"), ("check", "<u8"), ("phash", "<u8"), ("dhash", "<u8")]
)
DEFAULT_VIEW_MAX_DISTANCE = 5


def view_records(phash, dhash, views):
    """Record arrays of one batch of pictures: (space, records) per key space.

    Args:
        phash, dhash: uint64 arrays, the pictures' vertices (dHash 0 = missing).
        views: {view name: (pHash uint64 array, dHash uint64 array)} aligned with phash, a
            pHash of 0 where the picture has no such view.

    Returns:
        {space: VIEW_RECORD array}: plain owners and mirror/trim/crop queries in space 0, centre
        owners and queries in space 1.
    """
    phash = np.asarray(phash, dtype=np.uint64)
    dhash = np.asarray(dhash, dtype=np.uint64)
    parts = {0: [_view_part(True, "plain", phash, dhash, phash, dhash)], 1: []}
    for name, (vp, vd) in views.items():
        vp, vd = np.asarray(vp, dtype=np.uint64), np.asarray(vd, dtype=np.uint64)
        has = vp != 0
        if not has.any():
            continue
        space = VIEW_SPACES[name]
        part = _view_part(False, name, vp[has], vd[has], phash[has], dhash[has])
        parts[space].append(part)
        if space == 1:  # centre views are compared with each other: owners as well
            owners = part.copy()
            owners["owner"] = True
            parts[space].append(owners)
    return {space: np.concatenate(p) for space, p in parts.items() if p}


def _view_part(owner, view, key, check, phash, dhash):
    records = np.empty(len(key), dtype=VIEW_RECORD)
    records["owner"], records["view"] = owner, VIEW_IDS[view]
    records["key"], records["check"], records["phash"], records["dhash"] = key, check, phash, dhash
    return records


def search_view_shard(plan, j, shard, records, dhash_max_distance=None):
    """Pairs of different pictures whose view keys are within plan.max_distance in one shard.

    Args:
        plan: the view search's BandPlan.
        j, shard: the band and shard these records were routed to.
        records: VIEW_RECORD array (owners and queries).
        dhash_max_distance: confirmation on the dHash of the same views (None: none).

    Returns:
        A list of (phash_a, dhash_a, phash_b, dhash_b, view, distance, dhash_distance) with
        (phash_a, dhash_a) the querying picture, view its view name; distance -1 never occurs.
    """
    owner = records["owner"]
    if not owner.any() or owner.all():
        return []
    return search_view_index(plan, view_index(plan, j, records[owner]), shard, records[~owner], dhash_max_distance)


def view_index(plan, j, owners):
    """The lookup index of one view group's owner records (VIEW_RECORD, owner True) in band j:
    built once, then searched by any number of query chunks (`search_view_index`)."""
    positions = np.arange(len(owners), dtype=np.uint64)  # the owner records by position
    return plan.owner_index(j, (owners["key"], positions, np.zeros(len(owners), dtype=bool))), owners


def search_view_index(plan, index, shard, queries, dhash_max_distance=None):
    """search_view_shard's pairs between `queries` (VIEW_RECORD, owner False) and the owners of
    `index` (view_index): memory in proportion to the queries given, not the whole group."""
    owner_index, o = index
    q = queries
    if not len(o) or not len(q):
        return []
    found = plan.search_index(
        owner_index,
        shard,
        (q["key"], np.arange(len(q), dtype=np.uint64), np.zeros(len(q), dtype=bool)),
        None,  # confirmation done below, on the views' dHashes
        ordered=False,
    )
    out = []
    for _qk, qi, _ok, oi, pdist, _dd in found:
        qr, orr = q[qi.astype(np.intp)], o[oi.astype(np.intp)]
        # a picture never matches itself (a symmetric picture's mirror is its plain pHash)
        keep = (qr["phash"] != orr["phash"]) | (qr["dhash"] != orr["dhash"])
        centre = qr["view"] == VIEW_IDS["centre"]
        # centre views meet twice (each is owner and query): keep the pair from its smaller side
        keep &= ~centre | (qr["phash"] < orr["phash"]) | ((qr["phash"] == orr["phash"]) & (qr["dhash"] < orr["dhash"]))
        both = (qr["check"] != NO_DHASH) & (orr["check"] != NO_DHASH)
        ddist = np.where(both, np.bitwise_count(qr["check"] ^ orr["check"]).astype(np.int64), -1)
        if dhash_max_distance is not None:
            keep &= ~both | (ddist <= dhash_max_distance)
        for a, b, view, pd, dd in zip(
            qr[keep].tolist(),
            orr[keep].tolist(),
            qr["view"][keep].tolist(),
            pdist[keep].tolist(),
            ddist[keep].tolist(),
            strict=True,
        ):
            out.append((a[4], a[5], b[4], b[5], VIEW_NAMES[view], pd, dd))
    return out


class _RouteViews(beam.DoFn):
    def __init__(self, plan):
        self._plan = plan

    def process(self, batch):
        phash, dhash, views = batch
        plan = self._plan
        for space, records in view_records(phash, dhash, views).items():
            beam.metrics.Metrics.counter("dedup", "view_records").inc(len(records))
            permuted = plan.permute(records["key"])
            owners, queries = np.flatnonzero(records["owner"]), np.flatnonzero(~records["owner"])
            for j in range(plan.bands):
                prefix = plan.prefix(plan.band(permuted, j), j)
                for shard, idx in split_by(prefix[owners]):
                    yield (space, j, shard), records[owners[idx]]
                for masks in plan._prefix_masks:
                    for mask in masks:
                        for shard, idx in split_by(prefix[queries] ^ np.uint64(mask)):
                            yield (space, j, shard), records[queries[idx]]


class _SearchViewShard(beam.DoFn):
    def __init__(self, plan, dhash_max_distance, query_chunk=QUERY_CHUNK):
        self._plan = plan
        self._dhash_max = dhash_max_distance
        self._query_chunk = query_chunk

    def process(self, element):
        (_space, j, shard), parts = element
        # why: the owners once, the queries `query_chunk` at a time (as _SearchShard): a group's
        # queries (3-4 view keys a picture) never sit in memory at once
        # (the owner index built once: it was rebuilt, with two copies of the owners, per chunk)
        owners = gather_owners(parts, VIEW_RECORD)
        if not len(owners):
            return
        index = view_index(self._plan, j, owners)
        del owners
        for queries in query_chunks(parts, self._query_chunk):
            pairs = search_view_index(self._plan, index, shard, queries, self._dhash_max)
            beam.metrics.Metrics.counter("dedup", "view_pairs").inc(len(pairs))
            yield from pairs
        del index
        release_freed_memory()  # why: as in _SearchShard


class ViewPairs(beam.PTransform):
    """Batches (phash array, dhash array, {view: (phash array, dhash array)}) of DISTINCT
    pictures -> (phash_a, dhash_a, phash_b, dhash_b, view, distance, dhash_distance) for every
    picture a whose `view` key is within max_distance of picture b's matching key (b's plain
    pHash, or b's centre for the centre view) and, where both have one, whose dHashes of those
    views are within dhash_max_distance. Recall is exact up to max_distance, as in
    NearDuplicatePairs (same BandPlan arithmetic, one plan per key space).
    """

    def __init__(
        self,
        max_distance=DEFAULT_VIEW_MAX_DISTANCE,
        dhash_max_distance=None,
        bands=3,
        shard_bits=3,
        spill_dir=None,
        query_chunk=QUERY_CHUNK,
    ):
        super().__init__()
        self._plan = BandPlan(max_distance, bands=bands, shard_bits=shard_bits)
        self._dhash_max = dhash_max_distance
        self._spill_dir = spill_dir
        self._query_chunk = query_chunk

    @property
    def plan(self):
        return self._plan

    def expand(self, batches):
        return (
            batches
            # why: each view key goes to its band shards (owners once, queries within radius)
            | "RouteViews" >> beam.ParDo(_RouteViews(self._plan))
            | "GroupViewShards"
            >> GroupRecords(self._spill_dir, dtype_of=lambda _key: VIEW_RECORD, chunk_records=self._query_chunk)
            # why: exact lookups inside a shard, then self-matches dropped and dHash confirmed
            | "SearchViewShards" >> beam.ParDo(_SearchViewShard(self._plan, self._dhash_max, self._query_chunk))
        )

"""Connected components of an edge list that need not fit on one worker.

Beam has no iterative transform, so the graph is shrunk by a FIXED number of alternating
large-star / small-star rounds (Kiveris et al., "Connected Components in MapReduce and Beyond",
SoCC 2014), each one GroupByKey over the edges, and then finished exactly:

* large-star(u): with m = min(N(u) + u), link every neighbour v > u to m.
* small-star(u): with m = min of u and its neighbours below u, link all of those and u to m.
  Both keep the vertex set and the components; together they converge to one star per
  component centred on its minimum vertex, typically in O(log n) rounds.
* Finish: p(u) = min(N(u) + u). An edge (u, v) with p(u) == p(v) is settled. Edges with
  p(u) != p(v) are the RESIDUAL; their (p(u), p(v)) pairs go through one union-find combine
  (on one worker) whose result is a side input. Label(u) = root(p(u)).
  Why this is exact whatever the number of rounds: u is linked to p(u), so labels never merge
  components; along any path u=x0..xn=v each step either keeps p or is a residual edge that
  unions the two p's, so a whole component ends with one root, the minimum vertex.
After enough rounds the residual is empty (counter `cc_residual_edges`), so the single-worker
step only ever sees the leftovers of unusually deep graphs.

Public transform: `ConnectedComponents(rounds)`: edges `(u, v)` -> `(vertex, component label)` for
every vertex of an edge (`UnionFind` is the exact finish, a CombineFn).
"""

import typing

import apache_beam as beam

__all__ = ["UnionFind", "ConnectedComponents"]

_NS = "dedup"


def _both_ways(edge):
    u, v = edge
    if u != v:
        yield u, v
        yield v, u


def _large_star(element):
    u, neighbours = element
    ns = set(neighbours)
    m = min(min(ns), u)
    for v in ns:
        if v > u:
            yield v, m


def _down(edge):
    u, v = edge
    if u > v:
        yield u, v
    elif v > u:
        yield v, u


def _small_star(element):
    u, lower = element
    ns = set(lower)
    m = min(ns)
    for v in ns:
        if v != m:
            yield v, m
    yield u, m


@beam.typehints.with_output_types(tuple[typing.Any, typing.Any])
class _Settle(beam.DoFn):
    """Per vertex: its pointer p(u), plus (edge, p(u)) so edges can compare both ends."""

    LABEL = "label"

    def process(self, element):
        u, neighbours = element
        ns = set(neighbours)
        p = min(min(ns), u)
        yield beam.pvalue.TaggedOutput(self.LABEL, (u, p))
        for v in ns:
            yield (u, v) if u < v else (v, u), p


def _residual(element):
    _edge, pointers = element
    ps = sorted(set(pointers))
    for p in ps[1:]:
        yield ps[0], p


class UnionFind(beam.CombineFn):
    """Edges -> {vertex: root} with the minimum vertex as root; deterministic."""

    def create_accumulator(self):
        return {}

    @staticmethod
    def _find(parent, x):
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while parent.get(x, x) != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def _union(self, parent, a, b):
        ra, rb = self._find(parent, a), self._find(parent, b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            parent[hi] = lo
            parent.setdefault(lo, lo)

    def add_input(self, parent, edge):
        self._union(parent, *edge)
        return parent

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for acc in accumulators:
            for x, p in acc.items():
                self._union(merged, x, p)
        return merged

    def extract_output(self, parent):
        return {x: self._find(parent, x) for x in list(parent)}


def _final_label(vertex_pointer, roots):
    u, p = vertex_pointer
    return u, roots.get(p, p)


class ConnectedComponents(beam.PTransform):
    """PCollection of edges (u, v) -> (vertex, component label) for every vertex of an edge.

    The label is the component's minimum vertex; vertices must be mutually comparable
    (strings here). Duplicate edges and self-loops are harmless. `rounds` large-star/small-star
    rounds run before the exact finish; more rounds shrink the single-worker residual.
    """

    def __init__(self, rounds: int = 6) -> None:
        super().__init__()
        self._rounds = rounds

    def expand(self, edges):
        for i in range(self._rounds):
            edges = (
                edges
                | f"LargeStarEmit{i}" >> beam.FlatMap(_both_ways)
                | f"LargeStarGroup{i}" >> beam.GroupByKey()
                | f"LargeStar{i}" >> beam.FlatMap(_large_star)
                | f"SmallStarEmit{i}" >> beam.FlatMap(_down)
                | f"SmallStarGroup{i}" >> beam.GroupByKey()
                | f"SmallStar{i}" >> beam.FlatMap(_small_star)
            )
        settled = (
            edges
            | "SettleEmit" >> beam.FlatMap(_both_ways)
            | "SettleGroup" >> beam.GroupByKey()
            | "Settle" >> beam.ParDo(_Settle()).with_outputs(_Settle.LABEL, main="edges")
        )
        residual = (
            settled.edges
            | "GroupEdgeEnds" >> beam.GroupByKey()
            | "Residual" >> beam.FlatMap(_residual)
            | "CountResidual" >> beam.Map(_count, "cc_residual_edges")
        )
        roots = residual | "UnionFind" >> beam.CombineGlobally(UnionFind())
        return settled[_Settle.LABEL] | "Label" >> beam.Map(_final_label, roots=beam.pvalue.AsSingleton(roots))


def _count(element, name):
    beam.metrics.Metrics.counter(_NS, name).inc()
    return element

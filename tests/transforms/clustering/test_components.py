"""ConnectedComponents: exact labels whatever the number of rounds, and convergence."""

import random

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.clustering.components import ConnectedComponents, UnionFind


def _run(edges, rounds):
    p = TestPipeline(runner="FnApiRunner")
    labels = p | beam.Create(edges) | ConnectedComponents(rounds=rounds)
    return p, labels


def _expected(edges):
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for u, v in edges:
        a, b = find(u), find(v)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [(x, find(x)) for x in parent]


def _residual(result):
    counters = result.metrics().query(MetricsFilter().with_name("cc_residual_edges"))["counters"]
    return sum(c.committed for c in counters)


def _chain(n):
    # A path whose vertex names are shuffled, so ids and path order disagree (worst case for
    # min-label propagation: the minimum sits anywhere along the path).
    names = [f"v{i:05d}" for i in range(n)]
    random.Random(7).shuffle(names)
    return [(names[i], names[i + 1]) for i in range(n - 1)]


@pytest.mark.parametrize("rounds", [0, 1, 3])
def test_long_chain_exact_with_any_rounds(rounds):
    edges = _chain(2000)
    p, labels = _run(edges, rounds)
    assert_that(labels, equal_to(_expected(edges)))
    result = p.run()
    result.wait_until_finish()
    if rounds == 0:
        assert _residual(result) > 0  # the union-find finish really did the work


def test_long_chain_converges_so_residual_is_empty():
    edges = _chain(2000)
    p, labels = _run(edges, rounds=12)
    assert_that(labels, equal_to(_expected(edges)))
    result = p.run()
    result.wait_until_finish()
    assert _residual(result) == 0


def test_random_forest_of_components():
    rng = random.Random(3)
    edges = []
    for c in range(40):
        nodes = [f"c{c}n{i}" for i in range(rng.randint(2, 30))]
        for i in range(1, len(nodes)):
            edges.append((nodes[i], rng.choice(nodes[:i])))  # random tree
        edges += [(rng.choice(nodes), rng.choice(nodes)) for _ in range(5)]  # cycles, loops
    edges += edges[:50]  # duplicates
    p, labels = _run(edges, rounds=2)
    assert_that(labels, equal_to(_expected(edges)))
    p.run().wait_until_finish()


def test_union_find_combine_merges_partial_forests():
    fn = UnionFind()
    a = fn.add_input(fn.add_input(fn.create_accumulator(), ("d", "c")), ("c", "b"))
    b = fn.add_input(fn.create_accumulator(), ("b", "a"))
    c = fn.add_input(fn.create_accumulator(), ("y", "z"))
    roots = fn.extract_output(fn.merge_accumulators([a, b, c]))
    assert roots == {"a": "a", "b": "a", "c": "a", "d": "a", "y": "y", "z": "y"}

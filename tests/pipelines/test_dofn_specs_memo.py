"""The run-scoped memo of Beam's DoFn state/timer introspection (pipelines/launch/dofn_specs_memo.py):
Beam's own answer for every DoFn, whatever was asked before it; gone after the run."""

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.core import CallableWrapperDoFn
from apache_beam.typehints.typecheck import AbstractDoFnWrapper

from pipelines.launch.dofn_specs_memo import memoised_dofn_specs
from tests.conftest import local_options

SEEN = beam.DoFn.StateParam(userstate.BagStateSpec("seen", VarIntCoder()))
OTHER = beam.DoFn.StateParam(userstate.BagStateSpec("other", VarIntCoder()))


class _Plain(beam.DoFn):
    def process(self, element):
        yield element


class _CountsPerKey(beam.DoFn):
    def process(self, element, seen=SEEN):
        seen.add(1)
        yield element[0], sum(seen.read())


def _plain_fn(element):
    return element


class _Holder:
    def process(self, element, seen=OTHER):
        return element


def _answers(dofns):
    return [tuple(sorted(s.name for s in specs) for specs in userstate.get_dofn_specs(d)) for d in dofns]


def test_every_dofn_gets_beams_own_answer_whatever_was_asked_before_it():
    held = _Plain()
    held.extra = _Holder().process  # a bound method on the instance is inspected as one of its methods
    # why this order: a memo keyed by class alone would answer the second of each pair from the first
    dofns = [
        _Plain(),
        held,
        _CountsPerKey(),
        CallableWrapperDoFn(_plain_fn),
        CallableWrapperDoFn(_Holder().process),  # beam.Map(obj.method): same class, a state default
        CallableWrapperDoFn(lambda element, seen=OTHER: element),  # a function: not looked at
        AbstractDoFnWrapper(_Plain()),  # --runtime_type_check wraps every DoFn: one class, any DoFn inside
        AbstractDoFnWrapper(_CountsPerKey()),
    ]
    expected = _answers(dofns)
    assert expected == [([], []), (["other"], []), (["seen"], []), ([], []), (["other"], []), ([], [])] + [
        ([], []),
        (["seen"], []),
    ]
    with memoised_dofn_specs():
        assert _answers(dofns) == expected
        assert _answers(dofns[::-1]) == expected[::-1]


def test_the_memo_lasts_one_block_and_nested_blocks_put_beams_function_back():
    beams_own = userstate.get_dofn_specs
    outer, inner = memoised_dofn_specs(), memoised_dofn_specs()
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # two runs in threads of one process end out of order
    assert userstate.get_dofn_specs is not beams_own
    inner.__exit__(None, None, None)
    assert userstate.get_dofn_specs is beams_own
    with memoised_dofn_specs():
        assert userstate.get_dofn_specs is not beams_own
    assert userstate.get_dofn_specs is beams_own


def test_a_stateful_dofn_keeps_its_state_in_a_run_under_the_memo():
    with memoised_dofn_specs():
        with beam.Pipeline(argv=local_options()) as pipeline:
            counts = (
                pipeline
                | beam.Create([("a", 0), ("b", 0), ("a", 0), ("a", 0)])
                | "Plain" >> beam.ParDo(_Plain())
                | beam.ParDo(_CountsPerKey())
                | beam.combiners.Top.PerKey(1)
            )
            assert_that(counts, equal_to([("a", [3]), ("b", [1])]))

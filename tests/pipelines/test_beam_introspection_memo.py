"""The run-scoped memos of Beam's introspection (pipelines/launch/beam_introspection_memo.py): Beam's
own answer for every DoFn and every function, whatever was asked before it; gone after the run."""

import functools
import types

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import core, userstate
from apache_beam.transforms.core import CallableWrapperDoFn
from apache_beam.typehints.typecheck import AbstractDoFnWrapper

from pipelines.launch.beam_introspection_memo import _memoised_specs, _replaced, memoised_beam_introspection
from tests.conftest import local_options

# why: the suite's autouse memo (tests/conftest.py) would stand between these tests and Beam's functions
pytestmark = pytest.mark.beam_unmemoised

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
    with memoised_beam_introspection():
        assert _answers(dofns) == expected
        assert _answers(dofns[::-1]) == expected[::-1]


def _arguments(callables):
    return [core.get_function_args_defaults(c) for c in callables]


def test_every_function_gets_beams_own_arguments_and_fresh_lists():
    first, second = _Holder(), _Holder()
    callables = [
        _Holder.process,  # the function, then bound: one function, two answers (with and without self)
        first.process,
        second.process,  # one function, two instances: one answer
        lambda element, n=3: element,
        functools.partial(_plain_fn, element=1),  # not memoised: the partial's signature is its own
        functools.partial(_plain_fn),
    ]
    expected = _arguments(callables)
    assert expected[:2] == [(["self", "element", "seen"], [OTHER]), (["element", "seen"], [OTHER])]
    assert expected[4] != expected[5]
    with memoised_beam_introspection():
        assert _arguments(callables) == expected
        args, _defaults = core.get_function_args_defaults(first.process)
        args.append("changed by a caller")
        assert _arguments(callables[::-1]) == expected[::-1]


def test_the_memos_last_one_block_and_nested_blocks_put_beams_functions_back():
    beams_own = userstate.get_dofn_specs, core.get_function_args_defaults

    def installed():
        return userstate.get_dofn_specs, core.get_function_args_defaults

    outer, inner = memoised_beam_introspection(), memoised_beam_introspection()
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # two runs in threads of one process end out of order
    assert all(now is not own for now, own in zip(installed(), beams_own, strict=True))
    inner.__exit__(None, None, None)
    assert installed() == beams_own
    with memoised_beam_introspection():
        assert all(now is not own for now, own in zip(installed(), beams_own, strict=True))
    assert installed() == beams_own


def test_a_stateful_dofn_keeps_its_state_in_a_run_under_the_memo():
    with memoised_beam_introspection():
        with beam.Pipeline(argv=local_options()) as pipeline:
            counts = (
                pipeline
                | beam.Create([("a", 0), ("b", 0), ("a", 0), ("a", 0)])
                | "Plain" >> beam.ParDo(_Plain())
                | beam.ParDo(_CountsPerKey())
                | beam.combiners.Top.PerKey(1)
            )
            assert_that(counts, equal_to([("a", [3]), ("b", [1])]))


def test_a_beam_without_the_function_runs_without_its_memo():
    # why: Beam is pinned (setup.py); a later one that renamed a function must still run every job
    later_beam = types.SimpleNamespace()
    with _replaced(later_beam, "get_dofn_specs", _memoised_specs):
        assert vars(later_beam) == {}
    assert vars(later_beam) == {}

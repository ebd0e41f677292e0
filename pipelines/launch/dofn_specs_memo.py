"""A run-scoped memo of Beam's DoFn state/timer introspection, the largest fixed cost of a local run.

Beam's `userstate.get_dofn_specs(dofn)` looks at every method of a DoFn (`dir(dofn)`: the ~28 of
`beam.DoFn` itself and the subclass's own) through `inspect.signature`, to find `StateParam` and
`TimerParam` defaults. Beam 2.77 calls it about eight times for every DoFn of a graph: when the
ParDo is built, when the graph becomes its runner-API proto, and again in every bundle processor
the FnApi runner builds (one a fused stage). An ingest graph holds ~200 DoFns: ~50,000 signature
inspections, a third of the CPU of a small ingest run (py-spy, docs/performance.md), spent on
answers that cannot change while the job runs.

`memoised_dofn_specs()` answers each DoFn *class* once for the length of one job run, then puts
Beam's function back. An answer is only reused where it cannot differ: where an instance holds
methods of its own, or its class inspects a wrapped function instead of its own method (Beam's
`CallableWrapperDoFn` behind `beam.Map`, with its `_inspect_process`), those are part of the key.

Public: `memoised_dofn_specs`.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Hashable, Iterator

from apache_beam.transforms import userstate
from apache_beam.transforms.core import DoFn

__all__ = ["memoised_dofn_specs"]

_Specs = tuple[set[userstate.StateSpec], set[userstate.TimerSpec]]


def _hook_names(cls: type) -> tuple[str, ...]:
    """The `_inspect_<method>` hooks of a DoFn class: Beam asks them instead of the method."""
    return tuple(name for name in dir(cls) if name.startswith("_inspect_"))


def _memo_key(dofn: DoFn, hook_names: tuple[str, ...]) -> Hashable:
    """What Beam's answer for `dofn` depends on: its class; the bound methods its instance holds
    (inspected in place of the class's, by identity); and what each `_inspect_<method>` hook answers
    for the method it stands for (Beam's `CallableWrapperDoFn`, behind `beam.Map`, inspects the
    function it wraps: argument names and default values, the values by identity)."""
    held = tuple(sorted((name, id(value)) for name, value in vars(dofn).items() if isinstance(value, types.MethodType)))
    hooks = []
    for name in hook_names:
        args, defaults = getattr(dofn, name)()
        hooks.append((name, tuple(args), tuple(id(value) for value in defaults)))
    return type(dofn), held, tuple(hooks)


def _memoised(compute: Callable[[DoFn], _Specs]) -> Callable[[DoFn], _Specs]:
    answers: dict[Hashable, tuple[frozenset[userstate.StateSpec], frozenset[userstate.TimerSpec]]] = {}
    kept_alive: list[object] = []  # why: keys hold id()s; the objects behind them must outlive the memo
    hook_names: dict[type, tuple[str, ...]] = {}

    def get_dofn_specs(dofn: DoFn) -> _Specs:
        cls = type(dofn)
        if cls not in hook_names:
            hook_names[cls] = _hook_names(cls)
        key = _memo_key(dofn, hook_names[cls])
        if key not in answers:
            computed_state, computed_timers = compute(dofn)
            answers[key] = frozenset(computed_state), frozenset(computed_timers)
            kept_alive.append(dofn)
        state_specs, timer_specs = answers[key]
        return set(state_specs), set(timer_specs)  # why: Beam's callers get fresh sets, as before

    get_dofn_specs.__wrapped__ = compute  # type: ignore[attr-defined]
    return get_dofn_specs


@contextlib.contextmanager
def memoised_dofn_specs() -> Iterator[None]:
    """Within the block, Beam's `userstate.get_dofn_specs` answers each DoFn class once.

    Beam's `is_stateful_dofn` and `validate_stateful_dofn` look the function up in their module at
    each call, so replacing the module's attribute reaches every caller. The memo starts empty and
    is dropped with the block: nothing outlives one job run.

    Yields:
        None.
    """
    # why the unwrapping and the check: two jobs run in threads of one process (tests do) nest their
    # blocks out of order; each memo wraps Beam's own function, and only the newest puts it back.
    original: Callable[[DoFn], _Specs] = getattr(userstate.get_dofn_specs, "__wrapped__", userstate.get_dofn_specs)
    memo = _memoised(original)
    userstate.get_dofn_specs = memo  # type: ignore[assignment]  # Beam's signature, its own names
    try:
        yield
    finally:
        if userstate.get_dofn_specs is memo:
            userstate.get_dofn_specs = original  # type: ignore[assignment]

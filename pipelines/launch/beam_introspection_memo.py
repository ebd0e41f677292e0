"""Run-scoped memos of Beam's introspection of DoFns and functions, the largest fixed cost of a run.

1. Beam's `userstate.get_dofn_specs(dofn)` looks at every method of a DoFn (`dir(dofn)`: the ~28 of
`beam.DoFn` itself and the subclass's own) through `inspect.signature`, to find `StateParam` and
`TimerParam` defaults. Beam 2.77 calls it about eight times for every DoFn of a graph: when the
ParDo is built, when the graph becomes its runner-API proto, and again in every bundle processor
the FnApi runner builds (one a fused stage). An ingest graph holds ~200 DoFns: ~50,000 signature
inspections, a third of the CPU of a small ingest run (py-spy, docs/performance.md), spent on
answers that cannot change while the job runs.

   Memoised per DoFn *class*. An answer is only reused where it cannot differ: where an
   instance holds methods of its own, or its class inspects a wrapped function instead of its own
   method (Beam's `CallableWrapperDoFn` behind `beam.Map`, with its `_inspect_process`), those are
   part of the key.
2. Beam's `core.get_function_args_defaults(f)`: one `inspect.signature` a call, made again for
   the same methods whenever a bundle processor wraps a DoFn's process/start/finish methods.
   Memoised per function object (a bound method by its function: the signature of a bound method
   is its function's without `self`, whatever the instance); other callables are not memoised.

`memoised_beam_introspection()` installs both for the length of one job run, then puts Beam's
functions back. A 5-row ingest: 1549 spec computations -> 75 (docs/performance.md).

Public: `memoised_beam_introspection`.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Hashable, Iterator
from typing import Any

from apache_beam.transforms import core, userstate
from apache_beam.transforms.core import DoFn

__all__ = ["memoised_beam_introspection"]

_Specs = tuple[set[userstate.StateSpec], set[userstate.TimerSpec]]
_ArgsDefaults = tuple[list[str], list[Any]]


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


def _memoised_specs(compute: Callable[[DoFn], _Specs]) -> Callable[[DoFn], _Specs]:
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


def _memoised_args(compute: Callable[[Any], _ArgsDefaults]) -> Callable[[Any], _ArgsDefaults]:
    answers: dict[tuple[types.FunctionType, bool], _ArgsDefaults] = {}

    def get_function_args_defaults(f: Any) -> _ArgsDefaults:
        if isinstance(f, types.MethodType) and isinstance(f.__func__, types.FunctionType):
            key = f.__func__, True
        elif isinstance(f, types.FunctionType):
            key = f, False
        else:  # a partial, a class, a callable object: its signature may hang on its state
            return compute(f)
        if key not in answers:
            answers[key] = compute(f)
        args, defaults = answers[key]
        return list(args), list(defaults)  # why: Beam's callers get fresh lists, as before

    get_function_args_defaults.__wrapped__ = compute  # type: ignore[attr-defined]
    return get_function_args_defaults


@contextlib.contextmanager
def _replaced(module: types.ModuleType, name: str, memoise: Callable[[Any], Any]) -> Iterator[None]:
    """Within the block, `module.name` is `memoise(Beam's own function)`.

    Beam's callers look these functions up in their module at each call, so replacing the
    module's attribute reaches every caller.
    """
    # why the unwrapping and the check: two jobs run in threads of one process (tests do) nest their
    # blocks out of order; each memo wraps Beam's own function, and only the newest puts it back.
    current = getattr(module, name, None)
    if current is None:  # why: a Beam that renamed it runs without the memo, not fails (the tests say so)
        yield
        return
    original = getattr(current, "__wrapped__", current)
    memo = memoise(original)
    setattr(module, name, memo)
    try:
        yield
    finally:
        if getattr(module, name) is memo:
            setattr(module, name, original)


@contextlib.contextmanager
def memoised_beam_introspection() -> Iterator[None]:
    """Within the block, Beam answers each DoFn class's state/timer specs and each function's
    arguments once; the memos start empty and are dropped with the block (one job run).

    Yields:
        None.
    """
    with (
        _replaced(userstate, "get_dofn_specs", _memoised_specs),
        _replaced(core, "get_function_args_defaults", _memoised_args),
    ):
        yield

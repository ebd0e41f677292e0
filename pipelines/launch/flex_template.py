"""Flex Template entry: Dataflow template parameters -> a job's own command line.

Dataflow's launcher runs the image's FLEX_TEMPLATE_PYTHON_PY_FILE (deploy/flex_main.py) with
every template parameter as `--name=value`. Parameter names are option dests (`max_bytes`), as
Beam's own options are spelled; the jobs' flags are spelled with dashes (`--max-bytes`), and
argparse would silently ignore `--max_bytes=...`. The launcher also passes booleans as values
(`--ignore_robots=true`) and has one value per name, so a repeatable option takes a
comma-separated list. `to_job_argv` rewrites exactly those; Beam's options pass through.
The launcher must return once the job is submitted, hence --no_wait_until_finish.

A job is a module `pipelines.<job>` with `run(argv)`, `main(argv) -> exit code` and one
PipelineOptions subclass.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import types
from collections.abc import Sequence

from apache_beam.options.pipeline_options import PipelineOptions

__all__ = [
    "TRUE",
    "FALSE",
    "job_module",
    "options_class",
    "option_actions",
    "is_flag",
    "is_repeatable",
    "long_flag",
    "to_job_argv",
    "main",
]

TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no", "")


def job_module(job: str) -> types.ModuleType:
    """The module `pipelines.<job>`."""
    return importlib.import_module(f"pipelines.{job}")


def options_class(module: types.ModuleType) -> type[PipelineOptions]:
    """The PipelineOptions subclass a job module defines."""
    found = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, PipelineOptions) and obj is not PipelineOptions and obj.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise TypeError(f"{module.__name__} defines {len(found)} PipelineOptions subclasses, expected 1")
    return found[0]


def option_actions(options_cls: type[PipelineOptions]) -> dict[str, argparse.Action]:
    """{dest: argparse action} of the options the class itself adds, in declaration order."""
    parser = argparse.ArgumentParser(add_help=False)
    options_cls._add_argparse_args(parser)  # type: ignore[arg-type]  # a plain parser lists the options
    return {action.dest: action for action in parser._actions if action.option_strings}  # noqa: SLF001


def is_flag(action: argparse.Action) -> bool:
    """store_true / store_false: no value on the command line."""
    return action.nargs == 0


def is_repeatable(action: argparse.Action) -> bool:
    """An `append` option: one value per occurrence."""
    return isinstance(action, argparse._AppendAction)  # pylint: disable=protected-access


def long_flag(action: argparse.Action) -> str:
    """The option's `--long-form` spelling."""
    return next(s for s in action.option_strings if s.startswith("--"))


def to_job_argv(argv: Sequence[str], actions: dict[str, argparse.Action]) -> list[str]:
    """Rewrites `--dest=value` arguments naming one of `actions` into the job's own flags."""
    out = []
    for arg in argv:
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        action = actions.get(name.replace("-", "_"))
        if not sep or action is None:
            out.append(arg)
        elif is_flag(action):
            truth = value.strip().lower()
            if truth not in TRUE + FALSE:
                raise ValueError(f"--{name} takes true or false, got {value!r}")
            if (truth in TRUE) == bool(action.const):
                out.append(long_flag(action))
        elif is_repeatable(action):
            out.extend(f"{long_flag(action)}={item.strip()}" for item in value.split(",") if item.strip())
        else:
            out.append(f"{long_flag(action)}={value}")
    return out


def main(argv: list[str] | None = None, job: str | None = None) -> int:
    """Runs `job` (default: $BEAM_JOB) with the template parameters in `argv` as its own flags."""
    job = job or os.environ["BEAM_JOB"]
    module = job_module(job)
    argv = sys.argv[1:] if argv is None else argv
    job_argv = to_job_argv(argv, option_actions(options_class(module)))
    return module.main(job_argv + ["--no_wait_until_finish"])

"""The check of a job's command line before Beam sees it: every argument is one of the job's own
options or a Beam pipeline option; anything else is a usage error (exit 2) naming it.

Why: Beam parses the command line with parse_known_args and only logs "Discarding unparseable
args" for the rest, so `--max-distnace 4` ran dedup with the default distance and
`--dead-afer 5` would let the refresh call URLs dead after the default 2 nights, both with exit 0.

What counts as known: the job's own options (its PipelineOptions subclass, plus --debug) and the
options of every PipelineOptions subclass Beam itself defines (apache_beam.*: standard, Google
Cloud, worker, debug, setup, portable, ... options), whatever the runner. Not the options of the
other jobs, although a process that imported them (the tests, the cluster check) has them
registered with Beam too: `dedup --dead-after 5` is refused however the job is started.

Spelling rules, the same as Beam's parser (argparse, allow_abbrev=False):
- `--flag value` and `--flag=value`; a value starting with `-` only as `--flag=-value`;
- no abbreviations (`--max-dist` is not `--max-distance`): Beam's own parser would drop an
  abbreviation silently, and an abbreviation changes meaning when a new option begins the same;
- an option given twice: the last value wins (`append` options such as --manifest, --experiments
  keep every value), as argparse and Beam do; wrappers rely on it to override a default.
"""

from __future__ import annotations

import argparse
import difflib

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.errors import BadInput

__all__ = ["beam_option_classes", "check_known", "unknown_argument"]


def beam_option_classes() -> list[type[PipelineOptions]]:
    """The PipelineOptions subclasses Beam defines, as Beam's own parser collects them (registered
    direct subclasses, first of each name); every one in apache_beam.options.pipeline_options is
    registered as soon as PipelineOptions is imported."""
    found: dict[str, type[PipelineOptions]] = {}
    for cls in PipelineOptions.__subclasses__():
        if cls.__module__.startswith("apache_beam."):
            found.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
    return list(found.values())


def unknown_argument(extras: list[str], known: list[str]) -> str:
    """The one line for the first argument no parser knows, with the option meant where one is close.

    Args:
        extras: what argparse's parse_known_args left over, in command-line order (an unknown
            option's value follows it there: only the option is named).
        known: every option string the job accepts.
    Returns:
        "unknown option --max-distnace (did you mean --max-distance?)" or
        "unexpected argument VALUE (...)".
    """
    first = extras[0]
    if not first.startswith("-") or first in ("-", "--"):
        return f"unexpected argument {first!r}: options are spelt --name VALUE or --name=VALUE"
    name = first.split("=", 1)[0]
    # Why 0.75 (difflib's default is 0.6): a typo or an underscore for a dash scores 0.8-0.95,
    # while at 0.6 another job's option got a Beam option with no relation (--dead-after: --update).
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return f"unknown option {name}" + (f" (did you mean {close[0]}?)" if close else "")


def check_known(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Parses `argv` with the job's own parser plus Beam's options; raises BadInput for a malformed
    value (through the parser's error()) or for the first argument neither knows.

    Args:
        parser: the job's own options (error() raising BadInput, allow_abbrev=False); Beam's
            options are added to it here.
        argv: the command line without the program name.
    """
    for cls in beam_option_classes():
        cls._add_argparse_args(parser)  # type: ignore[arg-type]  # pylint: disable=protected-access
    _, extras = parser.parse_known_args(argv)
    if extras:
        known = [flag for action in parser._actions for flag in action.option_strings]  # noqa: SLF001
        raise BadInput(unknown_argument(extras, known))

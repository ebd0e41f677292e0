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
- a single-value option of the job's own given twice with two values (`--output A ... --output B`,
  `--max-distance 4 --max-distance 8`: a long command line edited in a scheduler) is a usage error
  naming both; argparse and Beam kept the last silently, exit 0, the first OUT unwritten. The same
  value twice passes (`--max-distance 5 --max-distance=05`), and `append` options (--manifest,
  --input, --allow-network, ...) keep every value. Beam's own options keep Beam's rule, the last
  wins: launchers (deploy/, Dataflow's) compose them, and none decides which rows are written;
- an empty value of the job's own options (`--cc12m-hashes ""`, `--history=`: a shell variable
  unset) is a usage error: every job read it as the option left out, exit 0; so is a value that
  begins with ~ (`--output=~/out`: not expanded after `=`, it named a folder `~` here).
"""

from __future__ import annotations

import argparse
import difflib

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.errors import BadInput

__all__ = ["beam_option_classes", "check_known", "guard_values", "unknown_argument"]


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


_GIVEN = "_values_given_on_the_command_line"  # a namespace attribute: {dest: value} of one parse


def _refuse_unusable(action: argparse.Action, values: object) -> None:
    """An empty text value (`--cc12m-hashes "$HASHES"`, the variable unset) is no value; one that
    begins with ~ (`--output=~/out`) is a path the shell did not expand.

    why: every job read "" as the option left out: the ingest ran without its hash list, the refresh
    without its history, dedup without --drop-dead, exit 0 each. And `~` is expanded only at a word's
    start: `--output=~/out` wrote into a folder named `~` in the working directory, exit 0.
    """
    if not isinstance(values, str):
        return
    flag = action.option_strings[-1]
    if not values.strip():
        raise argparse.ArgumentError(action, f"an empty value (a shell variable unset?): give one, or leave {flag} out")
    if values.startswith("~"):
        home = "$HOME" + values[1:] if values[1:2] in ("", "/") else "a full path"
        raise argparse.ArgumentError(
            action,
            f"{values!r} begins with ~, which the shell expands only at the start of a word"
            f" (not after {flag}=): give it as {home}",
        )


class _StoreOnce(argparse._StoreAction):  # pylint: disable=protected-access
    """A single-value option that refuses an empty value and a second, different value (argparse
    keeps the last)."""

    def __call__(self, parser, namespace, values, option_string=None):
        _refuse_unusable(self, values)
        # why on the namespace: one parse's values, gone with it (no state on the parser or module)
        given = vars(namespace).setdefault(_GIVEN, {})
        if self.dest in given and given[self.dest] != values:
            raise argparse.ArgumentError(self, f"given twice, {given[self.dest]!r} and then {values!r}: give it once")
        given[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


class _AppendNonEmpty(argparse._AppendAction):  # pylint: disable=protected-access
    """A repeatable option that refuses an empty value."""

    def __call__(self, parser, namespace, values, option_string=None):
        _refuse_unusable(self, values)
        super().__call__(parser, namespace, values, option_string)


def guard_values(parser: argparse.ArgumentParser) -> None:
    """Makes the value-taking options of `parser` refuse an empty value, and its single-value ones
    a second, different value.

    Args:
        parser: the job's own options (Beam's are added after: they keep Beam's rules).
    """
    guarded = {argparse._StoreAction: _StoreOnce, argparse._AppendAction: _AppendNonEmpty}  # noqa: SLF001
    for action in parser._actions:  # noqa: SLF001
        if type(action) in guarded:  # exactly: not flags, not a custom action
            action.__class__ = guarded[type(action)]


def check_known(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Parses `argv` with the job's own parser plus Beam's options; raises BadInput for a malformed
    value (through the parser's error()), an empty value of the job's own options, a single-value
    option of the job's given two values, or the first argument neither parser knows.

    Args:
        parser: the job's own options (error() raising BadInput, allow_abbrev=False); Beam's
            options are added to it here.
        argv: the command line without the program name.
    """
    guard_values(parser)
    for cls in beam_option_classes():
        cls._add_argparse_args(parser)  # type: ignore[arg-type]  # pylint: disable=protected-access
    _, extras = parser.parse_known_args(argv)
    if extras:
        known = [flag for action in parser._actions for flag in action.option_strings]  # noqa: SLF001
        raise BadInput(unknown_argument(extras, known))

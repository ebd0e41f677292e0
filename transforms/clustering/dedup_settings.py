"""The dedup options of the ingest and dedup jobs, beside the transform they configure.

`DedupSettings.add_arguments(parser)` adds the "dedup" option group to a job's parser;
`DedupSettings.from_options(opts)` reads it back (checked), and `.transform()` builds the Dedup /
DedupShards PTransform it describes. The defaults carry the job in their names: the refresh job's
"same picture" distance (pipelines/refresh.py, REFRESH_SAME_PICTURE_MAX_DISTANCE) is another
threshold with another default.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from transforms import schema
from transforms.clustering.clusters import (
    DEFAULT_DATASET_PRIORITY,
    DEFAULT_DHASH_MAX_DISTANCE,
    DEFAULT_MATCH_VIEWS,
    DEFAULT_MAX_DISTANCE,
    DEFAULT_PLACEHOLDER_MIN_URLS,
    VIEW_NAMES,
    Dedup,
    DedupShards,
)
from transforms.clustering.near_search import DEFAULT_VIEW_MAX_DISTANCE, HASH_BITS, shard_bits_for
from transforms.clustering.placeholders import known_placeholder_hashes
from transforms.errors import BadInput

__all__ = [
    "DEDUP_CC_ROUNDS",
    "DEDUP_DHASH_MAX_DISTANCE",
    "DEDUP_MAX_DISTANCE",
    "DEDUP_PLACEHOLDER_MIN_URLS",
    "DEDUP_VIEW_MAX_DISTANCE",
    "MAX_CC_ROUNDS",
    "MAX_SENSIBLE_DISTANCE",
    "MAX_SHARD_BITS",
    "MAX_VIEW_DISTANCE",
    "MIN_PLACEHOLDER_URLS",
    "DedupSettings",
    "check_ranges",
    "parse_dataset_priority",
    "parse_views",
]

DEDUP_MAX_DISTANCE = DEFAULT_MAX_DISTANCE  # pHash distance of near-duplicates (8)
DEDUP_DHASH_MAX_DISTANCE = DEFAULT_DHASH_MAX_DISTANCE  # dHash confirmation (16)
DEDUP_PLACEHOLDER_MIN_URLS = DEFAULT_PLACEHOLDER_MIN_URLS  # one picture at this many URLs: placeholder (50)
DEDUP_CC_ROUNDS = 6
DEDUP_VIEW_MAX_DISTANCE = DEFAULT_VIEW_MAX_DISTANCE  # pHash distance at which two view keys meet
# The widest values that still make sense (check_ranges says why, docs/duplicates.md "Option values").
MAX_SENSIBLE_DISTANCE = 12
MAX_VIEW_DISTANCE = 8
MIN_PLACEHOLDER_URLS = 3
MAX_CC_ROUNDS = 30
MAX_SHARD_BITS = 8


def parse_views(text: str | None) -> tuple:
    """--views: comma-separated view names or 'none' -> tuple of names.

    Args:
        text: the option's value (None: the default views).

    Returns:
        The view names in VIEW_NAMES order.

    Raises:
        BadInput: an unknown view name, or none named (an empty value).
    """
    if text is None:
        return DEFAULT_MATCH_VIEWS
    names = {v.strip().lower() for v in text.split(",") if v.strip()}
    if not names:  # why: an empty value (a shell variable unset) silently turned every view off
        raise BadInput(f"--views names no view, got {text!r}; give some of {', '.join(VIEW_NAMES)}, or none")
    if names == {"none"}:
        return ()
    unknown = names - set(VIEW_NAMES)
    if unknown:
        raise BadInput(f"--views: unknown view {', '.join(sorted(unknown))}; known: {', '.join(VIEW_NAMES)} or none")
    return tuple(v for v in VIEW_NAMES if v in names)


def parse_dataset_priority(text: str) -> tuple:
    """--dataset-priority: comma-separated dataset names -> tuple, each a known dataset.

    Args:
        text: the option's value.

    Returns:
        The names in the order given.

    Raises:
        BadInput: no name, or a name that is no dataset (a typo would silently rank that dataset
            last instead of first).
    """
    names = tuple(d.strip() for d in text.split(",") if d.strip())
    unknown = [name for name in names if name not in schema.DATASETS]
    if unknown or not names:
        raise BadInput(
            f"--dataset-priority: {'unknown dataset ' + ', '.join(unknown) if unknown else 'no dataset named'};"
            f" known: {', '.join(schema.DATASETS)}"
        )
    return names


def _refuse_outside(flag: str, value: int, low: int, high: int, why: str) -> None:
    """BadInput naming the flag, its range and why, unless low <= value <= high."""
    if not low <= value <= high:
        raise BadInput(f"{flag} must be between {low} and {high}, got {value}: {why}")


def check_ranges(opts: Any, max_distance: int, view_max_distance: int) -> None:
    """Refuses (BadInput, one line naming the option, its range and why) the dedup option values
    that can only be a mistake or would wreck the run: docs/duplicates.md, "Option values".

    Args:
        opts: parsed options (a PipelineOptions view or an argparse Namespace).
        max_distance: --max-distance with its default applied.
        view_max_distance: --view-max-distance with its default applied.
    """
    # why: past 12 bits unrelated photos meet by chance (a giant cluster that export keeps one row
    # of) and the exact banded search's probes and candidate checks grow x22 at 16, x260 at 30
    # (1M rows, plan_bands); 64 itself is no search at all (plan_bands refuses it).
    _refuse_outside(
        "--max-distance",
        max_distance,
        0,
        MAX_SENSIBLE_DISTANCE,
        "wider, unrelated pictures match by chance and the exact search's work explodes"
        " (x22 the default's at 16, x260 at 30, for 1M rows; docs/duplicates.md)",
    )
    # why: the view search has 3 fixed bands: radius k // 3, 67 probes a key at 5, 718 at 8,
    # ~4 million at 64 (54 rows did not finish in 150 s)
    _refuse_outside(
        "--view-max-distance",
        view_max_distance,
        0,
        MAX_VIEW_DISTANCE,
        "a view is a rougher copy, matched tighter than the plain pHash; wider, its search's probes"
        " explode (67 a key at 5, 4 million at 64) and unrelated pictures match",
    )
    dhash = opts.dhash_max_distance
    if dhash is not None and not -1 <= dhash <= HASH_BITS:
        raise BadInput(f"--dhash-max-distance must be between 0 and {HASH_BITS}, or -1 (no confirmation), got {dhash}")
    # why: a picture at 1 or 2 URLs is the ordinary duplicate (one photo in CC3M and CC12M); as a
    # placeholder every such picture would be left out of every match and every export
    min_urls = opts.placeholder_min_urls
    if min_urls < 0 or 0 < min_urls < MIN_PLACEHOLDER_URLS:
        raise BadInput(
            f"--placeholder-min-urls must be 0 (the rule off) or at least {MIN_PLACEHOLDER_URLS}, got {min_urls}:"
            " a picture at fewer URLs is an ordinary duplicate, and as a placeholder it is never exported"
        )
    # why: each round is more stages of the graph (200 overflowed Python's recursion, exit 1);
    # the union-find finish is exact whatever the count, and the residual is empty after ~log n
    _refuse_outside(
        "--cc-rounds",
        opts.cc_rounds,
        0,
        MAX_CC_ROUNDS,
        "components settle in a few rounds and the union-find finish is exact whatever their count",
    )
    if opts.shard_bits is not None:
        # why: 8 keeps a shard within 2^20 owners up to 2^28 rows; every bit more only copies each
        # query to more shards: V(16, 2) = 137 a band against V(4, 2) = 11 (x12 the shuffle)
        _refuse_outside(
            "--shard-bits",
            opts.shard_bits,
            0,
            MAX_SHARD_BITS,
            f"{MAX_SHARD_BITS} keeps each shard within 2^20 pictures up to 268M rows; more only copies"
            " each query to more shards (x12 the shuffle at 16)",
        )


def _add_once(group: argparse._ArgumentGroup, *flags: str, **kwargs: Any) -> None:
    """group.add_argument unless the flag is there already: Beam parses the options of every job
    imported in the process into one parser, and ingest and dedup both define these."""
    try:
        group.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        pass


@dataclasses.dataclass(frozen=True)
class DedupSettings:
    """What the dedup options say; `transform()` builds the PTransform."""

    max_distance: int = DEDUP_MAX_DISTANCE
    dhash_max_distance: int | None = DEDUP_DHASH_MAX_DISTANCE
    dataset_priority: tuple = DEFAULT_DATASET_PRIORITY
    placeholder_min_urls: int = DEDUP_PLACEHOLDER_MIN_URLS
    placeholder_hashes: tuple = ()
    cc_rounds: int = DEDUP_CC_ROUNDS
    shard_bits: int | None = None
    views: tuple = DEFAULT_MATCH_VIEWS
    view_max_distance: int = DEDUP_VIEW_MAX_DISTANCE

    @staticmethod
    def add_arguments(parser: argparse._ActionsContainer) -> None:
        """Adds the "dedup" option group.

        Args:
            parser: an argparse parser (Beam's or the job's --help parser).
        """
        group = parser.add_argument_group("dedup", "how near-duplicates and placeholders are found")
        add = lambda *flags, **kwargs: _add_once(group, *flags, **kwargs)  # noqa: E731
        add(
            "--max-distance",
            type=int,
            default=None,
            metavar="K",
            help=f"pHash Hamming distance at or under which two images are near-duplicates, 0-{MAX_SENSIBLE_DISTANCE}"
            f" (default {DEDUP_MAX_DISTANCE})",
        )
        add(
            "--dhash-max-distance",
            type=int,
            default=DEDUP_DHASH_MAX_DISTANCE,
            metavar="K",
            help=f"dHash distance confirming a near match, 0-{HASH_BITS}; -1 turns the confirmation off"
            f" (default {DEDUP_DHASH_MAX_DISTANCE})",
        )
        add(
            "--dataset-priority",
            default=",".join(DEFAULT_DATASET_PRIORITY),
            help=f"comma-separated tie-break of the canonical row after resolution"
            f" (default {','.join(DEFAULT_DATASET_PRIORITY)})",
        )
        add(
            "--placeholder-min-urls",
            type=int,
            default=DEDUP_PLACEHOLDER_MIN_URLS,
            metavar="N",
            help=f"one picture at this many distinct URLs (at least {MIN_PLACEHOLDER_URLS}) is a placeholder, not a"
            f" duplicate; 0: off (default {DEDUP_PLACEHOLDER_MIN_URLS})",
        )
        add(
            "--placeholder-hash",
            dest="placeholder_hashes",
            action="append",
            default=[],
            metavar="HASH",
            help="sha256 or pHash of a placeholder picture, added to the built-in list "
            "(transforms/clustering/placeholders.py); repeatable",
        )
        add(
            "--views",
            default=",".join(DEFAULT_MATCH_VIEWS),
            metavar="VIEWS",
            help=f"picture views computed at hash time and matched through, comma-separated from "
            f"{','.join(VIEW_NAMES)}, or 'none' (docs/duplicates.md; default {','.join(DEFAULT_MATCH_VIEWS)})",
        )
        add(
            "--view-max-distance",
            type=int,
            default=DEDUP_VIEW_MAX_DISTANCE,
            metavar="K",
            help=f"pHash distance at or under which two view keys meet (their dHashes confirm), 0-{MAX_VIEW_DISTANCE}"
            f" (default {DEDUP_VIEW_MAX_DISTANCE})",
        )
        add(
            "--cc-rounds",
            type=int,
            default=DEDUP_CC_ROUNDS,
            help=f"large/small-star rounds before the exact union-find finish, 0-{MAX_CC_ROUNDS}"
            f" (default {DEDUP_CC_ROUNDS})",
        )
        add(
            "--shard-bits",
            type=int,
            default=None,
            help=f"near search: 2^s shards per band, s 0-{MAX_SHARD_BITS} (default 3; in a one-process local run"
            " as few as keep each shard within 2^20 owners: 0 up to 1M rows, where shards add no parallelism and each "
            "costs another copy of the query hashes)",
        )

    @classmethod
    def from_options(cls, opts: Any) -> DedupSettings:
        """The settings the options of add_arguments describe.

        Args:
            opts: parsed options (a PipelineOptions view or an argparse Namespace).
        Returns:
            The settings; raises transforms.errors.BadInput for a value out of range.
        """
        max_distance = DEDUP_MAX_DISTANCE if opts.max_distance is None else opts.max_distance
        view_max = getattr(opts, "view_max_distance", None)
        view_max = DEDUP_VIEW_MAX_DISTANCE if view_max is None else view_max
        check_ranges(opts, max_distance, view_max)
        views = parse_views(getattr(opts, "views", None))
        dhash = opts.dhash_max_distance
        priority = parse_dataset_priority(opts.dataset_priority)
        return cls(
            max_distance=max_distance,
            dhash_max_distance=dhash if dhash is None or dhash >= 0 else None,
            dataset_priority=priority,
            placeholder_min_urls=opts.placeholder_min_urls,
            placeholder_hashes=tuple(opts.placeholder_hashes or ()),
            cc_rounds=opts.cc_rounds,
            shard_bits=opts.shard_bits,
            views=views,
            view_max_distance=view_max,
        )

    def transform(
        self,
        from_shards: bool = False,
        one_process: bool = False,
        spill_dir: str | None = None,
        expected_rows: int | None = None,
    ) -> Dedup:
        """The Dedup transform these settings describe.

        Args:
            from_shards: rows kept in table shards (the ingest): DedupShards.
            one_process: the job runs locally in one process, where the near search is not sharded
                unless --shard-bits says so, or the rows need it (expected_rows).
            spill_dir: local directory for dedup's on-disk shuffle (transforms.clustering.spill).
            expected_rows: the rows the job will read, when known (the dedup job's footers): in
                one process, the near search gets as many shards as keep each shard's owners
                within near_search.OWNERS_PER_GROUP (shard_bits_for), so memory stays flat.
        Returns:
            A Dedup (or DedupShards) PTransform.
        """
        if self.shard_bits is not None:
            shard_bits = self.shard_bits
        elif one_process:
            shard_bits = 0 if expected_rows is None else shard_bits_for(expected_rows)
        else:
            shard_bits = 3
        return (DedupShards if from_shards else Dedup)(
            max_distance=self.max_distance,
            dataset_priority=self.dataset_priority,
            dhash_max_distance=self.dhash_max_distance,
            placeholder_min_urls=self.placeholder_min_urls,
            placeholder_hashes=known_placeholder_hashes() + self.placeholder_hashes,
            cc_rounds=self.cc_rounds,
            shard_bits=shard_bits,
            spill_dir=spill_dir,
            views=self.views,
            view_max_distance=self.view_max_distance,
        )

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
from transforms.clustering.near_search import DEFAULT_VIEW_MAX_DISTANCE, shard_bits_for
from transforms.clustering.placeholders import known_placeholder_hashes
from transforms.errors import BadInput

__all__ = [
    "DEDUP_CC_ROUNDS",
    "DEDUP_DHASH_MAX_DISTANCE",
    "DEDUP_MAX_DISTANCE",
    "DEDUP_PLACEHOLDER_MIN_URLS",
    "DEDUP_VIEW_MAX_DISTANCE",
    "DedupSettings",
    "parse_views",
]

DEDUP_MAX_DISTANCE = DEFAULT_MAX_DISTANCE  # pHash distance of near-duplicates (8)
DEDUP_DHASH_MAX_DISTANCE = DEFAULT_DHASH_MAX_DISTANCE  # dHash confirmation (16)
DEDUP_PLACEHOLDER_MIN_URLS = DEFAULT_PLACEHOLDER_MIN_URLS  # one picture at this many URLs: placeholder (50)
DEDUP_CC_ROUNDS = 6
DEDUP_VIEW_MAX_DISTANCE = DEFAULT_VIEW_MAX_DISTANCE  # pHash distance at which two view keys meet


def parse_views(text: str | None) -> tuple:
    """--views: comma-separated view names or 'none' -> tuple of names.

    Args:
        text: the option's value (None: the default views).

    Returns:
        The view names in VIEW_NAMES order.

    Raises:
        BadInput: an unknown view name.
    """
    if text is None:
        return DEFAULT_MATCH_VIEWS
    names = {v.strip().lower() for v in text.split(",") if v.strip()}
    if names in ({"none"}, set()):
        return ()
    unknown = names - set(VIEW_NAMES)
    if unknown:
        raise BadInput(f"--views: unknown view {', '.join(sorted(unknown))}; known: {', '.join(VIEW_NAMES)} or none")
    return tuple(v for v in VIEW_NAMES if v in names)


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
            help=f"pHash Hamming distance at or under which two images are near-duplicates"
            f" (default {DEDUP_MAX_DISTANCE})",
        )
        add(
            "--dhash-max-distance",
            type=int,
            default=DEDUP_DHASH_MAX_DISTANCE,
            metavar="K",
            help=f"dHash distance confirming a near match; -1 turns the confirmation off"
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
            help=f"one picture at this many distinct URLs is a placeholder, not a duplicate"
            f" (default {DEDUP_PLACEHOLDER_MIN_URLS})",
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
            help=f"pHash distance at or under which two view keys meet (their dHashes confirm)"
            f" (default {DEDUP_VIEW_MAX_DISTANCE})",
        )
        add(
            "--cc-rounds",
            type=int,
            default=DEDUP_CC_ROUNDS,
            help=f"large/small-star rounds before the exact union-find finish (default {DEDUP_CC_ROUNDS})",
        )
        add(
            "--shard-bits",
            type=int,
            default=None,
            help="near search: 2^s shards per band (default 3; in a one-process local run as few as keep "
            "each shard within 2^20 owners: 0 up to 1M rows, where shards add no parallelism and each "
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
        if not 0 <= max_distance <= 64:
            raise BadInput(f"--max-distance must be between 0 and 64 (pHash bits), got {max_distance}")
        for name in ("placeholder_min_urls", "cc_rounds"):
            if getattr(opts, name) < 0:
                raise BadInput(f"--{name.replace('_', '-')} must not be negative, got {getattr(opts, name)}")
        if opts.shard_bits is not None and not 0 <= opts.shard_bits <= 16:
            raise BadInput(f"--shard-bits must be between 0 and 16, got {opts.shard_bits}")
        view_max = getattr(opts, "view_max_distance", None)
        view_max = DEDUP_VIEW_MAX_DISTANCE if view_max is None else view_max
        if not 0 <= view_max <= 64:
            raise BadInput(f"--view-max-distance must be between 0 and 64 (pHash bits), got {view_max}")
        views = parse_views(getattr(opts, "views", None))
        dhash = opts.dhash_max_distance
        priority = tuple(d.strip() for d in opts.dataset_priority.split(",") if d.strip())
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

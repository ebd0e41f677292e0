"""Held-out splits of an export that do not leak: `--split train=0.98,validation=0.02 --split-seed S`.

A row's split is a pure function of (seed, its group): the group is its `cluster_id` when it has one,
else its `key`. sha256(f"{seed}:{group}") read as a number in [0, 1) falls into one of the
cumulative fractions. So every member of a duplicate cluster (the same picture resized, re-encoded,
cropped, from CC3M and CC12M) lands in one split whatever `--include`, and the assignment is the
same in every run, runner and format: two exports of one OUT (at another `--resize`) split alike.
A cluster's fallback members (cluster_fallback) travel inside the canonical's record: same cluster,
same split, by construction.

Each split is sharded on its own (`SplitShards`: AssignShards per split), into EXP/NAME/00000.tar,
..., with sample keys 0..n-1 within the split. `earlier_shards(EXP)`: the shards of an earlier
export in either layout, retired once this run's are final.
"""

import hashlib
import math
import re
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.errors import BadInput
from transforms.export.shard_writer import AssignShards
from transforms.io.lease import LEASE_NAME
from transforms.io.sinks import file_name, join_path

__all__ = [
    "SPLIT_NAME",
    "SplitShards",
    "check_split_folders",
    "earlier_shards",
    "parse_splits",
    "split_of",
    "split_group",
]

# why a leading letter or digit: EXP/_tmp-<run>/ is the run's temporary folder (a split of that
# name would be taken for a killed run's and removed), and a name is a folder a glob names
SPLIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_SUM_TOLERANCE = 1e-9
_SHARD_FILE = re.compile(r"^[0-9]{5,}\.(?:tar|parquet)$")  # a shard's name, whatever the format
_EXPORT_FILES = ("summary.json", LEASE_NAME)  # an export's own files beside its shards

Splits = tuple[tuple[str, float], ...]


def parse_splits(text: str) -> Splits:
    """The checked splits of `--split NAME=FRACTION[,NAME=FRACTION...]`.

    Args:
        text: the option's value, e.g. "train=0.98,validation=0.02".

    Returns:
        ((name, fraction), ...) in the order given.

    Raises:
        BadInput: one line naming the problem (a bad or repeated name, a fraction that is not a
            number or not > 0, fewer than 2 splits, fractions not summing to 1 within 1e-9).
    """
    splits: list[tuple[str, float]] = []
    for part in text.split(","):
        name, equals, value = part.strip().partition("=")
        if not equals:
            raise BadInput(f"--split {text}: {part.strip()!r} is not NAME=FRACTION (e.g. train=0.98,validation=0.02)")
        if not SPLIT_NAME.match(name):
            raise BadInput(
                f"--split {text}: bad split name {name!r}: lowercase letters, digits, _ and -,"
                " starting with a letter or digit"
            )
        if name in (seen for seen, _ in splits):
            raise BadInput(f"--split {text}: split {name} named twice")
        try:
            fraction = float(value)
        except ValueError:
            raise BadInput(f"--split {text}: fraction of {name} is not a number: {value!r}") from None
        if not math.isfinite(fraction) or fraction <= 0:
            raise BadInput(f"--split {text}: fraction of {name} must be > 0, got {value}")
        splits.append((name, fraction))
    if len(splits) < 2:
        raise BadInput(f"--split {text}: at least 2 splits are needed (e.g. train=0.98,validation=0.02)")
    total = math.fsum(fraction for _, fraction in splits)
    if abs(total - 1) > _SUM_TOLERANCE:
        raise BadInput(f"--split {text}: the fractions sum to {total!r}, not 1")
    return tuple(splits)


def split_group(record: dict) -> str:
    """What decides a record's split: its cluster_id, else (a row in no cluster) its key."""
    cluster = record.get("cluster_id")
    return f"cluster:{cluster}" if cluster is not None else f"key:{record['key']}"


def split_of(record: dict, splits: Splits, seed: int) -> int:
    """The index in `splits` of the split `record` falls in.

    Args:
        record: an export record (key, cluster_id).
        splits: parse_splits' result.
        seed: --split-seed.

    Returns:
        0..len(splits)-1: sha256 of (seed, split_group) as a number in [0, 1) against the
        cumulative fractions.
    """
    digest = hashlib.sha256(f"{seed}:{split_group(record)}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    bound = 0.0
    for index, (_, fraction) in enumerate(splits):
        bound += fraction
        if point < bound:
            return index
    return len(splits) - 1  # why: fractions summing to 1 - 1e-10 leave a sliver past the last bound


def _partition(record, _count, splits, seed):
    return split_of(record, splits, seed)


def _in_split(element, name):
    shard, items = element
    return (name, shard), items


class SplitShards(beam.PTransform):
    """Records -> ((split name, shard number), [(index within the split, record), ...]).

    Args:
        splits: parse_splits' result.
        seed: --split-seed.
        shard_size: rows per shard of each split.
    """

    def __init__(self, splits: Sequence[tuple[str, float]], seed: int, shard_size: int):
        super().__init__()
        self._splits = tuple(splits)
        self._seed = seed
        self._shard_size = shard_size

    def expand(self, records):
        parts = records | "BySplit" >> beam.Partition(_partition, len(self._splits), self._splits, self._seed)
        sharded = [
            part
            | f"AssignShards[{name}]" >> AssignShards(self._shard_size)
            | f"InSplit[{name}]" >> beam.Map(_in_split, name=name)
            for part, (name, _) in zip(parts, self._splits, strict=True)
        ]
        return sharded | "AllSplits" >> beam.Flatten()


def earlier_shards(output: str) -> list[str]:
    """Shard files already in EXP (an earlier export): EXP/NNNNN.tar and, of an export with --split,
    EXP/NAME/NNNNN.tar; removed once this run's shards are final. Why both, whatever this run's
    layout: a reader's glob (EXP/*.tar, EXP/**/*.tar) would mix an earlier layout's shards in.

    Args:
        output: EXP.
    Returns:
        The paths, sorted. A folder holding an export's own files (summary.json, a lease, _tmp-*)
        is another export nested in EXP (`--output EXP/v1`), not a split: its shards are not listed.
    """
    stale = [path for path in _entries(join_path(output, "*")) if _SHARD_FILE.match(file_name(path))]
    in_folders: dict[str, list[str]] = {}
    for path in _entries(join_path(output, "*", "*")):
        folder, name = path.rsplit("/", 1)
        in_folders.setdefault(folder, []).append(name)
    for folder, names in in_folders.items():
        # why: a split folder never holds these; before, an export into EXP deleted EXP/v1/NNNNN.tar
        # of an export of its own, whose summary.json then vouched for none
        nested_export = any(name in _EXPORT_FILES or name.startswith("_tmp-") for name in names)
        if SPLIT_NAME.match(file_name(folder)) and not nested_export:
            stale += [f"{folder}/{name}" for name in names if _SHARD_FILE.match(name)]
    return sorted(stale)


def check_split_folders(output: str, splits: Splits) -> None:
    """Refuses a split whose folder EXP/NAME is an export of its own (`--output EXP/NAME`).

    Args:
        output: EXP.
        splits: parse_splits' result.
    Raises:
        BadInput: one line. Why: the split's shards would be renamed onto that export's, and its
            summary.json would vouch for shards it did not write (before: exit 0).
    """
    for name, _ in splits:
        for marker in _EXPORT_FILES:
            if FileSystems.exists(join_path(output, name, marker)):
                raise BadInput(
                    f"--split {name}: {join_path(output, name)} is an export of its own ({marker}):"
                    " give another split name or another --output"
                )


def _entries(pattern: str) -> list[str]:
    """What `pattern` matches (files, and local folders), without a trailing slash; [] if nothing."""
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001 (no EXP yet)
        return []
    return [m.path.rstrip("/") for m in found]

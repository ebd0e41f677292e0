"""A duplicate cluster whose canonical row's blob cannot be read is exported through another member.

With `--include canonical`, each duplicate cluster gives one sample: its canonical row's. When that
row's blob is missing, not the row's bytes or not an image, the shard writer exports in its place
the next member of the cluster whose blob can be read, in the order dedup chose the canonical by
(`transforms.clustering.clusters.canonical_sort_key`: status, no borders, area, dataset priority,
key). Near clusters hold different files (a resized copy, a re-encode), so one usually can; exact
clusters share one content-addressed blob, and there nothing is found.

How (a Beam graph, no global state): the selection tags the rows of clusters (ok, not placeholders,
a cluster_id) `(cluster_id, member)`, and only these are grouped by cluster_id; rows in no cluster
cross no extra shuffle. Each cluster gives one export record, its canonical row's, carrying under
FALLBACKS the other members' records in dedup's order, one per distinct blob (a member whose blob is
one already carried would fail the same way) and at most MAX_FALLBACKS. The members not carried are
skipped as `non_canonical` here; the carried ones are counted by the shard writer: the one exported
in the canonical's place as exported (and in `fallback_members`), the others as `non_canonical`.
"""

from collections.abc import Iterable, Iterator, Sequence

import apache_beam as beam

from transforms.clustering.clusters import DEFAULT_DATASET_PRIORITY, canonical_sort_key
from transforms.export import selection
from transforms.io.sinks import join_path, read_json

__all__ = [
    "FALLBACKS",
    "FALLBACK_MEMBERS",
    "MAX_FALLBACKS",
    "ClusterRecords",
    "cluster_member",
    "groups_by_cluster",
    "recorded_dataset_priority",
]

# The export record's field holding the members that may stand in for its (canonical) row.
FALLBACKS = "fallbacks"
# summary.json's count of clusters exported through a member other than the canonical row.
FALLBACK_MEMBERS = "fallback_members"
# why: the members' records cross the two shuffles of the shard assignment inside the canonical's
# record; a near cluster of thousands of distinct files would make one huge record, and a hundred
# unreadable blobs in a row say the blob store is gone, not that the next one will do
MAX_FALLBACKS = 100


def groups_by_cluster(row: dict, reason: str | None, include: str) -> bool:
    """Whether the selection sends `row` to its cluster rather than straight to the shards or a skip.

    Args:
        row: a row of OUT/images.
        reason: selection.skip_reason of the row (None: selected).
        include: "canonical" or "all".

    Returns:
        True for an ok, non-placeholder row of a duplicate cluster under `--include canonical`.
    """
    return include == "canonical" and reason in (None, selection.NON_CANONICAL) and row.get("cluster_id") is not None


def cluster_member(row: dict, dataset_priority: Sequence[str]) -> tuple[str, tuple]:
    """(cluster_id, (dedup's sort key, is canonical, export record)) of a row of a cluster.

    Args:
        row: an ok, non-placeholder row with a cluster_id.
        dataset_priority: the dedup's dataset priority (recorded_dataset_priority).

    Returns:
        What crosses the cluster shuffle: the export record, not the whole row.
    """
    return row["cluster_id"], (
        canonical_sort_key(row, dataset_priority),
        row.get("is_canonical") is not False,
        selection.export_record(row),
    )


def _cluster_records(element: tuple[str, Iterable[tuple]]) -> Iterator:
    """(cluster_id, members) -> the canonical's export record with its FALLBACKS; the members not
    carried as `non_canonical` on the skipped output."""
    _, members = element
    ordered = sorted(members, key=lambda member: member[0])
    canonicals = [record for _, canonical, record in ordered if canonical]
    if not canonicals:  # why: a table whose cluster lost its canonical row exports none of it, as before
        for _ in ordered:
            yield beam.pvalue.TaggedOutput(ClusterRecords.SKIPPED, selection.NON_CANONICAL)
        return
    first = canonicals[0]
    blobs = {first.get("blob")}
    fallbacks: list[dict] = []
    for _, canonical, record in ordered:
        if canonical:
            continue
        if record.get("blob") in blobs or len(fallbacks) >= MAX_FALLBACKS:
            yield beam.pvalue.TaggedOutput(ClusterRecords.SKIPPED, selection.NON_CANONICAL)
            continue
        blobs.add(record.get("blob"))
        fallbacks.append(record)
    yield dict(first, **{FALLBACKS: fallbacks})
    # why: a table with two canonical rows in one cluster exports both, as before
    yield from canonicals[1:]


class ClusterRecords(beam.PTransform):
    """(cluster_id, member) pairs (cluster_member) -> {"records": one export record per cluster
    (the canonical's, with FALLBACKS), "skipped": `non_canonical` per member not carried}."""

    SKIPPED = "skipped"

    def expand(self, members):
        grouped = members | "GroupClusters" >> beam.GroupByKey()
        return grouped | "CanonicalAndFallbacks" >> beam.FlatMap(_cluster_records).with_outputs(
            self.SKIPPED, main="records"
        )


def recorded_dataset_priority(out_dir: str) -> tuple[str, ...]:
    """The dataset priority the dedup of OUT chose canonical rows by, from OUT/summary.json.

    Args:
        out_dir: an ingest or dedup output.

    Returns:
        The recorded priority (ingest: duplicates.config; dedup: config), else the default one.
    """
    try:
        summary = read_json(join_path(out_dir, "summary.json"))
    except Exception:  # noqa: BLE001 (no summary: an older output, whose dedup used the default)
        return DEFAULT_DATASET_PRIORITY
    if not isinstance(summary, dict):
        return DEFAULT_DATASET_PRIORITY
    duplicates = summary.get("duplicates")
    stats: dict = duplicates if isinstance(duplicates, dict) else summary
    config = stats.get("config")
    priority = config.get("dataset_priority") if isinstance(config, dict) else None
    if isinstance(priority, list) and all(isinstance(name, str) for name in priority):
        return tuple(priority)
    return DEFAULT_DATASET_PRIORITY

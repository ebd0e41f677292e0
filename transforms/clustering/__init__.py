"""Exact and near-duplicate clusters of image rows.

- `clusters`: `Dedup`, `DedupShards`, `WriteDuplicates`: matching, canonical rows, records, stats.
- `near_search`: `NearDuplicatePairs`, banded pHash search with exact recall up to the threshold.
- `components`: `ConnectedComponents` of an edge list that need not fit on one worker.
- `spill`: `GroupRecords`, the on-disk GroupByKey of numpy records in local runs.
- `placeholders`, `urls`: known stand-in pictures; URL normalisation.
"""

__all__ = ["clusters", "components", "near_search", "placeholders", "spill", "urls"]

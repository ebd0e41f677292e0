"""Export of an ingest or dedup output as training-ready shards (pipelines/export.py): which rows
(selection), how images are sized (resize), and the two shard formats (webdataset_shards,
hf_parquet_shards) written through one deterministic, two-phase shard writer (shard_writer)."""

__all__ = ["hf_parquet_shards", "resize", "selection", "shard_writer", "webdataset_shards"]

"""Reusable Beam PTransforms, DoFns and pure functions of the image pipeline, one package per stage.

- `io`: manifest formats, side files and their joins, the table and blob sinks, resume.
- `fetch`: the HTTP client (politeness, redirects, retries) and the address policy (SSRF guard).
- `hashing`: guarded decode, sha256/md5, pHash/dHash.
- `clustering`: exact and near-duplicate clusters (near search, connected components, spill).
- `liveness`: the nightly refresh's verdicts.
- `schema` (the row dict and Parquet schemas), `errors` (one-line job failures),
  `record_progress` (per-row metrics and live tallies).

docs/architecture.md maps every module and the element types between the stages.
"""

__all__ = ["clustering", "errors", "fetch", "hashing", "io", "liveness", "record_progress", "schema"]

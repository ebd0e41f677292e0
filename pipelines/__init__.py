"""The runnable jobs (`python -m pipelines.<job>`) and what only jobs use.

- `ingest`, `dedup`, `refresh`, `export`: one module per job.
- `launch`: what every job shares (runner defaults, option groups, wait) and the Flex Template entry.
- `report`: the live progress line, Beam metrics in summary.json, OUT/report.html.
- `demo`: the bundled sample and the loopback web server that serves it.
"""

__all__ = ["dedup", "demo", "ingest", "launch", "refresh", "report"]

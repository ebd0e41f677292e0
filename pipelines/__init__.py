"""The runnable jobs (`python -m pipelines.<job>`) and what only jobs use.

- `ingest`, `dedup`, `refresh`, `export`: one module per job.
- `launch`: what every job shares (runner defaults, option groups, wait, exit statuses) and the
  Flex Template entry.
- `report`: the live progress line, Beam metrics in summary.json, OUT/report.html.
- `demo`: the bundled sample and the loopback web server that serves it.
"""

import sys

if sys.argv[:1] == ["-m"]:  # Python is locating a job module run with -m: Ctrl-C during imports is one line
    from pipelines.launch import early_interrupt

    early_interrupt.install()

__all__ = ["dedup", "demo", "export", "ingest", "launch", "refresh", "report"]

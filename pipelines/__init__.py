"""The jobs: `python -m pipelines.ingest | dedup | refresh | export` (docs/architecture.md)."""
import sys

if sys.argv[:1] == ["-m"]:  # Python is locating a job module run with -m: Ctrl-C during imports is one line
    from pipelines.launch import early_interrupt

    early_interrupt.install()

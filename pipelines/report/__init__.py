"""What a run tells a person: `progress_line` (live, local runs), `run_metrics` (Beam metrics into
summary.json), `run_resources` (what a local run cost: CPU, memory, per row), `export_lines`,
`dedup_lines` (those jobs' closing lines), `html_report` (OUT/report.html; `python -m pipelines.report OUT`)."""

__all__ = ["dedup_lines", "export_lines", "html_report", "progress_line", "run_metrics", "run_resources"]

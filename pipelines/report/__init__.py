"""What a run tells a person: `progress_line` (live, local runs), `run_metrics` (Beam metrics into
summary.json) and `html_report` (OUT/report.html; `python -m pipelines.report OUT`)."""

__all__ = ["html_report", "progress_line", "run_metrics"]

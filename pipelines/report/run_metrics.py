"""Beam metrics read back after a run and merged into OUT/summary.json under "metrics".

Works wherever the driver holds a finished PipelineResult: local runners and Dataflow when the
launcher waits for the job. A launcher that does not wait (a Flex Template launch returns once the
job is submitted) never gets here: summary.json then stays as the pipeline wrote it, without the
"metrics" section, and the job's counters are in the Dataflow console / `gcloud dataflow metrics`.
"""

from __future__ import annotations

import logging
from typing import Any

from apache_beam.runners.runner import PipelineResult, PipelineState

from transforms.io.sinks import join_path, read_json, write_json

__all__ = ["metrics_section", "query_metrics", "merge_into_summary", "record_run_metrics"]

LOG = logging.getLogger(__name__)


def _value(result):
    """Committed where the runner reports it (Dataflow batch, FnApi), else attempted."""
    try:
        committed = result.committed
    except Exception:  # some runners raise rather than return None
        committed = None
    return committed if committed is not None else result.attempted


def _merge_distribution(into, dist):
    if dist is None or not dist.count:
        return into
    if into is None:
        return {"count": dist.count, "sum": dist.sum, "min": dist.min, "max": dist.max}
    into["count"] += dist.count
    into["sum"] += dist.sum
    into["min"] = min(into["min"], dist.min)
    into["max"] = max(into["max"], dist.max)
    return into


def metrics_section(results: dict[str, list]) -> dict[str, dict]:
    """MetricResults.query() output -> {"counters": {ns: {name: n}}, "distributions": {ns: {name:
    {count, sum, min, max, mean}}}}, summed over the steps that report the same metric."""
    counters: dict[str, dict[str, Any]] = {}
    distributions: dict[str, dict[str, Any]] = {}
    for result in results.get("counters", []):
        metric = result.key.metric
        per = counters.setdefault(metric.namespace, {})
        per[metric.name] = per.get(metric.name, 0) + int(_value(result) or 0)
    for result in results.get("distributions", []):
        metric = result.key.metric
        per = distributions.setdefault(metric.namespace, {})
        merged = _merge_distribution(per.get(metric.name), _value(result))
        if merged is None:
            continue
        per[metric.name] = merged
    for per in distributions.values():
        for dist in per.values():
            dist["mean"] = round(dist["sum"] / dist["count"], 3)
    empty = [ns for ns, per in distributions.items() if not per]
    for ns in empty:
        del distributions[ns]
    return {
        "counters": {ns: dict(sorted(per.items())) for ns, per in sorted(counters.items())},
        "distributions": {ns: dict(sorted(per.items())) for ns, per in sorted(distributions.items())},
    }


def query_metrics(pipeline_result: PipelineResult) -> dict[str, dict] | None:
    """The metrics section of a finished run, or None where the runner cannot say."""
    try:
        return metrics_section(pipeline_result.metrics().query())
    except Exception as exc:  # a runner without metrics support must not fail a finished run
        LOG.warning("cannot read pipeline metrics: %s", exc)
        return None


def merge_into_summary(out: str, section: dict[str, Any]) -> dict[str, Any]:
    """Adds `section` to OUT/summary.json as "metrics" (local or gs://). Returns the summary."""
    path = join_path(out, "summary.json")
    summary = read_json(path)
    summary["metrics"] = section
    write_json(path, summary)
    return summary


def record_run_metrics(pipeline_result: PipelineResult, out: str) -> dict[str, Any] | None:
    """After `wait_until_finish()`: merge the run's metrics into OUT/summary.json. Skipped (None
    returned) when the job has not finished successfully, e.g. a launcher that did not wait."""
    state = getattr(pipeline_result, "state", None)
    if state != PipelineState.DONE:
        LOG.info("job state %s: summary.json left without metrics", state)
        return None
    section = query_metrics(pipeline_result)
    if section is None:
        return None
    return merge_into_summary(out, section)

"""Beam metrics read back from a finished run and merged into summary.json."""

import json

import apache_beam as beam
from apache_beam.runners.runner import PipelineState

from pipelines.report import run_metrics


class CountAndMeasure(beam.DoFn):
    def setup(self):
        self._seen = beam.metrics.Metrics.counter("test", "seen")
        self._size = beam.metrics.Metrics.distribution("test", "size")

    def process(self, value):
        self._seen.inc()
        self._size.update(value)
        yield value


def run_counting_pipeline():
    pipeline = beam.Pipeline(runner="FnApiRunner")
    values = pipeline | beam.Create([3, 5, 10])
    _ = values | "First" >> beam.ParDo(CountAndMeasure())
    _ = values | "Second" >> beam.ParDo(CountAndMeasure())  # the same metric from two steps adds up
    result = pipeline.run()
    result.wait_until_finish()
    return result


def test_counters_and_distributions_are_summed_over_steps():
    section = run_metrics.query_metrics(run_counting_pipeline())
    assert section["counters"]["test"] == {"seen": 6}
    assert section["distributions"]["test"]["size"] == {"count": 6, "sum": 36, "min": 3, "max": 10, "mean": 6.0}


def test_finished_run_metrics_land_in_summary_json(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"rows": 3, "counts": {"cc3m": {"ok": 3}}}))
    summary = run_metrics.record_run_metrics(run_counting_pipeline(), str(tmp_path))
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    assert on_disk["rows"] == 3 and on_disk["counts"] == {"cc3m": {"ok": 3}}  # the rest is kept
    assert on_disk["metrics"]["counters"]["test"]["seen"] == 6


class NotWaitedFor:
    """What a launcher that returns at submission holds: a job still running."""

    state = PipelineState.RUNNING

    def metrics(self):
        raise AssertionError("metrics of an unfinished job must not be merged")


def test_a_run_not_waited_for_leaves_summary_json_alone(tmp_path):
    original = json.dumps({"rows": 1})
    (tmp_path / "summary.json").write_text(original)
    assert run_metrics.record_run_metrics(NotWaitedFor(), str(tmp_path)) is None
    assert (tmp_path / "summary.json").read_text() == original

"""The jobs' pipeline options make each view once (Beam re-parses the command line per view and
asks for views several times per applied transform), and the cached views stay live."""

import copy

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions, TypeOptions

from pipelines.launch.cached_options import CachedViewOptions


def test_a_view_is_made_once_and_shares_the_values():
    options = PipelineOptions(["--runner=FnApiRunner", "--direct_num_workers=3"]).view_as(CachedViewOptions)
    standard = options.view_as(StandardOptions)
    assert options.view_as(StandardOptions) is standard
    assert standard.runner == "FnApiRunner" and options.view_as(DirectOptions).direct_num_workers == 3
    options.view_as(DirectOptions).direct_num_workers = 1  # set through one view, seen by all
    assert options.view_as(DirectOptions).direct_num_workers == 1
    copied = copy.deepcopy(options)  # what beam.Pipeline does with its options
    copied.view_as(StandardOptions).runner = "DirectRunner"
    assert copied.view_as(StandardOptions).runner == "DirectRunner" and standard.runner == "FnApiRunner"
    assert copied.view_as(DirectOptions).direct_num_workers == 1


def test_a_pipeline_built_on_them_builds_few_views(monkeypatch):
    made = []
    original = PipelineOptions.__init__
    monkeypatch.setattr(PipelineOptions, "__init__", lambda self, *a, **k: made.append(1) or original(self, *a, **k))
    options = PipelineOptions(["--runner=FnApiRunner"]).view_as(CachedViewOptions)
    with beam.Pipeline(options=options) as pipeline:
        _ = pipeline | beam.Create([1, 2, 3]) | "A" >> beam.Map(lambda x: x) | "B" >> beam.Map(lambda x: x)
    assert options.view_as(TypeOptions).pipeline_type_check
    assert len(made) < 20  # ~10 with the cache; every apply adds several without it

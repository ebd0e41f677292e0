"""Flex Template parameters reach the jobs' own flags (pipelines/launch/flex_template.py, deploy/flex_main.py)."""

import runpy
import threading

import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from deploy import jobs, render_spec
from pipelines import ingest
from pipelines.launch import flex_template
from tests.fake_dataflow import FakeDataflow

INGEST = flex_template.option_actions(ingest.IngestOptions)


def parsed(argv):
    return PipelineOptions(argv).view_as(ingest.IngestOptions)


def test_dest_names_become_the_jobs_dashed_flags():
    argv = flex_template.to_job_argv(["--cc12m_hashes=gs://b/h.tsv", "--max_bytes=1024", "--output=gs://b/o"], INGEST)
    assert argv == ["--cc12m-hashes=gs://b/h.tsv", "--max-bytes=1024", "--output=gs://b/o"]
    opts = parsed(argv)
    assert (opts.cc12m_hashes, opts.max_bytes, opts.output) == ("gs://b/h.tsv", 1024, "gs://b/o")


def test_without_translation_argparse_would_drop_the_value():
    # Why the translation exists: Beam ignores an unknown spelling instead of failing.
    assert parsed(["--cc12m_hashes=gs://b/h.tsv"]).cc12m_hashes is None


def test_repeatable_options_take_a_comma_separated_list():
    argv = flex_template.to_job_argv(
        ["--manifest=cc3m=gs://b/a.tsv, cc12m=gs://b/c.tsv", "--allow_network=10.0.0.0/8,fd00::/8"], INGEST
    )
    opts = parsed(argv)
    assert opts.manifest == ["cc3m=gs://b/a.tsv", "cc12m=gs://b/c.tsv"]
    assert opts.allow_network == ["10.0.0.0/8", "fd00::/8"]


def test_boolean_parameters_become_flags_or_nothing():
    assert flex_template.to_job_argv(["--ignore_robots=true"], INGEST) == ["--ignore-robots"]
    assert flex_template.to_job_argv(["--ignore_robots=false"], INGEST) == []
    assert parsed(flex_template.to_job_argv(["--ignore_robots=TRUE"], INGEST)).ignore_robots is True
    with pytest.raises(ValueError, match="true or false"):
        flex_template.to_job_argv(["--ignore_robots=maybe"], INGEST)


def test_beam_options_and_other_arguments_pass_through():
    argv = [
        "--runner=DataflowRunner",
        "--project=p",
        "--number_of_worker_harness_threads=4",
        "positional",
        "--output",
        "gs://b/o",
    ]
    assert flex_template.to_job_argv(argv, INGEST) == argv
    assert PipelineOptions(argv).view_as(GoogleCloudOptions).project == "p"


@pytest.mark.parametrize("name", sorted(jobs.JOBS))
def test_every_job_follows_the_module_convention(name):
    module = flex_template.job_module(name)
    assert callable(module.run) and callable(module.main)
    options = flex_template.options_class(module)
    assert set(flex_template.option_actions(options)) == set(jobs.JOBS[name].actions)


def test_flex_main_runs_the_job_named_by_the_image(monkeypatch):
    seen = []
    monkeypatch.setattr(ingest, "main", lambda argv: seen.append(argv) or 0)
    monkeypatch.setenv("BEAM_JOB", "ingest")
    monkeypatch.setattr(
        "sys.argv", ["main.py", "--manifest=cc3m=gs://b/a.tsv", "--ignore_robots=true", "--runner=DataflowRunner"]
    )
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(jobs.DEPLOY_DIR / "flex_main.py"), run_name="__main__")
    assert exit_.value.code == 0
    assert seen == [
        ["--manifest=cc3m=gs://b/a.tsv", "--ignore-robots", "--runner=DataflowRunner", "--no_wait_until_finish"]
    ]


def test_a_parameter_neither_the_job_nor_beam_knows_stops_the_launcher_in_one_line(capsys, tmp_path):
    """Before Beam sees it: Beam itself would only log "Discarding unparseable args" and the job
    would run with the option's default (pipelines/launch/arguments.py)."""
    argv = ["--snapshot=gs://b/snap", f"--output={tmp_path}/night", "--dead_afer=5", "--runner=FnApiRunner"]
    assert flex_template.main(argv, job="refresh") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "refresh: unknown option --dead_afer (did you mean --dead-after?)"
    ]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", sorted(jobs.JOBS))
def test_every_template_parameter_is_an_option_the_job_accepts(name):
    """The metadata's parameters are the job's own options or Beam's (worker settings such as
    number_of_worker_harness_threads): none is refused as unknown when the launcher passes it."""
    from pipelines.launch import arguments

    module = flex_template.job_module(name)
    parser = module.JOB.help_parser()
    arguments.check_known(parser, [])
    known = {flag for action in parser._actions for flag in action.option_strings}
    parameters = [p["name"] for p in jobs.template_metadata(jobs.JOBS[name])["parameters"]]
    own = flex_template.option_actions(flex_template.options_class(module))
    spelt = [flex_template.long_flag(own[p]) if p in own else f"--{p}" for p in parameters]
    assert [flag for flag in spelt if flag not in known] == []


@pytest.mark.dataflow
@pytest.mark.timeout(180)
def test_the_refresh_launcher_returns_once_the_job_is_submitted(gcs_emulator, monkeypatch):
    """As Dataflow's launcher runs it (flex_main -> flex_template.main, which adds
    --no_wait_until_finish), the refresh submits its job to a fake Dataflow endpoint whose job stays
    RUNNING for ever, and returns: it never polls the job's messages as wait_until_finish would."""
    job = jobs.JOBS["refresh"]
    bucket = "refresh-launch"
    parameters = render_spec.stage_sample_inputs(job, gcs_emulator, bucket)
    parameters["night"] = "2030-03-01"
    argv = render_spec.runner_argv(
        job,
        parameters,
        jobs.load_defaults(),
        project="my-project",
        bucket=bucket,
        image="europe-west4-docker.pkg.dev/p/r/refresh:1",
        job_name="refresh-nightly",
        region="europe-west4",
    )
    outcome = {}
    with FakeDataflow() as api:
        launcher = threading.Thread(
            target=lambda: outcome.update(
                code=flex_template.main(argv + [f"--dataflow_endpoint={api.endpoint}"], job="refresh")
            ),
            daemon=True,
        )
        launcher.start()
        launcher.join(timeout=150)
        assert not launcher.is_alive(), "the launcher is still waiting for a job that runs for ever"
    assert outcome["code"] == 0
    (request,) = api.requests_to("/jobs")
    assert request.body["name"] == "refresh-nightly"
    assert request.body["environment"]["sdkPipelineOptions"]["options"]["night"] == "2030-03-01"
    assert not api.requests_to("/messages", method="GET")

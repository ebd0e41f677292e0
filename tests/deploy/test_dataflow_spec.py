"""The real Dataflow job of each job, offline: the spec `make dataflow-spec` renders, and the
request DataflowRunner sends to a fake Dataflow endpoint. gs:// is the GCS emulator."""

import json

import apache_beam
import pytest
from apache_beam.portability.api import beam_runner_api_pb2
from google.cloud import dataflow
from google.protobuf import json_format

from deploy import jobs, render_spec
from tests.fake_dataflow import JOB_ID, FakeDataflow

pytestmark = [pytest.mark.dataflow, pytest.mark.timeout(120)]

# Steps each job's spec must hold, in graph order (read, fetch, write).
STEPS = {
    "ingest": ["ReadManifests", "Fetch", "Hash", "StoreBlobs", "WriteImages", "WriteSummary"],
    "refresh": ["ReadSnapshots", "CheckUrls", "Judge", "WriteStatus", "WriteSummary"],
    "export": ["ReadTable", "Select", "AssignShards", "WriteShards", "WriteSummary"],
}
DEFAULTS = jobs.load_defaults(environ={})


@pytest.fixture(scope="session")
def rendered(gcs_emulator, tmp_path_factory):
    """One render per job for the whole session: DataflowRunner takes seconds per job."""
    out = tmp_path_factory.mktemp("dataflow-spec")
    return {name: render_spec.render(job, out, gcs_emulator, defaults=DEFAULTS) for name, job in jobs.JOBS.items()}


def in_order(expected, actual):
    positions = [actual.index(step) for step in expected]
    return positions == sorted(positions)


def test_every_job_has_expected_steps():
    assert set(STEPS) == set(jobs.JOBS)


@pytest.mark.parametrize("name", sorted(jobs.JOBS))
def test_spec_runs_the_custom_container(rendered, name):
    spec = rendered[name].spec
    json_format.ParseDict(spec, dataflow.Job.pb()())  # a Job message of the Dataflow API, nothing else
    assert spec["name"] == f"{name}-offline" and spec["type"] == "JOB_TYPE_BATCH"
    (pool,) = spec["environment"]["workerPools"]
    image = rendered[name].image
    assert pool["workerHarnessContainerImage"] == image
    assert {c["containerImage"] for c in pool["sdkHarnessContainerImages"]} == {image}


@pytest.mark.parametrize("name", sorted(jobs.JOBS))
def test_spec_has_the_jobs_steps(rendered, name):
    steps = rendered[name].top_level_steps()
    assert in_order(STEPS[name], steps), steps


@pytest.mark.parametrize("name", sorted(jobs.JOBS))
def test_spec_carries_the_worker_defaults(rendered, name):
    spec = rendered[name].spec
    (pool,) = spec["environment"]["workerPools"]
    assert pool["machineType"] == DEFAULTS["DATAFLOW_MACHINE_TYPE"]
    assert pool["diskSizeGb"] == int(DEFAULTS["DATAFLOW_DISK_SIZE_GB"])
    assert pool["numThreadsPerWorker"] == int(DEFAULTS["DATAFLOW_HARNESS_THREADS"])
    assert pool["autoscalingSettings"]["maxNumWorkers"] == int(DEFAULTS["DATAFLOW_MAX_WORKERS"])
    assert spec["environment"]["tempStoragePrefix"].startswith(
        f"storage.googleapis.com/{render_spec.OFFLINE_BUCKET}/tmp"
    )


@pytest.mark.parametrize("name", sorted(jobs.JOBS))
def test_spec_passes_the_template_parameters_through(rendered, name):
    options = rendered[name].spec["environment"]["sdkPipelineOptions"]["options"]
    actions = jobs.JOBS[name].actions
    assert rendered[name].parameters
    for dest, value in rendered[name].parameters.items():
        expected = value.split(",") if jobs.flex_template.is_repeatable(actions[dest]) else value
        if actions[dest].type in (int, float):  # numbers travel as JSON numbers
            expected = actions[dest].type(value)
        assert options[dest] == expected, dest
    assert options["region"] == DEFAULTS["DATAFLOW_REGION"] and options["project"] == "offline-project"


@pytest.mark.parametrize("name", sorted(jobs.JOBS))
def test_spec_names_the_beam_version_of_the_image(rendered, name):
    (pool,) = rendered[name].spec["environment"]["workerPools"]
    (container,) = pool["sdkHarnessContainerImages"]
    assert f"beam:version:sdk_base:apache/beam_python3.11_sdk:{apache_beam.__version__}" in container["capabilities"]


def test_make_target_writes_the_spec_files(gcs_emulator, tmp_path):
    """`make dataflow-spec` = `python -m deploy.render_spec --out deploy/build`: <job>.json per job."""
    assert render_spec.main(["--out", str(tmp_path), "--job", "ingest", "--image", "r/p/{job}:v1"]) == 0
    spec = json.loads((tmp_path / "ingest.json").read_text())
    assert spec["environment"]["workerPools"][0]["workerHarnessContainerImage"] == "r/p/ingest:v1"
    assert (tmp_path / "ingest.pipeline.pb").stat().st_size > 0


def test_ingest_submission_request(gcs_emulator):
    """DataflowRunner submits ingest, as the Flex Template launcher runs it (no waiting), to a fake
    Dataflow endpoint; the request is what Dataflow gets."""
    job = jobs.JOBS["ingest"]
    bucket = "submit-bucket"
    image = "europe-west4-docker.pkg.dev/my-project/beam-images/ingest:abc123"
    parameters = render_spec.stage_sample_inputs(job, gcs_emulator, bucket)
    argv = render_spec.runner_argv(
        job,
        parameters,
        DEFAULTS,
        project="my-project",
        bucket=bucket,
        image=image,
        job_name="ingest-nightly-test",
        region="europe-west4",
    )
    with FakeDataflow() as api:
        result = job.run(argv + [f"--dataflow_endpoint={api.endpoint}", "--no_wait_until_finish"])

    assert result.job_id() == JOB_ID
    (request,) = api.requests_to("/jobs")
    assert request.path.startswith("/v1b3/projects/my-project/locations/europe-west4/jobs")
    body = request.body
    message = json_format.ParseDict(body, dataflow.Job.pb()())  # enums travel as numbers here
    assert message.name == "ingest-nightly-test" and message.type_ == dataflow.JobType.JOB_TYPE_BATCH
    env = body["environment"]
    assert env["sdkPipelineOptions"]["options"]["project"] == "my-project"
    (pool,) = env["workerPools"]
    assert pool["workerHarnessContainerImage"] == image
    assert [c["containerImage"] for c in pool["sdkHarnessContainerImages"]] == [image]
    assert pool["machineType"] == DEFAULTS["DATAFLOW_MACHINE_TYPE"]
    assert env["sdkPipelineOptions"]["options"]["manifest"] == parameters["manifest"].split(",")

    # Staged files: each package the job names, and the pipeline proto, are in the bucket.
    client = gcs_emulator.client()
    staged = {}
    for package in pool["packages"]:
        prefix = f"storage.googleapis.com/{bucket}/"
        assert package["location"].startswith(prefix + "staging/ingest-nightly-test.")
        staged[package["name"]] = client.bucket(bucket).blob(package["location"][len(prefix) :]).download_as_bytes()
    assert "submission_environment_dependencies.txt" in staged and all(staged.values())
    assert b"apache-beam==" in staged["submission_environment_dependencies.txt"]
    pipeline = beam_runner_api_pb2.Pipeline.FromString(
        render_spec.read_gcs(gcs_emulator, render_spec.pipeline_url(body))
    )
    names = {t.unique_name for t in pipeline.components.transforms.values()}
    assert set(STEPS["ingest"]) <= names

    # The launcher returned while the job runs: no wait_until_finish polling (it reads the job's
    # messages); at most a look at the job's state.
    assert not api.requests_to("/messages", method="GET")
    job_path = f"/v1b3/projects/my-project/locations/europe-west4/jobs/{JOB_ID}"
    assert {r.path.split("?")[0] for r in api.requests if r.method == "GET"} <= {job_path}

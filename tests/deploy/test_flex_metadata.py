"""Flex Template metadata and launch bodies (deploy/jobs.py), checked as Dataflow would check them."""

import re

import pytest
from google.cloud import dataflow
from google.protobuf import json_format

from deploy import jobs

JOB_NAMES = sorted(jobs.JOBS)

# (parameter, values Dataflow must accept, values it must refuse) for ingest.
INGEST_VALUES = [
    (
        "manifest",
        ["cc3m=gs://my-bucket/cc3m.tsv", "zero=gs://my-bucket/zero/*.csv.gz,openimages=gs://ab1/o.csv"],
        [
            "cc3m=/local/cc3m.tsv",
            "laion=gs://my-bucket/l.tsv",
            "gs://my-bucket/cc3m.tsv",
            "cc3m=gs://b/x.tsv",
            "cc3m=gs://my-bucket/a.tsv,",
        ],
    ),
    ("output", ["gs://my-bucket/out", "gs://my.bucket_1"], ["/tmp/out", "gs://My-Bucket/out", "gs://my-bucket/o\n"]),
    (
        "openimages_labels",
        ["gs://my-bucket/a.csv,gs://my-bucket/b.csv"],
        ["gs://my-bucket/a.csv gs://my-bucket/b.csv", "/local/a.csv"],
    ),
    ("allow_network", ["10.0.0.0/8", "10.0.0.0/8,fd00::/8,192.168.1.7"], ["10.0.0.0/8 ; rm -rf", "any"]),
    ("timeout", ["20", "2.5"], ["-1", "1e3", "twenty"]),
    ("max_bytes", ["33554432"], ["32MB", "1.5"]),
    ("ignore_robots", ["true", "false"], ["yes", "True"]),
    ("user_agent", ["research-crawler/1.0 (+https://example.org)"], ["bad\r\nX-Injected: 1", ""]),
    ("contact", ["data-team@example.org", "https://example.org/crawler"], ["a b", "x\ny"]),
    ("retry_status", ["timeout,http_error", "connection_error"], ["timeout;http_error", "dead", "timeout,"]),
    ("resume", ["true", "false"], ["1"]),
    ("dataset_priority", ["openimages,cc12m,cc3m"], ["openimages;cc12m", "laion"]),
    ("number_of_worker_harness_threads", ["4"], ["four", "-4"]),
    (
        "sdk_container_image",
        ["us-central1-docker.pkg.dev/p/beam-images/ingest:v1", "localhost:5000/img@sha256:ab"],
        ["ingest:v1", "gcr.io/p/img:v1,other"],
    ),
]


def metadata(name):
    return jobs.template_metadata(jobs.JOBS[name])


def parameters(name):
    return {p["name"]: p for p in metadata(name)["parameters"]}


@pytest.mark.parametrize("name", JOB_NAMES)
def test_committed_metadata_is_current(name):
    job = jobs.JOBS[name]
    assert jobs.metadata_path(job).read_text() == jobs.to_json(jobs.template_metadata(job)), (
        "regenerate with `make dataflow-metadata`"
    )


@pytest.mark.parametrize("name", JOB_NAMES)
def test_metadata_and_spec_parse_as_the_dataflow_api_messages(name):
    job = jobs.JOBS[name]
    json_format.ParseDict(jobs.template_metadata(job), dataflow.TemplateMetadata.pb()())
    spec = json_format.ParseDict(
        jobs.container_spec(job, "europe-docker.pkg.dev/p/r/img:1"), dataflow.ContainerSpec.pb()()
    )
    assert (
        spec.image == "europe-docker.pkg.dev/p/r/img:1" and spec.sdk_info.language == dataflow.SDKInfo.Language.PYTHON
    )


@pytest.mark.parametrize("name", JOB_NAMES)
def test_every_option_is_a_described_and_validated_parameter(name):
    params = parameters(name)
    for dest in jobs.JOBS[name].actions:
        if dest in jobs.LOCAL_ONLY:
            assert dest not in params and jobs.LOCAL_ONLY[dest]
            continue
        param = params[dest]
        assert param["label"] and len(param["helpText"]) > 10, dest
        (regex,) = param["regexes"]
        assert regex.startswith("^") and regex.endswith("$"), dest
        re.compile(regex)
        if "defaultValue" in param:
            assert re.fullmatch(regex, param["defaultValue"]), (dest, param["defaultValue"])


def test_ingest_requires_manifests_and_output_only():
    assert {n for n, p in parameters("ingest").items() if not p["isOptional"]} == {"manifest", "output"}


def test_export_requires_input_output_and_format_only():
    params = parameters("export")
    assert {n for n, p in params.items() if not p["isOptional"]} == {"input", "output", "format"}
    assert "summary.json" in params["output"]["helpText"] and "blobs" not in params["output"]["helpText"]
    assert re.fullmatch(params["format"]["regexes"][0], "hf-parquet")
    assert not re.fullmatch(params["format"]["regexes"][0], "tfrecord")


@pytest.mark.parametrize("dest, good, bad", INGEST_VALUES)
def test_ingest_regexes_accept_and_refuse(dest, good, bad):
    (regex,) = parameters("ingest")[dest]["regexes"]
    for value in good:
        assert re.fullmatch(regex, value), value
    for value in bad:
        assert not re.fullmatch(regex, value), value


def test_every_render_sample_is_a_valid_parameter():
    for name, job in jobs.JOBS.items():
        body = jobs.launch_body(
            job_name=name,
            template="gs://my-bucket/t.json",
            parameters=jobs.sample_parameters(job, "my-bucket"),
            environment={},
        )
        assert jobs.launch_problems(body, metadata(name)) == []


def test_launch_problems_name_each_refusal():
    body = jobs.launch_body(
        job_name="ingest",
        template="gs://my-bucket/t.json",
        parameters={"manifest": "cc3m=/local.tsv", "outptu": "gs://my-bucket/o", "timeout": 3},
        environment={},
    )
    problems = jobs.launch_problems(body, metadata("ingest"))
    assert any(p.startswith("manifest:") and "does not match" in p for p in problems)
    assert "outptu: not a parameter of the template" in problems
    assert "timeout: values travel as strings, got int" in problems
    assert "output: required" in problems


def test_launch_problems_catch_a_misspelt_environment_field():
    body = jobs.launch_body(
        job_name="ingest",
        template="gs://my-bucket/t.json",
        parameters=jobs.sample_parameters(jobs.JOBS["ingest"], "my-bucket"),
        environment={"maxWorker": 5},
    )
    (problem,) = jobs.launch_problems(body, metadata("ingest"))
    assert problem.startswith("not a launch request") and "maxWorker" in problem


def test_defaults_file_is_read_and_overridden_by_the_environment(tmp_path):
    env_file = tmp_path / "dataflow.env"
    env_file.write_text("# comment\nDATAFLOW_MAX_WORKERS=50\n\nDATAFLOW_MACHINE_TYPE=n2-standard-4\n")
    assert jobs.load_defaults(env_file, environ={}) == {
        "DATAFLOW_MAX_WORKERS": "50",
        "DATAFLOW_MACHINE_TYPE": "n2-standard-4",
    }
    assert jobs.load_defaults(env_file, environ={"DATAFLOW_MAX_WORKERS": "200"})["DATAFLOW_MAX_WORKERS"] == "200"
    assert set(jobs.load_defaults(environ={})) == set(jobs.WORKER_SETTINGS) | {"DATAFLOW_REGION"}


def test_sizing_arithmetic_of_the_readme():
    # CC12M in 6 h at R = 10 rows/s/vCPU, U = 0.8: 12,423,374 / 172,800 = 71.9 -> 72 vCPUs, 18 workers.
    assert jobs.sizing(12_423_374, 6, 10) == (72, 18)
    assert jobs.sizing(12_423_374, 2, 10) == (216, 54)
    assert jobs.sizing(3_318_333, 2, 10, vcpus_per_worker=8) == (58, 8)

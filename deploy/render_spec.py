"""Render the real Dataflow job spec of each job offline: `make dataflow-spec`.

    python -m deploy.render_spec [--job ingest] [--out deploy/build] [--project P] [--image I]

DataflowRunner with --template_location writes the job request it would submit (worker pool,
container image, options) to deploy/build/<job>.json instead of submitting it. The job's steps
live in the pipeline proto it stages; that is kept beside it as <job>.pipeline.pb. Staging and
temp locations are gs:// paths served by a GCS emulator on loopback, credentials are anonymous,
and the job's parameters go through the same translation as on the Flex Template launcher: no
traffic leaves 127.0.0.0/8 and no cloud account is needed.
"""

import argparse
import dataclasses
import io
import json
import logging
import os
import pathlib
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from deploy import jobs
from deploy.offline import OFFLINE_ENV, OFFLINE_PROJECT, offline_gcs
from pipelines.launch import flex_template
from transforms import schema

OFFLINE_BUCKET = "offline-bucket"


@dataclasses.dataclass
class RenderedSpec:
    job: str
    spec_path: pathlib.Path  # the job request JSON
    pipeline_path: pathlib.Path  # the staged pipeline proto (steps), binary
    parameters: dict  # the template parameters rendered
    image: str

    @property
    def spec(self):
        return json.loads(self.spec_path.read_text())

    def pipeline(self):
        from apache_beam.portability.api import beam_runner_api_pb2

        return beam_runner_api_pb2.Pipeline.FromString(self.pipeline_path.read_bytes())

    def top_level_steps(self):
        """Names of the job's top-level transforms, in graph order."""
        proto = self.pipeline()
        transforms = proto.components.transforms
        return [transforms[t].unique_name for root in proto.root_transform_ids for t in transforms[root].subtransforms]


def offline_image(job, defaults, project=OFFLINE_PROJECT):
    return f"{defaults['DATAFLOW_REGION']}-docker.pkg.dev/{project}/beam-images/{job.name}:offline"


def stage_sample_inputs(job, emulator, bucket=OFFLINE_BUCKET):
    """Creates `bucket` and the objects the job opens while building its graph; returns the
    template parameters of the render (samples from deploy/jobs.py PARAMS)."""
    gcs_bucket = emulator.bucket(bucket)
    parameters = jobs.sample_parameters(job, bucket)
    tables = set(jobs.sample_tables(job, parameters))
    for uri in jobs.sample_inputs(job, parameters):
        name = uri.split("/", 3)[3]
        if uri in tables:  # an ingest output: the job reads its Parquet schema while building the graph
            gcs_bucket.blob(f"{name}/images/part-0.parquet").upload_from_string(_sample_table())
        else:
            # Empty: the launcher checks a side file's first lines are of its kind
            # (transforms/io/side_files.py), and an empty file holds nothing to judge.
            gcs_bucket.blob(name).upload_from_string(b"")
    return parameters


def _sample_table():
    """A one-row table: an empty one is a finished job (the refresh has "nothing to check")."""
    row = schema.new_row("cc3m", "cc3m:1", "https://example.com/a.jpg", status=schema.OK)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([schema.to_parquet_record(row)], schema=schema.IMAGE_SCHEMA), buffer)
    return buffer.getvalue()


def runner_argv(job, parameters, defaults, *, project, bucket, image, job_name, region=None):
    """DataflowRunner options plus the template `parameters`, translated as the launcher does."""
    parameters = dict(parameters, **jobs.worker_parameters(defaults))
    template_args = [f"--{name}={value}" for name, value in parameters.items()]
    return jobs.dataflow_args(
        defaults, project=project, bucket=bucket, image=image, job_name=job_name, region=region
    ) + flex_template.to_job_argv(template_args, job.actions)


def render(job, out_dir, emulator, *, defaults=None, project=OFFLINE_PROJECT, image=None, bucket=OFFLINE_BUCKET):
    """Runs `job` through DataflowRunner with --template_location into out_dir; see module doc."""
    defaults = defaults or jobs.load_defaults()
    image = image or offline_image(job, defaults, project)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / f"{job.name}.json"
    parameters = stage_sample_inputs(job, emulator, bucket)
    argv = runner_argv(
        job, parameters, defaults, project=project, bucket=bucket, image=image, job_name=f"{job.name}-offline"
    )
    job.run(argv + [f"--template_location={spec_path}"])

    pipeline_path = out_dir / f"{job.name}.pipeline.pb"
    pipeline_path.write_bytes(read_gcs(emulator, pipeline_url(json.loads(spec_path.read_text()))))
    return RenderedSpec(job.name, spec_path, pipeline_path, parameters, image)


def pipeline_url(job_request):
    """gs:// URL of the pipeline proto a Dataflow job request points at."""
    return job_request["environment"]["sdkPipelineOptions"]["options"]["pipelineUrl"]


def read_gcs(emulator, url):
    bucket, _, name = url[len("gs://") :].partition("/")
    return emulator.client().bucket(bucket).blob(name).download_as_bytes()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--job", action="append", choices=sorted(jobs.JOBS), help="default: every job")
    parser.add_argument("--out", default=str(jobs.BUILD_DIR))
    parser.add_argument("--project", default=OFFLINE_PROJECT, help="project named in the spec (nothing is sent)")
    parser.add_argument("--image", help="container image named in the spec; default: a placeholder")
    args = parser.parse_args(argv)
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    logging.getLogger().setLevel(logging.WARNING)
    with offline_gcs(args.project) as emulator:
        for name in args.job or sorted(jobs.JOBS):
            job = jobs.JOBS[name]
            image = args.image.replace("{job}", name) if args.image else None
            rendered = render(job, args.out, emulator, project=args.project, image=image)
            print(f"{rendered.spec_path}: {rendered.image}; steps: {', '.join(rendered.top_level_steps())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

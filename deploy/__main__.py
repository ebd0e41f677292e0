"""Deploy helpers the scripts of deploy/ call: `python -m deploy COMMAND ...`.

jobs                                  the job names, one a line
metadata JOB [--write]                Flex Template metadata (--write: deploy/templates/JOB-metadata.json)
template-spec JOB --image IMAGE       the Flex Template spec file to upload to GCS
launch-body JOB --template GS --image IMAGE --bucket B [--service-account SA]
            [--job-name NAME] [--param NAME=VALUE ...]
                                      a flexTemplates:launch body, checked against the metadata
size --rows M --hours N --rate R [--vcpus-per-worker 4] [--utilization 0.8]
                                      vCPUs and workers for M rows in N hours (docs/dataflow.md, Sizing)
"""

import argparse
import sys

from deploy import jobs


def _job(name):
    if name not in jobs.JOBS:
        raise argparse.ArgumentTypeError(f"unknown job {name!r}; jobs: {', '.join(sorted(jobs.JOBS))}")
    return jobs.JOBS[name]


def _assignment(text):
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def build_launch_body(args, defaults=None):
    """The launch body of `args` (a parsed launch-body command) and its problems."""
    defaults = defaults or jobs.load_defaults()
    parameters = dict(jobs.worker_parameters(defaults), **dict(args.parameters))
    body = jobs.launch_body(
        job_name=args.job_name or args.job.name,
        template=args.template,
        parameters=parameters,
        environment=jobs.launch_environment(
            defaults, bucket=args.bucket, image=args.image, service_account=args.service_account
        ),
    )
    return body, jobs.launch_problems(body, jobs.template_metadata(args.job))


def parser():
    top = argparse.ArgumentParser(prog="python -m deploy", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("jobs")
    metadata = commands.add_parser("metadata")
    metadata.add_argument("job", type=_job)
    metadata.add_argument("--write", action="store_true")
    spec = commands.add_parser("template-spec")
    spec.add_argument("job", type=_job)
    spec.add_argument("--image", required=True)
    launch = commands.add_parser("launch-body")
    launch.add_argument("job", type=_job)
    launch.add_argument("--template", required=True, help="gs:// path of the template spec file")
    launch.add_argument("--image", required=True, help="worker image (the job's image tag)")
    launch.add_argument("--bucket", required=True, help="bucket of the staging and temp locations")
    launch.add_argument("--service-account", help="worker service account email")
    launch.add_argument("--job-name", help="default: the job's name")
    launch.add_argument(
        "--param",
        dest="parameters",
        action="append",
        default=[],
        type=_assignment,
        metavar="NAME=VALUE",
        help="a template parameter (repeatable)",
    )
    size = commands.add_parser("size")
    size.add_argument("--rows", type=int, required=True)
    size.add_argument("--hours", type=float, required=True)
    size.add_argument("--rate", type=float, required=True, help="measured rows/s per vCPU (bench/)")
    size.add_argument("--vcpus-per-worker", type=int, default=4)
    size.add_argument("--utilization", type=float, default=0.8)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    if args.command == "jobs":
        print("\n".join(sorted(jobs.JOBS)))
    elif args.command == "metadata":
        text = jobs.to_json(jobs.template_metadata(args.job))
        if args.write:
            jobs.metadata_path(args.job).write_text(text)
            print(jobs.metadata_path(args.job))
        else:
            sys.stdout.write(text)
    elif args.command == "template-spec":
        sys.stdout.write(jobs.to_json(jobs.container_spec(args.job, args.image)))
    elif args.command == "launch-body":
        body, problems = build_launch_body(args)
        if problems:
            print("launch body refused:\n  " + "\n  ".join(problems), file=sys.stderr)
            return 2
        sys.stdout.write(jobs.to_json(body))
    elif args.command == "size":
        vcpus, workers = jobs.sizing(args.rows, args.hours, args.rate, args.utilization, args.vcpus_per_worker)
        print(f"{vcpus} vCPUs = {workers} workers of {args.vcpus_per_worker} vCPUs (DATAFLOW_MAX_WORKERS={workers})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

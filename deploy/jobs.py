"""The Dataflow jobs of the project: registry, worker defaults, Flex Template metadata, launch bodies.

Adding a job is one entry in JOBS: its module (pipelines/<name>.py, see pipelines/launch/flex_template.py)
supplies the options; PARAMS says how each option is labelled and validated for Dataflow; the
image tag, template spec, offline spec render and launch bodies follow.
"""

import dataclasses
import functools
import json
import math
import os
import pathlib
import re

from pipelines.launch import flex_template
from transforms import schema

DEPLOY_DIR = pathlib.Path(__file__).resolve().parent
DEFAULTS_FILE = DEPLOY_DIR / "dataflow.env"
TEMPLATES_DIR = DEPLOY_DIR / "templates"
BUILD_DIR = DEPLOY_DIR / "build"


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    description: str

    @functools.cached_property
    def actions(self):
        """{dest: argparse action} of the job's own options."""
        module = flex_template.job_module(self.name)
        return flex_template.option_actions(flex_template.options_class(module))

    def run(self, argv):
        return flex_template.job_module(self.name).run(argv)


JOBS = {
    job.name: job
    for job in (
        Job(
            "ingest",
            "URL manifests of image-text datasets -> Parquet rows (one per manifest row, failures "
            "included), content-addressed image blobs and summary.json.",
        ),
        Job(
            "refresh",
            "Nightly re-check of every URL of an ingest output: alive, changed, dead or unreachable, "
            "with history across nights.",
        ),
        Job(
            "export",
            "An ingest or dedup output -> training-ready shards: WebDataset tar or Hugging Face Parquet, "
            "deduplicated, optionally resized, with summary.json.",
        ),
    )
}


# ---- parameters -------------------------------------------------------------------------------
# Regexes are anchored and use only syntax Python and Java (Dataflow's validator) read alike.


@dataclasses.dataclass(frozen=True)
class Param:
    """How Dataflow shows and checks one template parameter."""

    label: str
    regex: str
    param_type: str = "TEXT"  # google.dataflow.v1beta3.ParameterType
    required: bool = False
    help: str = ""  # replaces the option's own help: for Dataflow, or where it has none
    sample: str | None = None  # value in the offline spec render; {bucket} = the emulator bucket
    reads: bool = False  # the sample names gs:// objects the job opens at construction
    sample_table: bool = False  # ... and they are ingest outputs: <uri>/images/*.parquet is read


def listed(item):
    """One `item` or several, comma-separated (how a repeatable option travels as one parameter)."""
    return rf"^{item}(?:,{item})*$"


KIND = "(?:" + "|".join(schema.DATASETS) + ")"
STATUS = "(?:" + "|".join(schema.STATUSES) + ")"
GCS_URI = r"gs://[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9](?:/[^,\s]*)?"  # bucket: 3-222 chars
GCS = rf"^{GCS_URI}$"
CIDR = r"[0-9A-Fa-f:.]+(?:/[0-9]{1,3})?"
INT = r"^[0-9]+$"
FLOAT = r"^[0-9]+(?:\.[0-9]+)?$"
BOOL = r"^(?:true|false)$"

# By option dest; options whose type says it all (int, float, flags) need no entry.
PARAMS = {
    "manifest": Param(
        "Manifests",
        listed(f"{KIND}={GCS_URI}"),
        required=True,
        reads=True,
        help=f"Manifests to ingest as KIND=PATH, comma-separated; KIND is one of "
        f"{', '.join(schema.DATASETS)}; PATH a gs:// path or glob, .gz read transparently",
        sample="cc3m=gs://{bucket}/manifests/cc3m.tsv,cc12m=gs://{bucket}/manifests/cc12m.tsv,"
        "openimages=gs://{bucket}/manifests/openimages.csv",
    ),
    "snapshot": Param(
        "Snapshots",
        listed(GCS_URI),
        required=True,
        reads=True,
        sample_table=True,
        help="Ingest outputs (gs:// folders holding images/*.parquet) whose URLs are re-checked, comma-separated",
        sample="gs://{bucket}/snapshot",
    ),
    "history": Param(
        "History folder",
        GCS,
        "GCS_WRITE_FOLDER",
        help="Dated, append-only record of earlier nights (gs:// folder)",
        sample="gs://{bucket}/history",
    ),
    "night": Param(
        "Night",
        r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        help="The night checked, YYYY-MM-DD (default: today, UTC); re-running a night replaces it",
    ),
    "placeholder": Param(
        "Placeholder hashes",
        listed(r"[0-9a-f]{16}|[0-9a-f]{64}"),
        help="Extra placeholder pictures: pHash (16 hex) or sha256 (64 hex), comma-separated",
    ),
    "placeholder_hashes": Param(
        "Placeholder pictures",
        listed(r"[0-9a-f]{16}|[0-9a-f]{64}"),
        help="pHash (16 hex) or sha256 (64 hex) of pictures served in place of removed photos, "
        "comma-separated: their rows are flagged placeholders, not duplicates",
    ),
    "output": Param(
        "Output folder",
        GCS,
        "GCS_WRITE_FOLDER",
        required=True,
        help="Output folder (gs://): gets images/*.parquet, blobs/ and summary.json",
        sample="gs://{bucket}/out",
    ),
    "cc12m_hashes": Param(
        "CC12M hash list", GCS, "GCS_READ_FILE", reads=True, sample="gs://{bucket}/manifests/cc12m_hashes.tsv"
    ),
    "openimages_labels": Param(
        "Open Images labels",
        listed(GCS_URI),
        reads=True,
        help="Open Images image-level labels CSVs, comma-separated",
        sample="gs://{bucket}/side/human-labels.csv,gs://{bucket}/side/machine-labels.csv",
    ),
    "openimages_classes": Param(
        "Open Images classes", GCS, "GCS_READ_FILE", reads=True, sample="gs://{bucket}/side/class-descriptions.csv"
    ),
    "cc3m_labels": Param(
        "CC3M labels",
        GCS,
        "GCS_READ_FILE",
        reads=True,
        sample="gs://{bucket}/side/Image_Labels_Subset_Train_GCC-Labels-training.tsv",
    ),
    "long_captions": Param(
        "DreamLIP long captions",
        GCS,
        "GCS_READ_FILE",
        reads=True,
        sample="gs://{bucket}/side/dreamlip-long-captions.csv",
    ),
    "imagenet_root": Param(
        "ImageNet train root", GCS, "GCS_READ_FOLDER", help="ILSVRC train root on gs://: <root>/<wnid>/<filename>"
    ),
    "imagenet_synsets": Param("ImageNet synset mapping", GCS, "GCS_READ_FILE"),
    "allow_network": Param(
        "Extra allowed networks",
        listed(CIDR),
        help="Networks (CIDR) also allowed to be fetched from, comma-separated; by default only "
        "public addresses are fetched",
    ),
    "user_agent": Param("User-Agent", r"^[ -~]+$", help="User-Agent header of every image request"),
    "contact": Param("Contact", r"^[!-~]+$", sample="data-team@example.org"),
    "dataset_priority": Param("Dataset priority", listed(KIND)),
    "views": Param(
        "Picture views",
        r"^(?:none|(?:mirror|trim|crop|centre)(?:,(?:mirror|trim|crop|centre))*)$",
        help="Picture views computed at hash time and matched through (docs/duplicates.md), "
        "comma-separated from mirror, trim, crop, centre, or none",
    ),
    "retry_status": Param("Statuses to fetch again", listed(STATUS)),
    "max_redirects": Param("Max redirects", INT, "NUMBER", help="Redirects followed per request"),
}

# Parameters of one job whose dest means something else there (looked up before PARAMS).
JOB_PARAMS = {
    "export": {
        "input": Param(
            "Input folder",
            GCS,
            "GCS_READ_FOLDER",
            required=True,
            reads=True,
            sample_table=True,
            help="An ingest or dedup output (gs:// folder holding images/*.parquet)",
            sample="gs://{bucket}/out",
        ),
        "output": Param(
            "Export folder",
            GCS,
            "GCS_WRITE_FOLDER",
            required=True,
            help="Export folder (gs://): gets 00000.tar, ... or 00000.parquet, ... (NAME/00000.tar, ... per"
            " split) and summary.json",
            sample="gs://{bucket}/export",
        ),
        "format": Param(
            "Shard format",
            r"^(?:webdataset|hf-parquet)$",
            required=True,
            sample="webdataset",
            help="webdataset (tar shards) or hf-parquet (Parquet shards for Hugging Face datasets)",
        ),
        "resize": Param(
            "Resize to N pixels",
            INT,
            "NUMBER",
            sample="256",
            help="Target size in pixels, see the resize mode; absent: the original bytes",
        ),
        "resize_mode": Param("Resize mode", r"^(?:keep_ratio|center_crop|border|no)$", sample="center_crop"),
        "include": Param("Rows included", r"^(?:canonical|all)$"),
        "encode_format": Param("Encoding of resized images", r"^(?:jpg|webp|png)$"),
        "split": Param(
            "Held-out splits",
            listed(r"[a-z0-9][-_a-z0-9]*=[0-9]+(?:\.[0-9]+)?(?:[eE]-?[0-9]+)?"),
            help="NAME=FRACTION, comma-separated, fractions summing to 1 (e.g. train=0.98,validation=0.02):"
            " EXP/NAME/00000.tar, ... per split; a duplicate cluster's members all fall in one split",
        ),
        "split_seed": Param("Split seed", INT, "NUMBER"),
    },
}


def job_param(job_name, dest):
    """The Param of option `dest` in job `job_name` (JOB_PARAMS, then PARAMS), or None."""
    return JOB_PARAMS.get(job_name, {}).get(dest) or PARAMS.get(dest)


# Beam worker options declared as parameters too, so that launch requests may set them.
BEAM_PARAMS = {
    "number_of_worker_harness_threads": Param(
        "Threads per SDK process",
        INT,
        "NUMBER",
        help="Bundles each Python SDK process works on at once (deploy/dataflow.env explains the default).",
    ),
    "sdk_container_image": Param(
        "Worker image",
        r"^[a-z0-9][-a-z0-9.]*(?::[0-9]+)?/[^\s,]+$",
        help="Container image of the workers: the job's own image (deploy/build_image.sh). Launch requests "
        "made by deploy/ set it in the environment instead.",
    ),
}

# Job options that are not template parameters, and why.
LOCAL_ONLY = {
    "demo": "serves the bundled sample from the launching machine's loopback, which Dataflow workers cannot reach",
    "progress": "the live progress line is drawn on the launching terminal; the Dataflow console shows progress",
    "progress_interval": "the live progress line is drawn on the launching terminal",
    "html_report": "report.html is written by the process that waited for the job; a Flex Template launch does "
    "not wait: python -m pipelines.report OUT writes it afterwards (docs/dataflow.md)",
}


def _inferred(action):
    """A Param from the option's type, for options PARAMS does not list."""
    label = action.dest.replace("_", " ").capitalize()
    if flex_template.is_flag(action):
        return Param(label, BOOL, "BOOLEAN")
    if action.type is int:
        return Param(label, INT, "NUMBER")
    if action.type is float:
        return Param(label, FLOAT, "NUMBER")
    raise KeyError(f"option --{action.dest} needs an entry in deploy/jobs.py PARAMS (label, regex)")


def param_for(action, job_name=None):
    return job_param(job_name, action.dest) or _inferred(action)


def _help_text(action, param):
    text = param.help or action.help or ""
    if action.default not in (None, False, []):  # the --help text says its default; here "Default: X." does
        text = re.sub(r"\s*\(default [^()]*\)$", "", text)
    if "%(" in text:
        text = text % {"default": action.default}
    parts = [text.rstrip(".") + "."] if text else []
    default = action.default
    if default not in (None, False, []) and not flex_template.is_flag(action):
        parts.append(f"Default: {default}.")
    return " ".join(parts)


def _parameter(name, param, help_text, default=None):
    entry = {
        "name": name,
        "label": param.label,
        "helpText": help_text,
        "isOptional": not param.required,
        "regexes": [param.regex],
        "paramType": param.param_type,
    }
    if default is not None:
        entry["defaultValue"] = default
    return entry


def template_metadata(job):
    """Flex Template metadata (google.dataflow.v1beta3.TemplateMetadata as JSON) of `job`."""
    parameters = []
    for dest, action in job.actions.items():
        if dest in LOCAL_ONLY:
            continue
        param = param_for(action, job.name)
        if flex_template.is_flag(action):
            default = "true" if action.default else "false"
        elif action.default is None or isinstance(action.default, list):
            default = None
        else:
            default = str(action.default)
        parameters.append(_parameter(dest, param, _help_text(action, param), default))
    parameters += [_parameter(name, param, param.help) for name, param in BEAM_PARAMS.items()]
    return {"name": f"beam-image-datasets {job.name}", "description": job.description, "parameters": parameters}


def container_spec(job, image):
    """The Flex Template spec file (google.dataflow.v1beta3.ContainerSpec as JSON) of `job`."""
    return {"image": image, "sdkInfo": {"language": "PYTHON"}, "metadata": template_metadata(job)}


def metadata_path(job):
    return TEMPLATES_DIR / f"{job.name}-metadata.json"


def to_json(obj):
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


# ---- worker defaults ---------------------------------------------------------------------------

# dataflow.env key -> (Beam pipeline option, Flex launch `environment` field or None: a parameter)
WORKER_SETTINGS = {
    "DATAFLOW_MACHINE_TYPE": ("machine_type", "machineType"),
    "DATAFLOW_MAX_WORKERS": ("max_num_workers", "maxWorkers"),
    "DATAFLOW_DISK_SIZE_GB": ("disk_size_gb", "diskSizeGb"),
    "DATAFLOW_HARNESS_THREADS": ("number_of_worker_harness_threads", None),
}
INT_SETTINGS = ("DATAFLOW_MAX_WORKERS", "DATAFLOW_DISK_SIZE_GB", "DATAFLOW_HARNESS_THREADS")


def load_defaults(path=DEFAULTS_FILE, environ=None):
    """dataflow.env as a dict; a variable of the same name in `environ` (os.environ) wins."""
    environ = os.environ if environ is None else environ
    defaults = {}
    for line in pathlib.Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            defaults[key.strip()] = environ.get(key.strip(), value.strip())
    return defaults


def dataflow_args(defaults, *, project, bucket, image, job_name, region=None):
    """DataflowRunner options for running a job straight from this machine (and the spec render)."""
    args = [
        "--runner=DataflowRunner",
        f"--project={project}",
        f"--region={region or defaults['DATAFLOW_REGION']}",
        f"--job_name={job_name}",
        f"--temp_location=gs://{bucket}/tmp",
        f"--staging_location=gs://{bucket}/staging",
        f"--sdk_container_image={image}",
    ]
    args += [f"--{option}={defaults[key]}" for key, (option, _) in WORKER_SETTINGS.items()]
    return args


def launch_environment(defaults, *, bucket, image, service_account=None):
    """The `environment` of a Flex Template launch request (FlexTemplateRuntimeEnvironment JSON)."""
    env = {
        "tempLocation": f"gs://{bucket}/tmp",
        "stagingLocation": f"gs://{bucket}/staging",
        "sdkContainerImage": image,
    }
    for key, (_, field) in WORKER_SETTINGS.items():
        if field:
            env[field] = int(defaults[key]) if key in INT_SETTINGS else defaults[key]
    if service_account:
        env["serviceAccountEmail"] = service_account
    return env


def worker_parameters(defaults):
    """Worker settings that travel as template parameters (no environment field exists for them)."""
    return {option: defaults[key] for key, (option, field) in WORKER_SETTINGS.items() if not field}


def launch_body(*, job_name, template, parameters, environment):
    """Body of POST .../locations/REGION/flexTemplates:launch (Cloud Scheduler, Airflow, launch.sh)."""
    return {
        "launchParameter": {
            "jobName": job_name,
            "containerSpecGcsPath": template,
            "parameters": dict(parameters),
            "environment": dict(environment),
        }
    }


def launch_problems(body, metadata):
    """What Dataflow would refuse in a launch body, checked offline; [] when it is fine.

    The body must parse as a LaunchFlexTemplateParameter (unknown or mistyped fields fail), and
    its parameters must be declared, complete and match the metadata's regexes.
    """
    from google.cloud import dataflow
    from google.protobuf import json_format

    problems = []
    try:
        json_format.ParseDict(body["launchParameter"], dataflow.LaunchFlexTemplateParameter.pb()())
    except (json_format.ParseError, KeyError) as exc:
        problems.append(f"not a launch request: {exc}")
    declared = {p["name"]: p for p in metadata["parameters"]}
    given = body.get("launchParameter", {}).get("parameters", {})
    for name, value in given.items():
        if name not in declared:
            problems.append(f"{name}: not a parameter of the template")
        elif not isinstance(value, str):
            problems.append(f"{name}: values travel as strings, got {type(value).__name__}")
        else:
            problems += [
                f"{name}: {value!r} does not match {regex}"
                for regex in declared[name].get("regexes", [])
                if not re.fullmatch(regex, value)
            ]
    problems += [f"{name}: required" for name, p in declared.items() if not p.get("isOptional") and name not in given]
    return problems


def sizing(rows, hours, rate, utilization=0.8, vcpus_per_worker=4):
    """(vCPUs, workers) to process `rows` in `hours` at `rate` rows/s per vCPU (docs/dataflow.md, Sizing)."""
    vcpus = math.ceil(rows / (rate * 3600 * hours * utilization))
    return vcpus, math.ceil(vcpus / vcpus_per_worker)


# ---- offline render ---------------------------------------------------------------------------


def sample_parameters(job, bucket):
    """Parameter values of the offline spec render: every parameter PARAMS gives a sample for."""
    return {
        dest: job_param(job.name, dest).sample.format(bucket=bucket)
        for dest in job.actions
        if job_param(job.name, dest) and job_param(job.name, dest).sample
    }


def sample_tables(job, parameters):
    """gs:// ingest outputs among the samples, which need a real images/*.parquet at construction."""
    return [
        uri
        for dest, value in parameters.items()
        if job_param(job.name, dest) and job_param(job.name, dest).sample_table
        for uri in re.findall(GCS_URI, value)
    ]


def sample_inputs(job, parameters):
    """gs:// objects the job opens while its graph is built (manifests matched, hash lists read)."""
    return [
        uri
        for dest, value in parameters.items()
        if job_param(job.name, dest) and job_param(job.name, dest).reads
        for uri in re.findall(GCS_URI, value)
    ]

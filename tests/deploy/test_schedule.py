"""The nightly schedule: deploy/schedule.sh (Cloud Scheduler or Airflow) and the Airflow DAG.

gcloud is replaced by a recorder on PATH, Airflow by two stub modules: what is checked is the
request each would send, against the template metadata and the Dataflow API messages.
"""

import json
import os
import pathlib
import py_compile
import runpy
import subprocess
import sys
import textwrap
import types

import pytest

from deploy import jobs
from tests.paths import REPO

ROOT = pathlib.Path(REPO)
DAG_FILE = ROOT / "deploy" / "airflow" / "nightly_refresh_dag.py"
JOB = "ingest"  # the machinery is the same for every job; refresh is scheduled the same way
IMAGE = "us-central1-docker.pkg.dev/my-project/beam-images/ingest:v7"
PARAMS = ["manifest=cc3m=gs://my-data/cc3m.tsv,cc12m=gs://my-data/cc12m.tsv", "output=gs://my-data/nightly"]
LAUNCH_URI = "https://dataflow.googleapis.com/v1b3/projects/my-project/locations/us-central1/flexTemplates:launch"


@pytest.fixture
def gcloud(tmp_path):
    """A fake gcloud on PATH that records its arguments; `storage cat` answers a template spec."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    fake = bin_dir / "gcloud"
    fake.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        args = sys.argv[1:]
        with open({str(log)!r}, "a") as log:
            log.write(json.dumps(args) + "\\n")
        if args[:2] == ["storage", "cat"]:
            print(json.dumps({{"image": {IMAGE!r}, "sdkInfo": {{"language": "PYTHON"}}}}))
        elif args[:3] == ["scheduler", "jobs", "describe"]:
            sys.exit(1)  # no such job yet
        """)
    )
    fake.chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PROJECT="my-project",
        TAG="v7",
        BUILD_DIR=str(tmp_path / "build"),
        PY=sys.executable,
    )
    for key in jobs.load_defaults(environ={}):
        env.pop(key, None)  # the file's defaults, not the developer's environment

    def run(*args, **extra_env):
        result = subprocess.run(
            ["bash", str(ROOT / "deploy" / "schedule.sh"), *args],
            env=dict(env, **extra_env),
            capture_output=True,
            text=True,
            timeout=120,
        )
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return result, calls

    run.build_dir = tmp_path / "build"
    return run


def option(call, name):
    return call[call.index(name) + 1]


def check_body(body, job=JOB):
    assert jobs.launch_problems(body, jobs.template_metadata(jobs.JOBS[job])) == []
    launch = body["launchParameter"]
    defaults = jobs.load_defaults(environ={})
    assert launch["containerSpecGcsPath"] == f"gs://my-project-beam-images/templates/{job}.json"
    assert launch["environment"] == jobs.launch_environment(
        defaults,
        bucket="my-project-beam-images",
        image=IMAGE,
        service_account="beam-images-worker@my-project.iam.gserviceaccount.com",
    )
    assert launch["parameters"]["number_of_worker_harness_threads"] == defaults["DATAFLOW_HARNESS_THREADS"]
    return launch


def test_cloud_scheduler_posts_the_checked_launch_request(gcloud):
    result, calls = gcloud(JOB, *PARAMS)
    assert result.returncode == 0, result.stderr
    assert ["storage", "cat", f"gs://my-project-beam-images/templates/{JOB}.json"] in calls
    (create,) = [c for c in calls if c[:4] == ["scheduler", "jobs", "create", "http"]]
    assert create[4] == f"beam-images-nightly-{JOB}"
    assert option(create, "--uri") == LAUNCH_URI and option(create, "--http-method") == "POST"
    assert option(create, "--schedule") == "0 2 * * *"
    assert option(create, "--oauth-service-account-email") == "beam-images-scheduler@my-project.iam.gserviceaccount.com"
    assert option(create, "--headers") == "Content-Type=application/json"
    launch = check_body(json.loads(pathlib.Path(option(create, "--message-body-from-file")).read_text()))
    assert launch["jobName"] == f"{JOB}-nightly"
    assert launch["parameters"]["manifest"] == PARAMS[0].partition("=")[2]


def test_cloud_scheduler_job_is_replaced_not_duplicated(gcloud, tmp_path):
    (tmp_path / "bin" / "gcloud").write_text(
        (tmp_path / "bin" / "gcloud").read_text().replace("sys.exit(1)  # no such job yet", "pass")
    )
    result, calls = gcloud(JOB, *PARAMS, SCHEDULE="30 3 * * 1")
    assert result.returncode == 0, result.stderr
    verbs = [c[2] for c in calls if c[:2] == ["scheduler", "jobs"]]
    assert verbs == ["describe", "delete", "create"]
    assert option(calls[-1], "--schedule") == "30 3 * * 1"


def test_a_refused_request_schedules_nothing(gcloud):
    result, calls = gcloud(JOB, "manifest=cc3m=/home/me/cc3m.tsv", "outptu=gs://my-data/x")
    assert result.returncode != 0
    assert "outptu: not a parameter of the template" in result.stderr and "output: required" in result.stderr
    assert not [c for c in calls if c[:2] == ["scheduler", "jobs"]]


def test_dag_file_compiles_without_airflow():
    py_compile.compile(str(DAG_FILE), doraise=True)


def load_dag(dag_file, monkeypatch):
    """Runs a DAG file against stub airflow modules; returns the operators' keyword arguments."""
    operators = []

    class DAG:
        def __init__(self, dag_id, **kwargs):
            self.dag_id, self.kwargs = dag_id, kwargs

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class DataflowStartFlexTemplateOperator:
        def __init__(self, **kwargs):
            operators.append(kwargs)

    class CronTriggerTimetable:
        def __init__(self, cron, *, timezone):
            self.cron, self.timezone = cron, timezone

    modules = {"airflow": types.ModuleType("airflow")}
    modules["airflow"].DAG = DAG
    for name in (
        "airflow.timetables",
        "airflow.timetables.trigger",
        "airflow.providers",
        "airflow.providers.google",
        "airflow.providers.google.cloud",
        "airflow.providers.google.cloud.operators",
        "airflow.providers.google.cloud.operators.dataflow",
    ):
        modules[name] = types.ModuleType(name)
    modules[
        "airflow.providers.google.cloud.operators.dataflow"
    ].DataflowStartFlexTemplateOperator = DataflowStartFlexTemplateOperator
    modules["airflow.timetables.trigger"].CronTriggerTimetable = CronTriggerTimetable
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    namespace = runpy.run_path(str(dag_file))
    return namespace, operators


def render(value, **context):
    """What Airflow's Jinja does to these fields, for the two macros the DAG uses."""
    text = json.dumps(value)
    for name, replacement in context.items():
        text = text.replace(f"{{{{ {name} }}}}", replacement)
    assert "{{" not in text, text
    return json.loads(text)


def test_airflow_dag_launches_the_checked_request_each_night(gcloud, monkeypatch):
    result, calls = gcloud(JOB, *PARAMS, COMPOSER_ENVIRONMENT="composer-1")
    assert result.returncode == 0, result.stderr
    imports = [option(c, "--source") for c in calls if c[:4] == ["composer", "environments", "storage", "dags"]]
    assert imports == [str(DAG_FILE), str(gcloud.build_dir / "nightly_refresh_launch.json")]
    assert [
        "composer",
        "environments",
        "run",
        "composer-1",
        "--project",
        "my-project",
        "--location",
        "us-central1",
        "variables",
        "set",
        "--",
        "beam_images_project",
        "my-project",
    ] in calls
    assert not [c for c in calls if c[:2] == ["scheduler", "jobs"]]

    # The DAGs folder as Composer has it: the DAG beside the request it launches.
    dag_copy = gcloud.build_dir / DAG_FILE.name
    dag_copy.write_text(DAG_FILE.read_text())
    namespace, operators = load_dag(dag_copy, monkeypatch)
    assert namespace["dag"].dag_id == "beam_images_nightly_refresh"
    schedule = namespace["dag"].kwargs["schedule"]
    # why a trigger timetable: a plain cron string gave a run its data interval's start as {{ ds }} on
    # Airflow 2 (the 02:00 run of 03-15 judged night 03-14, refused after that day's ingest: exit 2)
    assert (type(schedule).__name__, schedule.cron, schedule.timezone) == ("CronTriggerTimetable", "0 2 * * *", "UTC")
    assert namespace["dag"].kwargs["catchup"] is False
    (operator,) = operators
    assert operator["project_id"] == "{{ var.value.beam_images_project }}"
    night = render(operator["body"], ds="2026-03-14", ds_nodash="20260314")
    launch = check_body(night)
    assert launch["jobName"] == f"{JOB}-nightly-20260314"
    assert launch["parameters"]["output"] == "gs://my-data/nightly/2026-03-14"
    assert launch["parameters"]["manifest"] == PARAMS[0].partition("=")[2]


REFRESH_PARAMS = ["snapshot=gs://my-data/out", "output=gs://my-data/refresh", "history=gs://my-data/history"]


def test_airflow_refresh_night_is_the_logical_date_that_names_the_folder(gcloud, monkeypatch):
    """The night the refresh judges and the folder it writes come from one date, the run's logical
    date: a run cleared and re-run weeks later re-does that night (HISTORY/<that date>/), not today."""
    result, _calls = gcloud("refresh", *REFRESH_PARAMS, COMPOSER_ENVIRONMENT="composer-1")
    assert result.returncode == 0, result.stderr
    dag_copy = gcloud.build_dir / DAG_FILE.name
    dag_copy.write_text(DAG_FILE.read_text())
    _namespace, operators = load_dag(dag_copy, monkeypatch)
    (operator,) = operators
    for ds in ("2026-03-14", "2026-02-01"):  # tonight's run, and an old run cleared and re-run today
        launch = check_body(render(operator["body"], ds=ds, ds_nodash=ds.replace("-", "")), job="refresh")
        assert launch["parameters"]["night"] == ds
        assert launch["parameters"]["output"] == f"gs://my-data/refresh/{ds}"
        assert launch["parameters"]["history"] == "gs://my-data/history"  # one history, a folder per night
    # ingest has no night: its request is left without one (the template would refuse it)
    ingest_body = json.loads((gcloud.build_dir / "nightly_refresh_launch.json").read_text())
    ingest_body["launchParameter"]["containerSpecGcsPath"] = "gs://b/templates/ingest.json"
    namespace = runpy.run_path(str(dag_copy))
    assert "night" not in namespace["nightly_body"](ingest_body)["launchParameter"]["parameters"]


def test_cloud_scheduler_refresh_body_leaves_the_night_to_the_launch_date(gcloud):
    """Cloud Scheduler posts one fixed body: no night in it, so the job takes the launch date (UTC),
    and "{night}" in the output gives each night its own folder named by that same date."""
    params = REFRESH_PARAMS[:1] + ["output=gs://my-data/refresh/{night}"] + REFRESH_PARAMS[2:]
    result, calls = gcloud("refresh", *params)
    assert result.returncode == 0, result.stderr
    (create,) = [c for c in calls if c[:4] == ["scheduler", "jobs", "create", "http"]]
    launch = check_body(json.loads(pathlib.Path(option(create, "--message-body-from-file")).read_text()), job="refresh")
    assert "night" not in launch["parameters"]
    assert launch["parameters"]["output"] == "gs://my-data/refresh/{night}"


def test_deploy_scripts_parse():
    for script in sorted((ROOT / "deploy").glob("*.sh")):
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_env_sh_names_and_defaults():
    script = ". deploy/env.sh; image_for ingest; template_for ingest; echo $DATAFLOW_MAX_WORKERS $BUCKET $REGION"
    env = dict(os.environ, PROJECT="p-1", TAG="t1", DATAFLOW_MAX_WORKERS="7")
    env.pop("BUCKET", None), env.pop("REGION", None)
    out = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=True
    ).stdout.split("\n")
    defaults = jobs.load_defaults(environ={})
    assert out[0] == f"{defaults['DATAFLOW_REGION']}-docker.pkg.dev/p-1/beam-images/ingest:t1"
    assert out[1] == "gs://p-1-beam-images/templates/ingest.json"
    assert out[2] == f"7 p-1-beam-images {defaults['DATAFLOW_REGION']}"

"""Nightly refresh on Airflow (Cloud Composer): one Flex Template launch a night.

The launch request is the one deploy/schedule.sh renders and checks against the template's
metadata; it lies beside this file as nightly_refresh_launch.json (`COMPOSER_ENVIRONMENT=...
bash deploy/schedule.sh refresh ...` uploads both). Each run gets its own Dataflow job name and
writes under <output>/<logical date>/, and the refresh is told the same date as its `night`: the
folder and the history night always agree, and clearing an old DAG run re-runs that night only
(its folder and HISTORY/<that date>/), never today's.

Airflow Variables: beam_images_project (required), beam_images_region (default us-central1).
"""

import json
import pathlib
from datetime import datetime, timedelta

from airflow import DAG
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.timetables.trigger import CronTriggerTimetable

LAUNCH_FILE = pathlib.Path(__file__).with_name("nightly_refresh_launch.json")
SCHEDULE = "0 2 * * *"  # 02:00 UTC, after the day's ingest runs
DATED_PARAMETERS = ("output",)
NIGHT_PARAMETER = {"refresh": "night"}  # jobs told which night they are for: the run's logical date


def job_of(launch):
    """The job a launch request starts: its template file's name (gs://.../templates/refresh.json)."""
    return launch.get("containerSpecGcsPath", "").rstrip("/").rsplit("/", 1)[-1].removesuffix(".json")


def nightly_body(body):
    """`body` with a job name, an output folder and (refresh) a night of the run's own, all from the
    run's logical date {{ ds }} (Airflow renders the {{ }})."""
    launch = dict(body["launchParameter"])
    launch["jobName"] = launch["jobName"] + "-{{ ds_nodash }}"
    launch["parameters"] = {
        name: value.rstrip("/") + "/{{ ds }}" if name in DATED_PARAMETERS else value
        for name, value in launch["parameters"].items()
    }
    night = NIGHT_PARAMETER.get(job_of(launch))
    if night:
        launch["parameters"][night] = "{{ ds }}"
    return {"launchParameter": launch}


with DAG(
    dag_id="beam_images_nightly_refresh",
    # why a trigger timetable: with a cron string, Airflow 2 gives a run its data interval's start as
    # {{ ds }}, the day before it runs: the 02:00 run judged yesterday's night, which a --night before
    # that day's ingest refuses (exit 2); this makes {{ ds }} the run's own UTC date on Airflow 2.4+ and 3
    schedule=CronTriggerTimetable(SCHEDULE, timezone="UTC"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=15)},
    tags=["beam-image-datasets", "dataflow"],
) as dag:
    DataflowStartFlexTemplateOperator(
        task_id="launch_refresh",
        project_id="{{ var.value.beam_images_project }}",
        location="{{ var.value.get('beam_images_region', 'us-central1') }}",
        body=nightly_body(json.loads(LAUNCH_FILE.read_text())),
        # Follow the job so that a failed night fails the task (and alerts); deferrable frees the
        # worker slot while the job runs, where the environment runs a triggerer.
        wait_until_finished=True,
        deferrable=True,
    )

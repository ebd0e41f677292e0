#!/usr/bin/env bash
# Launch JOB every night from its Flex Template, with the launch request rendered and checked here.
#   Cloud Scheduler (default): an HTTP job POSTs the request to the Flex Template launch API as
#     SCHEDULER_SA (which may launch jobs that run as WORKER_SA). The body is fixed: every night
#     gets the same parameters; put {night} in refresh's output (output=gs://B/refresh/{night})
#     to give each night its own folder.
#   Airflow (COMPOSER_ENVIRONMENT=name): uploads deploy/airflow/nightly_refresh_dag.py and the
#     request to the environment's DAGs folder; each run then writes under <output>/<date>/.
#     SCHEDULE="0 2 * * *" bash deploy/schedule.sh refresh snapshot=gs://B/out output=gs://B/refresh
# shellcheck source=deploy/env.sh
. "$(dirname "$0")/env.sh"
job=${1:?usage: schedule.sh JOB [NAME=VALUE ...]}
shift
schedule="${SCHEDULE:-0 2 * * *}"
mkdir -p "$BUILD_DIR"
body_file="$BUILD_DIR/$job-schedule.json"
JOB_NAME="${JOB_NAME:-$job-nightly}" launch_body "$job" "$@" > "$body_file"

if [[ -n "${COMPOSER_ENVIRONMENT:-}" ]]; then
  where=(--project "$PROJECT" --location "${COMPOSER_LOCATION:-$REGION}")
  cp "$body_file" "$BUILD_DIR/nightly_refresh_launch.json"
  for source in "$DEPLOY_DIR/airflow/nightly_refresh_dag.py" "$BUILD_DIR/nightly_refresh_launch.json"; do
    gcloud composer environments storage dags import --environment "$COMPOSER_ENVIRONMENT" "${where[@]}" \
      --source "$source"
  done
  gcloud composer environments run "$COMPOSER_ENVIRONMENT" "${where[@]}" variables set -- beam_images_project "$PROJECT"
  gcloud composer environments run "$COMPOSER_ENVIRONMENT" "${where[@]}" variables set -- beam_images_region "$REGION"
  echo "Airflow DAG beam_images_nightly_refresh in $COMPOSER_ENVIRONMENT, body $body_file"
  exit 0
fi

name="beam-images-nightly-$job"
if gcloud scheduler jobs describe "$name" --project "$PROJECT" --location "$REGION" >/dev/null 2>&1; then
  gcloud scheduler jobs delete "$name" --project "$PROJECT" --location "$REGION" --quiet
fi
gcloud scheduler jobs create http "$name" --project "$PROJECT" --location "$REGION" \
  --schedule "$schedule" --time-zone "${TIME_ZONE:-Etc/UTC}" \
  --uri "$DATAFLOW_API/flexTemplates:launch" --http-method POST \
  --headers Content-Type=application/json --message-body-from-file "$body_file" \
  --oauth-service-account-email "$SCHEDULER_SA" \
  --oauth-token-scope https://www.googleapis.com/auth/cloud-platform \
  --attempt-deadline 180s --max-retry-attempts 3 --min-backoff 5m
echo "Cloud Scheduler job $name: $schedule ${TIME_ZONE:-Etc/UTC}, body $body_file"

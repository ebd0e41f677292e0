#!/usr/bin/env bash
# Nightly launch with Cloud Scheduler: an HTTP job that POSTs the launch request to the Flex
# Template launch API as SCHEDULER_SA (which may launch jobs that run as WORKER_SA).
#     SCHEDULE="0 2 * * *" bash deploy/schedule.sh refresh snapshot=gs://B/out output=gs://B/refresh
# The body is fixed: every night gets the same parameters (and so the same output folder).
# shellcheck source=deploy/env.sh
. "$(dirname "$0")/env.sh"
job=${1:?usage: schedule.sh JOB [NAME=VALUE ...]}
shift
name="beam-images-nightly-$job"
mkdir -p "$DEPLOY_DIR/build"
body_file="$DEPLOY_DIR/build/$job-schedule.json"
JOB_NAME="${JOB_NAME:-$job-nightly}" launch_body "$job" "$@" > "$body_file"

if gcloud scheduler jobs describe "$name" --project "$PROJECT" --location "$REGION" >/dev/null 2>&1; then
  gcloud scheduler jobs delete "$name" --project "$PROJECT" --location "$REGION" --quiet
fi
gcloud scheduler jobs create http "$name" --project "$PROJECT" --location "$REGION" \
  --schedule "${SCHEDULE:-0 2 * * *}" --time-zone "${TIME_ZONE:-Etc/UTC}" \
  --uri "$DATAFLOW_API/flexTemplates:launch" --http-method POST \
  --headers Content-Type=application/json --message-body-from-file "$body_file" \
  --oauth-service-account-email "$SCHEDULER_SA" \
  --oauth-token-scope https://www.googleapis.com/auth/cloud-platform \
  --attempt-deadline 180s --max-retry-attempts 3 --min-backoff 5m
echo "$name: ${SCHEDULE:-0 2 * * *} ${TIME_ZONE:-Etc/UTC}, body $body_file"

#!/usr/bin/env bash
# Launch a job from its Flex Template now: the same request Cloud Scheduler sends nightly.
#     bash deploy/launch.sh ingest manifest=cc3m=gs://B/cc3m.tsv output=gs://B/out [NAME=VALUE ...]
# Parameters are the template's (deploy/templates/<job>-metadata.json); repeatable ones take a
# comma-separated list. JOB_NAME overrides the Dataflow job name.
# shellcheck source=deploy/env.sh
. "$(dirname "$0")/env.sh"
job=${1:?usage: launch.sh JOB [NAME=VALUE ...]}
shift
body="$(launch_body "$job" "$@")"
curl --silent --show-error --fail-with-body -X POST "$DATAFLOW_API/flexTemplates:launch" \
  -H "Authorization: Bearer $(gcloud auth print-access-token)" -H "Content-Type: application/json" \
  --data "$body"
echo
echo "jobs: https://console.cloud.google.com/dataflow/jobs?project=$PROJECT"

#!/usr/bin/env bash
# One-time set-up of a project for the Dataflow jobs (idempotent): APIs, bucket, image repository,
# worker and scheduler service accounts with the roles they need. docs/dataflow.md explains each.
#     PROJECT=my-project bash deploy/bootstrap.sh
# shellcheck source=deploy/env.sh
. "$(dirname "$0")/env.sh"

gcloud services enable --project "$PROJECT" \
  dataflow.googleapis.com compute.googleapis.com storage.googleapis.com \
  artifactregistry.googleapis.com cloudbuild.googleapis.com cloudscheduler.googleapis.com

# Soft delete off: it would keep every staging and temp file of every job, billed, for a week.
gcloud storage buckets describe "gs://$BUCKET" --project "$PROJECT" >/dev/null 2>&1 ||
  gcloud storage buckets create "gs://$BUCKET" --project "$PROJECT" --location "$REGION" \
    --uniform-bucket-level-access --soft-delete-duration=0

gcloud artifacts repositories describe "$REPOSITORY" --project "$PROJECT" --location "$REGION" >/dev/null 2>&1 ||
  gcloud artifacts repositories create "$REPOSITORY" --project "$PROJECT" --location "$REGION" \
    --repository-format=docker --description="beam-image-datasets worker and launcher images"

for account in "$WORKER_SA" "$SCHEDULER_SA"; do
  gcloud iam service-accounts describe "$account" --project "$PROJECT" >/dev/null 2>&1 ||
    gcloud iam service-accounts create "${account%%@*}" --project "$PROJECT" \
      --display-name "beam-image-datasets ${account%%@*}"
done

# Workers (and the Flex Template launcher VM, which runs as the same account): run work items,
# read and write the bucket, pull the image.
gcloud projects add-iam-policy-binding "$PROJECT" --condition=None --quiet \
  --member "serviceAccount:$WORKER_SA" --role roles/dataflow.worker >/dev/null
gcloud storage buckets add-iam-policy-binding "gs://$BUCKET" \
  --member "serviceAccount:$WORKER_SA" --role roles/storage.objectAdmin >/dev/null
gcloud artifacts repositories add-iam-policy-binding "$REPOSITORY" --project "$PROJECT" --location "$REGION" \
  --member "serviceAccount:$WORKER_SA" --role roles/artifactregistry.reader >/dev/null

# Cloud Scheduler's account: launch jobs that run as the worker account.
gcloud projects add-iam-policy-binding "$PROJECT" --condition=None --quiet \
  --member "serviceAccount:$SCHEDULER_SA" --role roles/dataflow.developer >/dev/null
gcloud iam service-accounts add-iam-policy-binding "$WORKER_SA" --project "$PROJECT" \
  --member "serviceAccount:$SCHEDULER_SA" --role roles/iam.serviceAccountUser >/dev/null

echo "project $PROJECT ready: bucket gs://$BUCKET, images ${REGION}-docker.pkg.dev/$PROJECT/$REPOSITORY," \
     "workers run as $WORKER_SA"

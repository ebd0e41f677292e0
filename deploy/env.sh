# Names shared by the deploy scripts; sourced, not run. Export any of them first to override, e.g.
#     PROJECT=my-project BUCKET=my-bucket TAG=v1 bash deploy/build_image.sh
# Worker defaults come from deploy/dataflow.env (an exported variable of the same name wins).
set -euo pipefail
DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(dirname "$DEPLOY_DIR")"

while IFS='=' read -r key value; do
  [[ "$key" =~ ^[A-Z][A-Z0-9_]*$ ]] || continue
  [[ -n "${!key:-}" ]] || export "$key=$value"
done < "$DEPLOY_DIR/dataflow.env"

: "${PROJECT:=$(gcloud config get-value project 2>/dev/null || true)}"
if [[ -z "$PROJECT" ]]; then
  echo "deploy: set PROJECT (or run: gcloud config set project PROJECT_ID)" >&2
  exit 2
fi
: "${REGION:=$DATAFLOW_REGION}"
: "${BUCKET:=${PROJECT}-beam-images}"          # staging, temp, templates; outputs may live elsewhere
: "${REPOSITORY:=beam-images}"                 # Artifact Registry (Docker) repository
: "${TAG:=$(git -C "$ROOT_DIR" describe --always --dirty 2>/dev/null || date -u +%Y%m%d-%H%M%S)}"
: "${WORKER_SA:=beam-images-worker@${PROJECT}.iam.gserviceaccount.com}"
: "${SCHEDULER_SA:=beam-images-scheduler@${PROJECT}.iam.gserviceaccount.com}"
: "${PY:=$ROOT_DIR/.venv/bin/python}"
: "${BUILD_DIR:=$DEPLOY_DIR/build}"            # rendered specs and request bodies
# shellcheck disable=SC2034  # used by the scripts that source this file
DATAFLOW_API="https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}"

image_for() { echo "${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/$1:${TAG}"; }
template_for() { echo "gs://${BUCKET}/templates/$1.json"; }
deploy_py() { (cd "$ROOT_DIR" && "$PY" -m deploy "$@"); }
all_jobs() { deploy_py jobs; }

# The worker image a template was built with (its spec file names it), so that a launch runs
# workers of the same build as its launcher.
template_image() {
  gcloud storage cat "$(template_for "$1")" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["image"])'
}

# A launch body for job $1 (NAME=VALUE parameters follow), checked against the template metadata.
launch_body() {
  local job=$1; shift
  local args=()
  for assignment in "$@"; do args+=(--param "$assignment"); done
  deploy_py launch-body "$job" --template "$(template_for "$job")" --image "$(template_image "$job")" \
    --bucket "$BUCKET" --service-account "$WORKER_SA" --job-name "${JOB_NAME:-$job-$(date -u +%Y%m%d-%H%M%S)}" \
    "${args[@]}"
}

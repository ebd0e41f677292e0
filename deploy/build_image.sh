#!/usr/bin/env bash
# Build and push the image of each job (default: every job) as REGION-docker.pkg.dev/PROJECT/
# REPOSITORY/<job>:TAG. With a local Docker engine it builds here; otherwise (or with
# CLOUD_BUILD=1) Cloud Build builds it from the same Dockerfile.
#     bash deploy/build_image.sh [JOB ...]
# shellcheck source=deploy/env.sh
. "$(dirname "$0")/env.sh"
jobs=("$@")
[[ ${#jobs[@]} -gt 0 ]] || mapfile -t jobs < <(all_jobs)

if [[ "${CLOUD_BUILD:-0}" != 1 ]] && docker info >/dev/null 2>&1; then
  gcloud auth configure-docker "${REGION}-docker.pkg.dev" --quiet
  for job in "${jobs[@]}"; do
    docker build --build-arg "JOB=$job" --tag "$(image_for "$job")" "$ROOT_DIR"
    docker push "$(image_for "$job")"
  done
else
  config="$(mktemp --suffix=.yaml)"
  trap 'rm -f "$config"' EXIT
  {
    echo "steps:"
    for job in "${jobs[@]}"; do
      echo "- name: gcr.io/cloud-builders/docker"
      echo "  args: [build, --build-arg, JOB=$job, --tag, '$(image_for "$job")', .]"
    done
    echo "images:"
    for job in "${jobs[@]}"; do echo "- '$(image_for "$job")'"; done
  } > "$config"
  gcloud builds submit "$ROOT_DIR" --project "$PROJECT" --region "$REGION" --config "$config"
fi
for job in "${jobs[@]}"; do image_for "$job"; done

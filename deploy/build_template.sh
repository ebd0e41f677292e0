#!/usr/bin/env bash
# Write each job's Flex Template spec (image + parameter metadata) to gs://BUCKET/templates/<job>.json.
# The spec is what `gcloud dataflow flex-template build --image IMAGE --sdk-language PYTHON
# --metadata-file deploy/templates/<job>-metadata.json` writes; it is rendered here so that a test
# can check it (tests/test_flex_metadata.py).
#     bash deploy/build_template.sh [JOB ...]
# shellcheck source=deploy/env.sh
. "$(dirname "$0")/env.sh"
jobs=("$@")
[[ ${#jobs[@]} -gt 0 ]] || mapfile -t jobs < <(all_jobs)
mkdir -p "$BUILD_DIR"
for job in "${jobs[@]}"; do
  spec="$BUILD_DIR/$job-template.json"
  deploy_py template-spec "$job" --image "$(image_for "$job")" > "$spec"
  gcloud storage cp "$spec" "$(template_for "$job")"
  echo "$(template_for "$job") -> $(image_for "$job")"
done

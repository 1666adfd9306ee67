#!/usr/bin/env bash
# Runs `default`, `asl-frozen-grm` and `search-r1` for the same number of rounds on the default
# model and prints held-out EM, GRM accuracy and wall time per round side by side.
#   scripts/compare.sh [ROUNDS]        (default 2; runs go under runs/compare/)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-2}"
scripts/fetch-assets.sh
cargo build --release --locked --quiet
asl="$root/target/release/asl"
export ASL_ASSETS="$root/assets"
dirs=()
for p in default asl-frozen-grm search-r1; do
  echo "== $p: $rounds rounds"
  # The pipelines share their setup (corpus, index, checkpoint, warm-up) and, where their
  # params agree, whole stages: a copy of the default's run lets the runner skip what is
  # identical (same params, seed and input hashes) and rerun the rest.
  if [[ "$p" != default && ! -d "runs/compare/$p" ]]; then
    cp -r runs/compare/default "runs/compare/$p"
  fi
  "$asl" run "pipelines/$p.toml" --run-dir "runs/compare/$p" --rounds "$rounds"
  dirs+=(--run-dir "runs/compare/$p")
done
"$asl" report "${dirs[@]}"

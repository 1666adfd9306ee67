#!/usr/bin/env bash
# A long run on one disk (issue 16): the `smoke` pipeline (tiny model) for ROUNDS rounds with
# checkpoint retention (the last 2 rounds' checkpoints plus every 50th) and eval every 10th
# round. Prints the run dir's disk footprint, its growth per round, and how long `asl run`
# takes to find everything up to date on a second pass (hashes come from the hash cache).
# Resumable: rerun it and `asl run` continues where it stopped.
# Usage: scripts/bench-long-run.sh [ROUNDS] [RUN_DIR]    (default 200, runs/long-run)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds="${1:-200}"
run_dir="${2:-runs/long-run}"
scripts/fetch-assets.sh >/dev/null
export ASL_ASSETS="${ASL_ASSETS:-$root/assets}"
cargo build --release --locked --quiet --bin asl
asl="$root/target/release/asl"
sets=(--set apply.keep_checkpoints=2 --set apply.keep_every=50 --set eval.every=10)

start=$(date +%s)
"$asl" run pipelines/smoke.toml --run-dir "$run_dir" --rounds "$rounds" "${sets[@]}" \
  > "$run_dir.log" 2>&1 || { tail -5 "$run_dir.log"; exit 1; }
echo "long-run: $rounds rounds in $(( $(date +%s) - start )) s (0 when already done); log $run_dir.log"
echo "long-run: disk $(du -sh "$run_dir" | cut -f1) in all; per round:"
du -sk "$run_dir"/round-* | awk '{s+=$1; n++} END {printf "  mean %.0f KiB over %d round dirs\n", s/n, n}'
echo "long-run: checkpoints kept: $(ls -d "$run_dir"/round-*/apply/step-*/model 2>/dev/null | wc -l)"
t0=$(date +%s.%N)
"$asl" run pipelines/smoke.toml --run-dir "$run_dir" --rounds "$rounds" "${sets[@]}" > "$run_dir.rerun.log" 2>&1
t1=$(date +%s.%N)
echo "long-run: second pass ran $(grep -c ': running$' "$run_dir.rerun.log" || true) stages in $(echo "$t1 - $t0" | bc) s"

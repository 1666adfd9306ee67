#!/usr/bin/env bash
# The learning benchmark (issue 16): does RL on the shipped model and corpus learn, and does
# ASL's trained judge resist the reward hacking a frozen judge invites? Three arms with the same
# seed, warm-up and per-round budget:
#   search-r1       rule exact-match reward on the labelled train split (policy only)
#   default         ASL: generator, policy and GRM, no labels
#   asl-frozen-grm  ASL with the GRM never trained
# Each arm is its pipeline file plus `eval` in setup (the warm-up checkpoint scored as round 0),
# so the start and the end checkpoint are scored on the same QUESTIONS held-out test questions
# and compared pair by pair (`asl eval compare --rounds 0 ROUNDS`); the GRM is scored on
# VERIFICATION dev pairs (gold answer / another question's answer, no reference) at both ends,
# and on NEAR_MISSES dev questions' gold answers and one-letter misspellings of them with the
# reference shown (the judge's leniency on misspelt copies; docs/rounds.md).
# Per round: T=1 training reward, parse rate, solve rate, GRM–rule agreement (asl audit). The
# script ends with one table (scripts/bench_learning_table.py) and the audit's PNG curves per arm.
#
# Resumable: rerun it and `asl run` skips what is done. Arms share their setup: an arm's run dir
# starts with the first arm's setup (round 0), so identical stages (same params, seed, inputs) are not
# recomputed. Checkpoint retention keeps the last 2 rounds' checkpoints.
# Held-out EM is scored on two datasets: QUESTIONS of the corpus-built test split (`qa:test`) and
# every human-written FanOutQA sub-question whose answer the corpus holds (`qa:fanoutqa`, 70 with
# the shipped corpus; `qa.extra = fanoutqa`). All arms train at LR (apply.lr; 5e-5, the warm-up's:
# at 1e-5 four steps a round move the model too little, docs/rounds.md). eval.every is fixed (the
# last round is always scored), so `--rounds` can be raised on a rerun without rescoring round 0.
# Usage: [ASL_BIN=path/to/asl] scripts/bench-learning.sh [--rounds N] [--questions Q] [--verification V] [--near-misses M] [--lr LR]
#          [--arms "search-r1 default asl-frozen-grm"] [--run-root DIR] [--set key=value ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds=30
lr=5e-5
questions=300
verification=200
near_misses=200
arms="search-r1 default asl-frozen-grm"
out="runs/bench-learning"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --questions) questions="$2"; shift 2 ;;
    --verification) verification="$2"; shift 2 ;;
    --near-misses) near_misses="$2"; shift 2 ;;
    --lr) lr="$2"; shift 2 ;;
    --arms) arms="$2"; shift 2 ;;
    --run-root) out="$2"; shift 2 ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    *) echo "bench-learning: unknown argument $1" >&2; exit 1 ;;
  esac
done

scripts/fetch-assets.sh >/dev/null
export ASL_ASSETS="${ASL_ASSETS:-$root/assets}"
# ASL_BIN: a prebuilt binary to run instead of building this checkout (a cluster node without
# a toolchain, or a benchmark that must not pick up the code being edited beside it).
bin="${ASL_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --locked --quiet --bin asl
  bin="$root/target/release/asl"
fi
mkdir -p "$out"
# A copy of the binary, so a rebuild while a long benchmark runs cannot change an arm midway.
cp "$bin" "$out/.asl.tmp" && mv "$out/.asl.tmp" "$out/asl"
asl="$out/asl"
venv="$root/target/pyreaders"
if ! "$venv/bin/python" -c "import pyarrow" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check pyarrow==26.0.1
fi
mkdir -p "$out"

# Binaries from before eval.near_misses existed refuse the key: --near-misses 0 leaves it out.
near=()
[ "$near_misses" = 0 ] || near=(--set eval.near_misses="$near_misses")
first=""
for arm in $arms; do
  parent="$root/pipelines/$arm.toml"
  # The setup list, from the file or the file it extends (python3's tomllib).
  setup=$(python3 - "$parent" <<'PY'
import os, sys, tomllib
path = sys.argv[1]
while True:
    t = tomllib.load(open(path, "rb"))
    if "setup" in t or "extends" not in t:
        print(t.get("setup"))
        break
    path = os.path.join(os.path.dirname(path), t["extends"])
PY
)
  if [ "$setup" != "['corpus', 'qa', 'index', 'init', 'warmup']" ]; then
    echo "bench-learning: $parent does not have the shared setup; cannot add the round-0 eval" >&2
    exit 1
  fi
  pipe="$out/$arm.toml"
  cat > "$pipe" <<TOML
# Written by scripts/bench-learning.sh: $arm, with the warm-up checkpoint scored in round 0.
extends = "$parent"
name = "bench-$arm"
setup = ["corpus", "qa", "index", "init", "warmup", "eval"]
TOML
  dir="$out/$arm"
  # An arm run alone shares the setup of an arm already in the run root (the first with a
  # finished round-0 eval), so a rerun with --arms X does not redo the warm-up and round-0 eval.
  if [ -z "$first" ]; then
    for other in search-r1 default asl-frozen-grm asl-real-inject asl-rule-grm; do
      if [ "$other" != "$arm" ] && [ -f "$out/$other/manifest.json" ] && [ -d "$out/$other/round-000/eval" ]; then
        first="$other"
        break
      fi
    done
  fi
  if [ -n "$first" ] && [ ! -d "$dir" ]; then
    # The first arm's setup (round 0) only (scripts/copy-setup.sh).
    scripts/copy-setup.sh "$out/$first" "$dir"
  fi
  echo "== $arm: $rounds rounds (log $dir.log)"
  start=$(date +%s)
  "$asl" run "$pipe" --run-dir "$dir" --rounds "$rounds" \
    --set qa.extra=fanoutqa --set eval.split=test,fanoutqa \
    --set eval.questions="$questions" --set eval.every=100000 \
    --set eval.grm_questions="$questions" --set eval.verification="$verification" ${near[@]+"${near[@]}"} \
    --set apply.lr="$lr" --set apply.keep_checkpoints=2 \
    ${extra[@]+"${extra[@]}"} >> "$dir.log" 2>&1 || { tail -3 "$dir.log"; exit 1; }
  echo "$arm: asl run took $(( $(date +%s) - start )) s this time" | tee -a "$out/times.txt"
  "$venv/bin/python" scripts/learning_curve.py "$dir" > "$dir.curve.txt"
  # The last scored round: ROUNDS, or earlier when the run stopped on idle rounds (stall_rounds).
  end=$(ls -d "$dir"/round-*/eval | sort | tail -1 | sed 's|.*/round-\([0-9]*\)/eval|\1|')
  end=$((10#$end))
  [ "$end" = "$rounds" ] || echo "$arm: stopped after round $end of $rounds (see $dir.log)" | tee -a "$out/times.txt"
  "$asl" eval compare --run-dir "$dir" --rounds 0 "$end" > "$dir.compare.txt"
  "$asl" eval compare --run-dir "$dir" --rounds 0 "$end" --json > "$dir.compare.json"
  "$asl" audit --run-dir "$dir" --out "$dir-audit" > "$dir.audit.txt" 2>&1 || true
  "$asl" audit --run-dir "$dir" --json > "$dir.audit.json" 2>/dev/null || true
  first="${first:-$arm}"
done
"$venv/bin/python" scripts/bench_learning_table.py "$out" $arms

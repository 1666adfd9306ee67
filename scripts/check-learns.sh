#!/usr/bin/env bash
# Plumbing check that RL training moves the model the way the reward says (issue 15): the
# shipped SmolLM2-135M, the Search-R1 pipeline (rule exact-match reward on labelled questions,
# policy only), the same 16 train questions every round (generate.resample=false), 8 attempts
# each at T=1, `train.steps_per_round` optimizer steps per round, 10 rounds. It ends with the
# mean T=1 training reward per round on those questions and the paired change from the first
# round to the last with its standard error over the 16 questions.
#
# Resumable: rerun it and `asl run` skips every stage already done. Wall time on the 2-core
# machine: see docs/rounds.md (about 10 minutes a round).
# Usage: scripts/check-learns.sh [--rounds N] [--run-dir DIR] [--set key=value ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
rounds=10
run_dir="runs/check-learns"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --set) extra+=(--set "$2"); shift 2 ;;
    *) echo "check-learns: unknown argument $1" >&2; exit 1 ;;
  esac
done

scripts/fetch-assets.sh >/dev/null
export ASL_ASSETS="${ASL_ASSETS:-$root/assets}"
cargo build --release --locked --quiet --bin asl
venv="$root/target/pyreaders"
if ! "$venv/bin/python" -c "import pyarrow" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check pyarrow==26.0.1
fi

start=$(date +%s)
# lr 5e-5 (the warm-up's): at search-r1's 1e-5 four steps a round moved the model too little
# to show in 10 rounds (docs/rounds.md, "Does it learn?"). Eval scores 16 held-out questions in
# rounds 5 and 10 only; the GRM and generator figures mean nothing for a policy-only run.
target/release/asl run pipelines/search-r1.toml --run-dir "$run_dir" --rounds "$rounds" \
  --set generate.tasks=16 --set generate.resample=false \
  --set apply.lr=5e-5 --set rollout.batch_size=16 \
  --set eval.questions=16 --set eval.every=5 --set eval.grm_questions=0 \
  --set eval.generator_prompts=0 \
  ${extra[@]+"${extra[@]}"}
echo "check-learns: asl run took $(( $(date +%s) - start )) s (0 when everything was done)"
"$venv/bin/python" scripts/learning_curve.py "$run_dir"
# Held-out EM of the checkpoints of rounds 5 and 10, paired by question (16 questions: a wide
# interval; this check's claim is the training reward above).
if [ "$rounds" -ge 10 ]; then
  target/release/asl eval compare --run-dir "$run_dir" --rounds 5 "$rounds"
fi

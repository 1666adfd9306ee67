#!/usr/bin/env bash
# The GRM's verdict from its log-probs, not sampled (scripts/judge_logits.py): does a checkpoint's
# judge tell right held-out predictions from wrong ones when its thought is not sampled? Needs an
# eval that scored the GRM on test predictions (eval.grm_questions > 0).
# Usage: scripts/judge-logits.sh MODEL_DIR EVAL_DIR [DEMOS]   (DEMOS: the warm-up's grm_demos)
#   e.g. scripts/judge-logits.sh runs/bl8/search-r1/round-000/warmup/model runs/bl8/search-r1/round-000/eval
# Runs in the venv of scripts/bench-model.sh (target/bench-torch), made here when missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -eq 2 ] || [ $# -eq 3 ] || { echo "usage: scripts/judge-logits.sh MODEL_DIR EVAL_DIR [DEMOS]" >&2; exit 2; }
venv="$root/target/bench-torch"
if ! "$venv/bin/python" -c "import torch, transformers, pyarrow" 2>/dev/null; then
  echo "judge-logits: installing torch, transformers and pyarrow into $venv (large download)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check torch transformers pyarrow==26.0.1
fi
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$venv/bin/python" "$root/scripts/judge_logits.py" "$@"

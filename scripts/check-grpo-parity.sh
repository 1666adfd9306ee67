#!/usr/bin/env bash
# GRPO loss parity (issue #15 item 8): asl's policy-gradient loss and the gradient of every
# parameter, against a PyTorch implementation of TRL's GRPOTrainer._compute_loss, on a tiny
# random llama and a fixed batch, for each loss_type:
#   asl grpo       = TRL grpo
#   asl token_mean = TRL dapo and TRL bnpo (one process, no gradient accumulation)
#   asl dr_grpo    = TRL dr_grpo (same max_completion_length)
# with clip eps_low != eps_high, beta > 0 against a reference model (TRL's k3; asl clamps it as
# verl does, which is inactive on this batch), temperatures != 1, old log-probs that differ from
# the current ones so tokens clip on both sides, loss-mask zeros inside completions (tool text),
# padding, asl's micro-batches (gradients summed as `train` does), TRL's truncated
# importance-sampling correction and the entropy bonus.
#
# Steps: build `asl` and examples/grpo_parity (release); write a WordLevel tokenizer of 512 tokens
# and two tiny models with `asl model init-tiny` (policy seed 1, reference seed 2); the Python
# side writes the seeded batch and cases (spec.json); asl computes loss + gradients per case
# through its own functions; the Python side computes TRL's loss in float64 (and float32 for the
# noise floor), prints the table and exits 1 when a checked row is above tolerance.
# The Python side runs in the venv of scripts/bench-model.sh (target/bench-torch: torch +
# transformers from PyPI, made here when missing; PyPI has no CPU-only torch wheel for Linux, so
# this is the default wheel, a large download).
#
# Usage: scripts/check-grpo-parity.sh [--rtol 1e-4] [--seed 0]
# ASL_PARITY_DIR keeps the models, the spec and asl's outputs (default: a temp dir, removed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

rtol=1e-4
seed=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rtol) rtol="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    *) echo "usage: scripts/check-grpo-parity.sh [--rtol 1e-4] [--seed 0]" >&2; exit 2 ;;
  esac
done

echo "grpo-parity: building asl and examples/grpo_parity (release)" >&2
cargo build --release --locked --quiet --bin asl --example grpo_parity
asl="$root/target/release/asl"
parity="$root/target/release/examples/grpo_parity"

venv="$root/target/bench-torch"
if ! "$venv/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
  echo "grpo-parity: installing torch + transformers into $venv (large download)" >&2
  if ! { python3 -m venv "$venv" &&
         "$venv/bin/pip" install --quiet --disable-pip-version-check torch transformers; } >&2; then
    echo "grpo-parity: could NOT install torch + transformers from PyPI into $venv" >&2
    exit 1
  fi
fi
py="$venv/bin/python"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

if [ -n "${ASL_PARITY_DIR:-}" ]; then
  work="$ASL_PARITY_DIR"
  mkdir -p "$work"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
"$py" scripts/grpo_parity_torch.py tokenizer "$work/tokenizer.json" --vocab 512
rm -rf "$work/policy" "$work/reference" "$work/asl"
"$asl" model init-tiny "$work/policy" --seed 1 --tokenizer "$work/tokenizer.json" >&2
"$asl" model init-tiny "$work/reference" --seed 2 --tokenizer "$work/tokenizer.json" >&2

echo "grpo-parity: the fixed batch (seed $seed)" >&2
"$py" scripts/grpo_parity_torch.py prepare --policy "$work/policy" \
  --reference "$work/reference" --out "$work/spec.json" --seed "$seed"
echo "grpo-parity: asl's loss and gradients" >&2
"$parity" "$work/spec.json" "$work/asl"
echo "grpo-parity: TRL's formula in PyTorch, and the comparison" >&2
"$py" scripts/grpo_parity_torch.py compare --spec "$work/spec.json" --asl "$work/asl" \
  --rtol "$rtol" --threads "$(nproc)"

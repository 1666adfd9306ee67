#!/usr/bin/env bash
# Remakes tests/fixtures/parity (scripts/make-parity-fixtures.py) in a venv outside the repo with
# torch, transformers and tokenizers from PyPI (a few GB; only needed to change the fixtures).
# Usage: scripts/make-parity-fixtures.sh [FAMILY ...]   (VENV=/path to reuse one)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/../parity-venv}"
if ! "$venv/bin/python" -c "import torch, transformers, tokenizers, safetensors" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check torch transformers safetensors
fi
"$venv/bin/python" "$root/scripts/make-parity-fixtures.py" "$@"

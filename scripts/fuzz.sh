#!/usr/bin/env bash
# Fuzzes every reader and parser for a set time (issue 20). The suite runs each fuzz target for
# a small fixed budget; this runs each target again and again with ASL_FUZZ_CASES cases a run
# and a fresh random seed each run (proptest's default) until its time is up, and ends with a
# table of runs, cases and failures per target. A failure prints proptest's shrunk input and
# makes the script exit 1.
#
# Targets (the test each runs):
#   parsers             the policy, generator and GRM output parsers (src/roles/mod.rs)
#   guide               the tag guide under a hostile model (src/model/guide.rs)
#   pipeline            pipeline TOML files and --set values (tests/integration/fuzz.rs)
#   manifest            manifest.json
#   corpus-qa           corpus and QA files: JSONL, JSON and Parquet
#   shards              every shard kind on mutated Parquet bytes, read as rows and by polars
#   gguf                GGUF headers, the config and tokenizer rebuilt from them, the import
#   safetensors-config  safetensors headers and config.json, then a model load
#
# Usage: scripts/fuzz.sh [--minutes M] [--cases N] [--targets "pipeline shards ..."] [--release]
# (--release runs the tests in the release profile: more cases a minute, and no second build
# where a release test build is already there.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
minutes=10
cases=500
targets="parsers guide pipeline manifest corpus-qa shards gguf safetensors-config"
profile=()
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --cases) cases="$2"; shift 2 ;;
    --targets) targets="$2"; shift 2 ;;
    --release) profile=(--release); shift ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done

scripts/fetch-assets.sh >/dev/null
export ASL_ASSETS="${ASL_ASSETS:-$root/assets}"
export ASL_REQUIRE_ASSETS=1
cargo test --locked ${profile[@]+"${profile[@]}"} --no-run --quiet 2>/dev/null \
  || cargo test --locked ${profile[@]+"${profile[@]}"} --no-run

# target -> cargo test arguments
args_of() {
  case "$1" in
    parsers) echo "--lib roles::proptests" ;;
    guide) echo "--lib model::guide::fuzz" ;;
    pipeline) echo "--test integration fuzz::fuzz_pipeline_files_and_set_values" ;;
    manifest) echo "--test integration fuzz::fuzz_manifest" ;;
    corpus-qa) echo "--test integration fuzz::fuzz_corpus_and_qa_files" ;;
    shards) echo "--test integration fuzz::fuzz_shards_on_mutated_parquet" ;;
    gguf) echo "--test integration fuzz::fuzz_gguf_reader" ;;
    safetensors-config) echo "--test integration fuzz::fuzz_safetensors_headers_and_config" ;;
    *) echo "fuzz.sh: unknown target $1" >&2; exit 1 ;;
  esac
}

log_dir="$root/target/fuzz-logs"
mkdir -p "$log_dir"
table="| target | runs | cases | seconds | failures |\n|---|---|---|---|---|"
failed=0
for t in $targets; do
  read -r -a a <<< "$(args_of "$t")"
  start=$(date +%s)
  runs=0; total=0; failures=0
  while [ $(( $(date +%s) - start )) -lt $(( minutes * 60 )) ]; do
    log="$log_dir/$t-$runs.log"
    if ASL_FUZZ_CASES="$cases" cargo test --locked --quiet ${profile[@]+"${profile[@]}"} "${a[@]}" \
      -- --nocapture > "$log" 2>&1; then
      passed=$(grep -o '[0-9]* passed' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
      total=$(( total + passed * cases ))
      rm -f "$log"
    else
      failures=$(( failures + 1 ))
      echo "fuzz.sh: $t failed; its output is in $log:" >&2
      grep -E "panicked|minimal failing input|Test failed|fuzz target" "$log" | head -20 >&2 || true
    fi
    runs=$(( runs + 1 ))
  done
  secs=$(( $(date +%s) - start ))
  echo "fuzz $t: $runs runs, $total cases, ${secs} s, $failures failures"
  table="$table\n| $t | $runs | $total | $secs | $failures |"
  [ "$failures" -eq 0 ] || failed=1
done
printf "%b\n" "$table"
exit "$failed"

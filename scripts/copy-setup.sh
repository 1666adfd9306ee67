#!/usr/bin/env bash
# Starts run dir DST from the setup (round 0) of run dir SRC: round-000 hard-linked (stages
# replace files by rename, so the two runs never write into each other's files) and SRC's
# manifest with only its round-0 entries, so `asl run` on DST skips the setup and runs the
# rounds afresh. Used by the benchmarks that compare several runs from one setup.
# Usage: scripts/copy-setup.sh SRC DST
set -euo pipefail
src="$1"
dst="$2"
mkdir -p "$dst"
cp -al "$src/round-000" "$dst/round-000"
python3 - "$src/manifest.json" "$dst/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["entries"] = [e for e in m["entries"] if e["round"] == 0]
m["pruned"] = [p for p in m.get("pruned", []) if p["round"] == 0]
json.dump(m, open(sys.argv[2], "w"), indent=1)
PY

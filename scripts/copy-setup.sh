#!/usr/bin/env bash
# Starts run dir DST from the setup (round 0) of run dir SRC: round-000 hard-linked (stages
# replace files by rename, so the two runs never write into each other's files) and SRC's
# manifest with only its round-0 entries, so `asl run` on DST skips the setup and runs the
# rounds afresh. Used by the benchmarks that compare several runs from one setup.
# DST is built under a temporary name and renamed into place when complete, so an interrupted
# copy leaves no DST that looks finished (rerun it); an existing DST is refused.
# Usage: scripts/copy-setup.sh SRC DST
set -euo pipefail
src="$1"
dst="${2%/}"
[ -e "$dst" ] && { echo "copy-setup: $dst exists; remove it or choose another name" >&2; exit 1; }
[ -d "$src/round-000" ] && [ -f "$src/manifest.json" ] \
  || { echo "copy-setup: $src has no round-000 or manifest.json" >&2; exit 1; }
tmp="$(dirname "$dst")/.$(basename "$dst").asl-tmp-$$"
rm -rf "$tmp"
mkdir -p "$tmp"
cp -al "$src/round-000" "$tmp/round-000"
python3 - "$src/manifest.json" "$tmp/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m["entries"] = [e for e in m["entries"] if e["round"] == 0]
m["pruned"] = [p for p in m.get("pruned", []) if p["round"] == 0]
with open(sys.argv[2], "w") as f:
    json.dump(m, f, indent=1)
PY
mv -T "$tmp" "$dst"

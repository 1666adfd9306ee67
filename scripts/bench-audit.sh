#!/usr/bin/env bash
# `asl audit` at growing synthetic run sizes: wall time and peak memory. Memory must not grow
# with the row count (lazy polars scans on the streaming engine, only the needed columns).
# Usage: scripts/bench-audit.sh [TRAJECTORIES ...]   (default: 10000 100000 1000000)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# ASL_BENCH_PROFILE=dev uses the test build (its dependencies are optimised too).
profile="${ASL_BENCH_PROFILE:-release}"
cargo build --profile "$profile" --locked --quiet --bin asl --example synth_run
dir="$root/target/$([ "$profile" = dev ] && echo debug || echo "$profile")"
asl="$dir/asl"
synth="$dir/examples/synth_run"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
[ $# -eq 0 ] && set -- 10000 100000 1000000
printf '%-12s %12s %10s %10s %12s %14s\n' trajectories shards_MiB write_s audit_s peak_MiB audit_no_plots
for n in "$@"; do
  rd="$work/run-$n"
  start=$(date +%s.%N)
  written=$("$synth" "$rd" "$n")
  write_s=$(echo "$(date +%s.%N) - $start" | bc -l)
  mib=$(du -sm "$rd" | cut -f1)
  /usr/bin/time -f "%e %M" -o "$work/time" "$asl" audit --run-dir "$rd" >/dev/null
  read -r secs kib <"$work/time"
  /usr/bin/time -f "%e %M" -o "$work/time2" "$asl" audit --run-dir "$rd" --no-plots >/dev/null
  read -r secs2 kib2 <"$work/time2"
  printf '%-12s %12s %10.2f %10.2f %12.1f %8.2f s %6.1f MiB\n' "$written" "$mib" "$write_s" "$secs" \
    "$(echo "$kib/1024" | bc -l)" "$secs2" "$(echo "$kib2/1024" | bc -l)"
done

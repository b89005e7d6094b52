#!/usr/bin/env bash
# Runs each fuzz target for FUZZ_SECONDS (default 60) and prints executions per second.
# Not part of CI. Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-60}
for target in inventory archive quoting; do
  mkdir -p corpus/$target
  log=$(mktemp)
  cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1 || { tail -40 "$log"; exit 1; }
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  echo "$target: $runs executions in ${secs}s = $((runs / secs)) per second, no crash"
  rm -f "$log"
done

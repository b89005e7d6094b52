#!/usr/bin/env bash
# Startup benchmark: wall time of `runbook run` on a trivial script (the whole stdlib is
# embedded in the binary) and on a script that imports the stdlib, each the median of N
# runs, and `runbook check` of the shipped projects, next to `bash -c true` for scale; a
# run that fails stops the benchmark. Prints one line per case and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-30}
cargo build --release --locked -q
bin=$PWD/target/release/runbook
root=$PWD

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/scripts"
cat > "$work/runbook.toml" <<'TOML'
[app]
name = "bench"
deploy_path = "deploy"
[env.bench]
transport = "local"
hosts = { a = "localhost" }
TOML
echo 'let x = 1 + 1;' > "$work/scripts/trivial.rhai"
printf 'import "laravel" as laravel;\nimport "strategies/rolling" as rolling;\nlet x = 1;\n' > "$work/scripts/stdlib.rhai"

# median wall time in microseconds of "$@" over $runs runs
median_us() {
  local times=() i start end out
  for ((i = 0; i < runs; i++)); do
    start=$(date +%s%N)
    out=$("$@" 2>&1) || { printf 'startup.sh: `%s` failed:\n%s\n' "$*" "$out" >&2; exit 1; }
    end=$(date +%s%N)
    times+=($(((end - start) / 1000)))
  done
  printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'
}

cd "$work"
base=$(median_us bash -c true)
trivial=$(median_us "$bin" run trivial -e bench -q)
stdlib=$(median_us "$bin" run stdlib -e bench -q)
# `runbook check` of the shipped projects: this repository's own (its scripts/ and the
# stdlib they import) and the seed's inventory in examples/askproai.
check=$(median_us "$bin" --config "$root/runbook.toml" check -q)
check_seed=$(median_us "$bin" --config "$root/examples/askproai/runbook.toml" check -q)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }
printf '%-34s %8s  %s\n' "case (median of $runs runs)" "ms" "x bash -c true"
printf '%-34s %8.2f  %s\n' "bash -c true" "$(awk -v t="$base" 'BEGIN{print t/1000}')" "1.0"
printf '%-34s %8.2f  %s\n' "runbook run trivial" "$(awk -v t="$trivial" 'BEGIN{print t/1000}')" "$(ratio "$trivial" "$base")"
printf '%-34s %8.2f  %s\n' "runbook run (imports the stdlib)" "$(awk -v t="$stdlib" 'BEGIN{print t/1000}')" "$(ratio "$stdlib" "$base")"
printf '%-34s %8.2f  %s\n' "runbook check (shipped project)" "$(awk -v t="$check" 'BEGIN{print t/1000}')" "$(ratio "$check" "$base")"
printf '%-34s %8.2f  %s\n' "runbook check (examples/askproai)" "$(awk -v t="$check_seed" 'BEGIN{print t/1000}')" "$(ratio "$check_seed" "$base")"

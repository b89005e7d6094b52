#!/usr/bin/env bash
# Canary judge benchmark: one window of LINES (default 100,000) access-log lines of both
# pools (`log_format runbook`, CANARY percent on `next`, default 25; the canary 10% slower
# and failing 0.2%), plus 10,000 older lines the window skips. runbook reads the file
# (`local::run cat`, as it would over SSH) and `canary::judge` judges it; the script times
# the judgement (parse, both pools' success/p95/p99, the error z-test and the Mann-Whitney
# test). The peer, timed the same way in the same run: `sort | awk` computing per-pool
# requests, success rate, p95 and p99 over the same file — less work (no rank test), a fair
# floor. Prints milliseconds (median of $RUNS, default 5) and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
LINES=${LINES:-100000}
CANARY=${CANARY:-25}
cargo build --release --locked -q
RB=$PWD/target/release/runbook
W=$(mktemp -d /tmp/rb-judge-bench.XXXX)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/scripts"
python3 - "$W/access.log" "$LINES" "$CANARY" <<'PY'
import math, random, sys
path, lines, canary = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 100
rng = random.Random(18)
with open(path, "w") as f:
    start = 1767225600.0
    for i in range(10_000):  # before the window
        f.write(f"{start - 600 + i * 0.05:.3f} stable 200 0.050\n")
    for i in range(lines):
        pool = "next" if rng.random() < canary else "stable"
        slow, fail = (1.1, 0.002) if pool == "next" else (1.0, 0.0005)
        t = round(0.08 * slow * math.exp(0.5 * rng.gauss(0, 1)), 3)
        status = 502 if rng.random() < fail else 200
        f.write(f"{start + i * 0.036:.3f} {pool} {status} {t:.3f}\n")
PY
SINCE=1767225600
printf '[app]\nname = "bench"\ndeploy_path = "deploy"\n[env.b]\ntransport = "local"\nhosts = { a = "localhost" }\n' > "$W/runbook.toml"
cat > "$W/scripts/judge.rhai" <<RHAI
let text = local::run(["cat", "access.log"], #{ quiet: true }).stdout;
let t = now_ms();
let r = canary::judge(text, #{ since: $SINCE });
let ms = now_ms() - t;
print("judge_ms " + ms);
print(r.report);
RHAI
# requests, success %, p95 and p99 per pool (nearest rank), from lines since the window began
peer() {
  awk -v s="$SINCE" '$1 >= s { print $2, $4, ($3 >= 500) }' access.log | sort -k1,1 -k2,2n |
    awk '{ if ($1 != p) { if (p != "") out(); p = $1; n = 0; e = 0 } t[++n] = $2; e += $3 }
         function out() { printf "%s %d %.2f%% %s %s\n", p, n, 100 * (n - e) / n, t[int(n * 0.95 + 0.999)], t[int(n * 0.99 + 0.999)] }
         END { out() }'
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms_since() { awk -v d=$(($(date +%s%N) - $1)) 'BEGIN {printf "%.1f", d / 1e6}'; }

cd "$W"
t_judge=(); t_run=(); t_peer=()
for ((i = 0; i < RUNS; i++)); do
  s=$(date +%s%N)
  out=$("$RB" run judge -e b -q 2>run.err) || { cat run.err >&2; exit 1; }
  t_run+=("$(ms_since "$s")")
  t_judge+=("$(awk '/^judge_ms/ {printf "%.1f", $2}' <<<"$out")")
  s=$(date +%s%N)
  peer >peer.out
  t_peer+=("$(ms_since "$s")")
done
echo "$out" | sed -n '/^pool/,$p'
echo "peer (sort | awk):"; cat peer.out
j=$(median "${t_judge[@]}"); r=$(median "${t_run[@]}"); p=$(median "${t_peer[@]}")
echo "RESULT lines=$LINES canary=${CANARY}% judge_ms=$j runbook_run_ms=$r peer_ms=$p" \
  "judge/peer=$(awk -v a="$j" -v b="$p" 'BEGIN {printf "%.2f", a / b}')" \
  "run/peer=$(awk -v a="$r" -v b="$p" 'BEGIN {printf "%.2f", a / b}')"

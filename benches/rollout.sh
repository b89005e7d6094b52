#!/usr/bin/env bash
# `runbook rollout status` on N real sshd hosts (loopback, default 2) while a rollout runs
# on them (a script that holds the deploy lock, records a canary at 25% with one
# judgement, and waits in its window obeying requests): the wall time of the whole
# command (cold: it opens every connection itself), median of $RUNS, with `runbook
# status` on the same hosts for comparison, timed the same way as benches/status.sh.
# The runner is ended by `runbook rollout abort` (which it obeys) at the end.
#
# Needs root; installs openssh-server when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-9}
N=${N:-2}
. benches/lib.sh # ms, median
[ "$(id -u)" = 0 ] || { echo "rollout.sh: run as root (it starts sshd processes)" >&2; exit 2; }
[ -x /usr/sbin/sshd ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server; }
cargo build --release --locked -q
RB=$PWD/target/release/runbook

W=$(mktemp -d /tmp/rb-rollout.XXXX)
chmod 755 "$W"
PIDS=()
RUNNER=
cleanup() {
  [ -z "$RUNNER" ] || kill "$RUNNER" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

id deploy >/dev/null 2>&1 || useradd -m -s /bin/bash deploy
usermod -p '*' deploy
mkdir -p /run/sshd ~deploy/.ssh
ssh-keygen -q -t ed25519 -N '' -C bench -f "$W/id"
cat "$W/id.pub" >> ~deploy/.ssh/authorized_keys
chown -R deploy:deploy ~deploy/.ssh; chmod 700 ~deploy/.ssh; chmod 600 ~deploy/.ssh/authorized_keys
: > "$W/known_hosts"
hosts=()
for i in $(seq 1 "$N"); do
  a=127.0.5.$i; d=$W/h$i; mkdir -p "$d/app"; chown deploy "$d/app"
  ssh-keygen -q -t ed25519 -N '' -f "$d/key"
  printf 'ListenAddress %s:22\nHostKey %s/key\nPidFile none\nAllowUsers deploy\nUsePAM no\nUseDNS no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPrintMotd no\nMaxStartups 200:30:400\nMaxSessions 100\nLogLevel ERROR\n' "$a" "$d" > "$d/cfg"
  /usr/sbin/sshd -D -f "$d/cfg" -E "$d/log" </dev/null >/dev/null 2>&1 &
  PIDS+=($!)
  echo "$a $(cut -d' ' -f1,2 "$d/key.pub")" >> "$W/known_hosts"
  hosts+=("h$i = { address = \"$a\", deploy_path = \"$d/app\" }")
done
for i in $(seq 1 "$N"); do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.5.$i/22) 2>/dev/null && break; sleep 0.05; done
done
chmod 644 "$W/known_hosts"
mkdir -p "$W/p/scripts"
{
  printf '[app]\nname = "bench"\ndeploy_path = "/unused"\nshared_files = []\n\n[ssh]\nuser = "deploy"\nidentity_file = "%s/id"\nknown_hosts = "%s/known_hosts"\n\n' "$W" "$W"
  printf '[env.bench]\nroles = { web = [%s] }\nhosts = { %s }\nvars = { laravel = false }\n' \
    "$(seq 1 "$N" | sed 's/^/"h/; s/$/"/' | paste -sd, -)" "$(IFS=,; echo "${hosts[*]}")"
} > "$W/p/runbook.toml"
cat > "$W/p/scripts/runner.rhai" <<'RHAI'
lock::acquire(hosts());
let ro = canary::rollout(hosts(), hosts(), #{ release: "20261201T000000Z", version: "v2", steps: [10, 25, 50] });
canary::rollout_step(ro, 2, 25);
canary::rollout_judged(ro, canary::judge_values(#{ canary_success: 99.9, canary_requests: 500, stable_success: 99.95, canary_p95: 0.12, stable_p95: 0.11 }, #{}));
canary::rollout_window(ro, 600);
print("window running");
print(`ended by: ${canary::rollout_wait(ro, 600)}`);
canary::rollout_end(ro, "aborted");
RHAI
cd "$W/p"
"$RB" run runner -e bench > "$W/runner.out" 2>&1 &
RUNNER=$!
for _ in $(seq 1 200); do grep -q "window running" "$W/runner.out" && break; sleep 0.05; done
grep -q "window running" "$W/runner.out" || { cat "$W/runner.out"; exit 1; }
"$RB" rollout status -e bench || { echo "rollout status failed" >&2; exit 1; }

ro=$(for _ in $(seq "$RUNS"); do ms "$RB" rollout status -e bench; done | median)
rj=$(for _ in $(seq "$RUNS"); do ms "$RB" rollout status -e bench --json; done | median)
st=$(for _ in $(seq "$RUNS"); do ms "$RB" status -e bench; done | median)
ls=$(for _ in $(seq "$RUNS"); do ms "$RB" lock status -e bench; done | median)
# The floor: one cold SSH connection running `true` (what any cold read of a host costs).
sh1=$(for _ in $(seq "$RUNS"); do ms ssh -i "$W/id" -o UserKnownHostsFile="$W/known_hosts" -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes deploy@127.0.5.1 true; done | median)
# Warm: `[ssh] persist` keeps the masters between invocations; the floor is then one
# `ssh true` through an OpenSSH master kept the same way (ControlPersist).
sed -i 's/^\[ssh\]$/[ssh]\npersist = "5m"/' runbook.toml
export XDG_RUNTIME_DIR=$W/run; mkdir -p -m 700 "$XDG_RUNTIME_DIR"
"$RB" rollout status -e bench >/dev/null 2>&1 || true
row=$(for _ in $(seq "$RUNS"); do ms "$RB" rollout status -e bench; done | median)
cm="-o ControlMaster=auto -o ControlPath=$W/run/cm-%C -o ControlPersist=300"
ssh -i "$W/id" -o UserKnownHostsFile="$W/known_hosts" -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes $cm deploy@127.0.5.1 true
shw=$(for _ in $(seq "$RUNS"); do ms ssh -i "$W/id" -o UserKnownHostsFile="$W/known_hosts" -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o BatchMode=yes $cm deploy@127.0.5.1 true; done | median)
ssh -o ControlPath="$W/run/cm-%C" -O exit deploy@127.0.5.1 >/dev/null 2>&1 || true
t0=$(date +%s%N)
"$RB" rollout abort -e bench --reason "benchmark over" >/dev/null 2>&1
wait "$RUNNER" || true
RUNNER=
t1=$(date +%s%N)
echo
echo "| $N hosts, cold, median of $RUNS | wall |"
echo "|---|---|"
echo "| runbook rollout status (lock + rollout state per host, one round trip) | ${ro} ms |"
echo "| runbook rollout status --json | ${rj} ms |"
echo "| runbook status (for comparison) | ${st} ms |"
echo "| runbook lock status (for comparison: one round trip per host) | ${ls} ms |"
echo "| ssh host true, cold (the floor) | ${sh1} ms |"
echo "| rollout abort until the runner exited (obeyed, one poll) | $(((t1 - t0) / 1000000)) ms |"
echo "| runbook rollout status, warm (\`[ssh] persist\`) | ${row} ms |"
echo "| ssh host true through a kept OpenSSH master (the warm floor) | ${shw} ms |"
"$RB" disconnect >/dev/null 2>&1 || true
grep "ended by" "$W/runner.out"

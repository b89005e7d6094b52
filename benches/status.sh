#!/usr/bin/env bash
# `runbook status` on N real sshd hosts (loopback, default 20), each with two releases
# deployed by runbook: the wall time of the whole command (cold: it opens every
# connection itself), median of $RUNS, against parallel-ssh running the same reads
# (readlink current, the release list, df) cold on the same hosts, timed the same way.
#
# Needs root; installs openssh-server and pssh when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
. benches/lib.sh # ms, median
N=${N:-20}
[ "$(id -u)" = 0 ] || { echo "status.sh: run as root (it starts sshd processes)" >&2; exit 2; }
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v parallel-ssh >/dev/null || need+=(pssh)
if ((${#need[@]})); then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; fi
cargo build --release --locked -q
RB=$PWD/target/release/runbook

W=$(mktemp -d /tmp/rb-status.XXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
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
: > "$W/known_hosts"; : > "$W/hosts"
hosts=()
for i in $(seq 1 "$N"); do
  a=127.0.4.$i; d=$W/h$i; mkdir -p "$d/app"; chown deploy "$d/app"
  ssh-keygen -q -t ed25519 -N '' -f "$d/key"
  printf 'ListenAddress %s:22\nHostKey %s/key\nPidFile none\nAllowUsers deploy\nUsePAM no\nUseDNS no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPrintMotd no\nMaxStartups 200:30:400\nMaxSessions 100\nLogLevel ERROR\n' "$a" "$d" > "$d/cfg"
  /usr/sbin/sshd -D -f "$d/cfg" -E "$d/log" </dev/null >/dev/null 2>&1 &
  PIDS+=($!)
  echo "$a $(cut -d' ' -f1,2 "$d/key.pub")" >> "$W/known_hosts"
  echo "deploy@$a" >> "$W/hosts"
  hosts+=("h$i = { address = \"$a\", deploy_path = \"$d/app\" }")
done
for i in $(seq 1 "$N"); do
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.4.$i/22) 2>/dev/null && break; sleep 0.05; done
done
chmod 644 "$W/known_hosts"
mkdir -p "$W/p/scripts"
{
  printf '[app]\nname = "bench"\ndeploy_path = "/unused"\nshared_files = []\n\n[ssh]\nuser = "deploy"\nidentity_file = "%s/id"\nknown_hosts = "%s/known_hosts"\n\n' "$W" "$W"
  printf '[env.bench]\nroles = { web = [%s] }\nhosts = { %s }\nvars = { laravel = false }\n' \
    "$(seq 1 "$N" | sed 's/^/"h/; s/$/"/' | paste -sd, -)" "$(IFS=,; echo "${hosts[*]}")"
} > "$W/p/runbook.toml"
cp -r examples/demo-app "$W/p/app"
cat > "$W/p/scripts/release.rhai" <<'RHAI'
let name = release::prepare(hosts(), #{ artifact: "app" });
release::activate(hosts(), name);
RHAI
cd "$W/p"
"$RB" run release -e bench -q >/dev/null
sleep 1.1
"$RB" run release -e bench -q >/dev/null
"$RB" status -e bench >/dev/null || { "$RB" status -e bench; exit 1; }

# The same reads per host (every host's deploy path is alike; h1's is read by each).
reads="d=$W/h1/app; readlink \"\$d/current\"; ls -1 \"\$d/releases\"; df -Pk \"\$d\" | tail -1"
rb=$(for _ in $(seq "$RUNS"); do ms "$RB" status -e bench; done | median)
ps=$(for _ in $(seq "$RUNS"); do ms parallel-ssh -h "$W/hosts" -p "$N" -x "-i $W/id -o UserKnownHostsFile=$W/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes" -i "$reads"; done | median)
echo
echo "| $N hosts, cold, median of $RUNS | wall |"
echo "|---|---|"
echo "| runbook status (lock state, release list, disk and workers probe per host; judged) | ${rb} ms |"
echo "| parallel-ssh -p $N running readlink current, ls releases, df | ${ps} ms |"
echo "| ratio runbook / parallel-ssh | $(awk -v a="$rb" -v b="$ps" 'BEGIN { printf "%.2f", a / b }') |"

# Warm: runbook with `[ssh] persist` (its masters kept from the run before), against
# parallel-ssh through OpenSSH's own kept masters (ControlMaster/ControlPersist), each
# warmed by one run first.
sed -i 's/^\[ssh\]$/[ssh]\npersist = "5m"/' runbook.toml
export XDG_RUNTIME_DIR=$W/run; mkdir -p -m 700 "$XDG_RUNTIME_DIR"
"$RB" status -e bench >/dev/null 2>&1 || true
mux="-i $W/id -o UserKnownHostsFile=$W/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o ControlMaster=auto -o ControlPath=$W/run/cm-%C -o ControlPersist=300"
parallel-ssh -h "$W/hosts" -p "$N" -x "$mux" -i "$reads" >/dev/null 2>&1 || true
rbw=$(for _ in $(seq "$RUNS"); do ms "$RB" status -e bench; done | median)
psw=$(for _ in $(seq "$RUNS"); do ms parallel-ssh -h "$W/hosts" -p "$N" -x "$mux" -i "$reads"; done | median)
"$RB" disconnect >/dev/null 2>&1 || true
for h in $(cat "$W/hosts"); do ssh -o ControlPath="$W/run/cm-%C" -O exit "$h" >/dev/null 2>&1 || true; done
echo
echo "| $N hosts, warm (kept masters), median of $RUNS | wall |"
echo "|---|---|"
echo "| runbook status with \`[ssh] persist\` | ${rbw} ms |"
echo "| parallel-ssh -p $N through ControlMaster/ControlPersist | ${psw} ms |"
echo "| ratio runbook / parallel-ssh | $(awk -v a="$rbw" -v b="$psw" 'BEGIN { printf "%.2f", a / b }') |"

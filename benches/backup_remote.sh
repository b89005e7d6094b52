#!/usr/bin/env bash
# Backups of an SSH host at a distance: runbook's on-host backup (runbook-agent, see
# src/backup/agent.rs) of the benchmark tree (benches/mktree.py, SCALE=1 ≈ 405 MiB) on one
# sshd host behind benches/linkemu.py, against the same work done by hand ON the host:
#
#   create:  runbook backup::create (archive + read-back verify)  vs  tar -I pigz -cf
#   verify:  runbook backup::verify (every sha256)                vs  tar -I pigz -xOf > /dev/null
#   prune:   runbook backup::prune keep=1 (verifies the newest,
#            removes the rest)                                    vs  tar -I pigz -xOf + rm
#
# and, for contrast, the streaming path ([backup] on_host = "never") once, plus the bytes
# every runbook step moved over the link (a counting proxy in front of linkemu).
#
#   DELAY_MS=10 MBIT=100 SCALE=1 RUNS=5 bash benches/backup_remote.sh
#   PROFILE=debug SCALE=0.05 RUNS=1 bash benches/backup_remote.sh   # a quick check
#
# Needs root (starts one sshd on 127.0.93.1; linkemu listens on 127.0.94.1, the counter on
# 127.0.95.1). The "host" shares this machine's disk and cores, as every bench here does.
set -euo pipefail
cd "$(dirname "$0")/.."
DELAY_MS=${DELAY_MS:-10}
MBIT=${MBIT:-100}
SCALE=${SCALE:-1}
RUNS=${RUNS:-5}
PROFILE=${PROFILE:-release}
STREAM=${STREAM:-1}
[ "$(id -u)" = 0 ] || { echo "backup_remote.sh: run as root (it starts sshd)" >&2; exit 2; }
[ -x /usr/sbin/sshd ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server; }
command -v pigz >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pigz; }
if [ "$PROFILE" = release ]; then cargo build --release --locked -q; else cargo build --locked -q; fi
RB=$PWD/target/$PROFILE/runbook
[ -x "$PWD/target/$PROFILE/runbook-agent" ] || { echo "no runbook-agent next to $RB" >&2; exit 1; }
EMU=$PWD/benches/linkemu.py
H=127.0.93.1 L=127.0.94.1 C=127.0.95.1
for a in $H $L $C; do
  if (exec 3<>/dev/tcp/$a/22) 2>/dev/null; then echo "backup_remote.sh: something already listens on $a:22 (another bench?)" >&2; exit 1; fi
done

W=$(mktemp -d /tmp/rb-backup-remote.XXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT

id deploy >/dev/null 2>&1 || useradd -m -s /bin/bash deploy
usermod -p '*' deploy
HOME_D=$(getent passwd deploy | cut -d: -f6)
mkdir -p /run/sshd "$HOME_D/.ssh"
ssh-keygen -q -t ed25519 -N '' -C backup-remote -f "$W/id"
cat "$W/id.pub" >> "$HOME_D/.ssh/authorized_keys"
chown -R deploy:deploy "$HOME_D/.ssh"; chmod 700 "$HOME_D/.ssh"; chmod 600 "$HOME_D/.ssh/authorized_keys"
# The agent is placed once per version: start without one so that the first run pays it.
rm -rf "$HOME_D/.cache/runbook/agent"
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
printf 'ListenAddress %s:22\nHostKey %s/hostkey\nPidFile none\nAllowUsers deploy\nUsePAM no\nUseDNS no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPrintMotd no\nLogLevel ERROR\nMaxSessions 50\n' "$H" "$W" > "$W/sshd_config"
/usr/sbin/sshd -D -f "$W/sshd_config" -E "$W/sshd.log" </dev/null >/dev/null 2>&1 &
PIDS+=($!)
echo "$C $(cut -d' ' -f1,2 "$W/hostkey.pub")" > "$W/known_hosts"

# Counts every byte between runbook and the link; writes the running total to a file.
cat > "$W/count.py" <<'PY'
import asyncio, sys
listen, target, out = sys.argv[1], sys.argv[2], sys.argv[3]
total = 0
def note():
    with open(out + ".tmp", "w") as f:
        f.write(str(total))
    import os; os.replace(out + ".tmp", out)
async def pump(r, w):
    global total
    try:
        while d := await r.read(65536):
            total += len(d)
            w.write(d)
            await w.drain()
    finally:
        note()
        w.close()
async def serve(r, w):
    host, port = target.rsplit(":", 1)
    r2, w2 = await asyncio.open_connection(host, int(port))
    await asyncio.gather(pump(r, w2), pump(r2, w), return_exceptions=True)
async def main():
    note()
    host, port = listen.rsplit(":", 1)
    s = await asyncio.start_server(serve, host, int(port))
    await s.serve_forever()
asyncio.run(main())
PY
python3 "$EMU" --delay-ms "$DELAY_MS" --mbit "$MBIT" --ready "$W/ready" --map $L:22=$H:22 2>"$W/emu.log" &
PIDS+=($!)
python3 "$W/count.py" $C:22 $L:22 "$W/bytes" & PIDS+=($!)
for _ in $(seq 1 100); do
  [ -s "$W/ready" ] && [ -s "$W/bytes" ] && (exec 3<>/dev/tcp/$H/22) 2>/dev/null && (exec 3<>/dev/tcp/$C/22) 2>/dev/null && break
  sleep 0.05
done
[ -s "$W/ready" ] || { echo "linkemu did not start:" >&2; cat "$W/emu.log" >&2; exit 1; }

# The host's deployment: the benchmark tree as its live release.
APP=$W/app BK=$W/backups REL=20250110T120000Z
mkdir -p "$APP/releases" "$APP/shared" "$BK" "$W/hand"
python3 benches/mktree.py "$APP/releases/$REL" "$SCALE"
ln -s "releases/$REL" "$APP/current"
echo "APP_KEY=bench" > "$APP/shared/.env"
chown -R deploy:deploy "$APP" "$BK" "$W/hand"
files=$(find "$APP/releases/$REL" -type f | wc -l); bytes=$(du -sb "$APP/releases/$REL" | cut -f1)

mkdir -p "$W/p/scripts"
inventory() { # on_host
  printf '[app]\nname = "bench"\ndeploy_path = "%s"\nshared_files = [".env"]\n[ssh]\nuser = "deploy"\nidentity_file = "%s/id"\nknown_hosts = "%s/known_hosts"\n[backup]\non_host = "%s"\n[env.b]\nbackup_dir = "%s"\nhosts = { h = "%s" }\n' \
    "$APP" "$W" "$W" "$1" "$BK" "$C" > "$W/p/runbook.toml"
}
echo 'print(backup::create(host("h"), #{}).name);' > "$W/p/scripts/create.rhai"
echo 'print(backup::verify(host("h"), args.name).ok);' > "$W/p/scripts/verify.rhai"
echo 'print(backup::prune(host("h"), #{ keep: 1 }));' > "$W/p/scripts/prune.rhai"

ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
moved() { cat "$W/bytes"; }
# rb SCRIPT ARGS…: one runbook run; sets T (ms), B (bytes over the link), LAST (stdout).
# A failure stops the bench.
rb() {
  local s b0
  b0=$(moved); s=$(ms)
  LAST=$(cd "$W/p" && "$RB" run "$@" -e b -q) || { echo "runbook run $* failed" >&2; exit 1; }
  T=$(( $(ms) - s ))
  sleep 0.2 # the counter notes the closing connection
  B=$(( $(moved) - b0 ))
}
# on_host CMD -> ms of a command run on the host as the deploy user (no link involved)
on_host() { local s; s=$(ms); runuser -u deploy -- sh -c "$1" >/dev/null; echo $(( $(ms) - s )); }

inventory auto
# Once: the agent's first placement (counted apart; every later run finds it cached).
rb create; t_first=$T b_first=$B
t_c=(); t_v=(); t_p=(); t_tc=(); t_tv=(); t_tp=(); b_max=0
note_bytes() { [ "$1" -gt "$b_max" ] && b_max=$1; true; }
for ((i = 0; i < RUNS; i++)); do
  sleep 1 # a new second: a new backup name
  rb create; t_c+=("$T"); note_bytes "$B"; name=$LAST
  rb verify "name=$name"; t_v+=("$T"); note_bytes "$B"
  rb prune; t_p+=("$T"); note_bytes "$B"
  rm -f "$W/hand/"*
  t_tc+=("$(on_host "tar -I pigz -cf $W/hand/a.tar.gz -C $APP/releases $REL")")
  t_tv+=("$(on_host "tar -I pigz -xOf $W/hand/a.tar.gz > /dev/null")")
  cp "$W/hand/a.tar.gz" "$W/hand/b.tar.gz"
  t_tp+=("$(on_host "tar -I pigz -xOf $W/hand/a.tar.gz > /dev/null && rm -f $W/hand/b.tar.gz")")
done
if [ "$STREAM" = 1 ]; then
  inventory never
  sleep 1
  rb create; s_c=$T sb_c=$B s_name=$LAST
  rb verify "name=$s_name"; s_v=$T sb_v=$B
  inventory auto
fi
size=$(stat -c %s "$BK/$name")
agent=$(stat -c %s "target/$PROFILE/runbook-agent")
c=$(median "${t_c[@]}"); v=$(median "${t_v[@]}"); p=$(median "${t_p[@]}")
tc=$(median "${t_tc[@]}"); tv=$(median "${t_tv[@]}"); tp=$(median "${t_tp[@]}")
s() { awk -v a="$1" 'BEGIN {printf "%.2f", a / 1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
mib() { awk -v a="$1" 'BEGIN {printf "%.1f", a / 1048576}'; }
echo "## backup of an SSH host at ${DELAY_MS} ms each way (RTT $((2 * DELAY_MS)) ms), ${MBIT} Mbit/s: $files files, $((bytes / 1048576)) MiB (SCALE=$SCALE), $PROFILE, median of $RUNS, $(nproc) cores"
echo
echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end; archive $(mib "$size") MiB; runbook-agent $(mib "$agent") MiB"
echo
echo "| step | runbook, on the host (s) | by hand on the host (s) | ratio | runbook bytes over the link (max of $RUNS) |"
echo "|---|---:|---:|---:|---:|"
echo "| create (archive + read-back verify) vs tar -I pigz -cf | $(s "$c") | $(s "$tc") | $(ratio "$c" "$tc") | $b_max |"
echo "| verify (every sha256) vs tar -I pigz -xOf | $(s "$v") | $(s "$tv") | $(ratio "$v" "$tv") | |"
echo "| prune keep=1 (verifies the newest) vs tar -I pigz -xOf + rm | $(s "$p") | $(s "$tp") | $(ratio "$p" "$tp") | |"
echo
echo "- first create, placing the agent: $(s "$t_first") s, $(mib "$b_first") MiB over the link (once per host and version)"
if [ "$STREAM" = 1 ]; then
  echo "- streaming through the runner (on_host = \"never\"), once: create $(s "$s_c") s ($(mib "$sb_c") MiB over the link), verify $(s "$s_v") s ($(mib "$sb_v") MiB)"
fi
echo "- targets: each ratio <= 1.2; nothing of the archive over the link (bytes per step << $(mib "$size") MiB)"

#!/usr/bin/env bash
# Streaming transfers, measured: the runner's peak memory while it deploys a 1 GiB
# artifact to 4 sshd hosts (loopback), and the wall time of a 50 MiB artifact deploy to
# 10 hosts behind benches/linkemu.py against sending 50 MiB over one such link.
#
#   bash benches/memory.sh                     # both parts
#   PART=memory bash benches/memory.sh         # or PART=link
#   SIZE_MIB=1024 HOSTS=4 LINK=20ms/100mbit LINK_HOSTS=10 LINK_MIB=50 RUNS=5 ARTIFACTS="app.tar.gz tree" LINK_ARTIFACT=tree
#
# Peak memory is the runbook process's VmHWM, read from /proc/<runbook's pid>/status by
# the last command of the deploy script itself (a local command whose parent is runbook),
# so it covers the whole run up to the end of the upload, unpacking and switch. Two
# artifacts: a .tar.gz (sent as it is) and a directory (packed once on the runner into a
# temporary file). Data is random, so compression does not shrink the work.
#
# The link part: a runbook deploy (release::prepare + activate of a directory artifact:
# connect, pack once, upload to all hosts at once, unpack, link, switch) on LINK_HOSTS
# hosts, each behind its own emulated link, against `ssh host 'cat > /dev/null' < file`
# (a new connection each run) over one such link. Same proxy, same ssh, medians of $RUNS,
# every command in turns; what the hosts hold from the run before is removed untimed.
# Needs root (starts sshd processes on 127.0.8.i; the proxy listens on 127.0.9.i).
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${PART:-all}
SIZE_MIB=${SIZE_MIB:-1024}
HOSTS=${HOSTS:-4}
LINK_SPEC=${LINK:-20ms/100mbit}
LINK_HOSTS=${LINK_HOSTS:-10}
LINK_MIB=${LINK_MIB:-50}
HOST_NET=127.0.8 LINK_NET=127.0.9
. benches/lib.sh
bench_need_root
# RUNBOOK_BIN: measure that binary instead of building the release one (a dry run of the bench).
if [ -n "${RUNBOOK_BIN:-}" ]; then RB=$(realpath "$RUNBOOK_BIN"); else
  cargo build --release --locked -q
  RB=$PWD/target/release/runbook
fi

# The fleet is the larger of the two parts; part one uses its first $HOSTS hosts on
# loopback, part two its first $LINK_HOSTS through the emulator (clients pick the address).
N=$HOSTS; [ "$PART" = memory ] || N=$(( LINK_HOSTS > HOSTS ? LINK_HOSTS : HOSTS ))
[ "$PART" = link ] && N=$LINK_HOSTS
LINK=$LINK_SPEC
bench_link "$LINK"
bench_workdir
bench_fleet "$N"
[ "$PART" = memory ] || bench_linkemu

inventory() { # ENV-NAME NET COUNT -> an environment whose hosts have their own deploy path
  local env=$1 net=$2 n=$3 i
  printf '[env.%s]\nhosts = { ' "$env"
  for i in $(seq 1 "$n"); do
    printf 'h%s = { address = "%s.%s", deploy_path = "/home/deploy/rb-memory/%s/h%s" }%s' "$i" "$net" "$i" "$env" "$i" "$([ "$i" = "$n" ] || echo ', ')"
  done
  printf ' }\nroles = { web = [%s] }\n' "$(seq 1 "$n" | sed 's/^/"h/; s/$/"/' | paste -sd, -)"
}
{
  printf '[app]\nname = "bench"\ndeploy_path = "/home/deploy/unused"\n[ssh]\nuser = "deploy"\nidentity_file = "%s/id"\nknown_hosts = "%s/known_hosts"\nmax_concurrency = 64\n' "$W" "$W"
  # known_hosts names the client addresses: loopback hosts need their own lines.
  inventory mem "$HOST_NET" "$HOSTS"
  inventory link "$NET" "$LINK_HOSTS"
} > "$W/runbook.toml"
if [ "$NET" != "$HOST_NET" ]; then sed "s/^$LINK_NET\./$HOST_NET./" "$W/known_hosts" >> "$W/known_hosts"; fi
mkdir -p "$W/scripts"
cat > "$W/scripts/deploy.rhai" <<'RHAI'
let web = hosts("web");
let n = release::prepare(web, #{ artifact: args.artifact });
release::activate(web, n);
print(local::shell("grep VmHWM /proc/$PPID/status", #{ quiet: true }).stdout);
RHAI
cd "$W"
clean_hosts() { rm -rf /home/deploy/rb-memory; }
trap 'clean_hosts; bench_cleanup' EXIT
[ -n "${KEEP:-}" ] && trap - EXIT

if [ "$PART" != link ]; then
  mkdir -p art/tree
  head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > art/tree/blob
  printf 'APP_ENV=bench\n' > art/tree/.env
  # gzip level 0: a real .tar.gz of the same size, made in seconds
  python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1], "w:gz", compresslevel=0); t.add(sys.argv[2], arcname="."); t.close()' art/app.tar.gz art/tree
  echo "## peak memory of the runner: a ${SIZE_MIB} MiB artifact to $HOSTS hosts (loopback)"
  echo
  echo "| artifact | wall s | runner VmHWM | target |"
  echo "|---|---:|---:|---|"
  for a in ${ARTIFACTS:-app.tar.gz tree}; do
    clean_hosts
    s=$(date +%s%N)
    hwm=$("$RB" run deploy -e mem -q "artifact=$W/art/$a" 2>"$W/err") || { echo "FAILED: deploy of $a" >&2; cat "$W/err" >&2; exit 1; }
    e=$(date +%s%N)
    kb=$(echo "$hwm" | awk '/VmHWM/ {print $2}')
    [ -n "$kb" ] || { echo "FAILED: no VmHWM in: $hwm" >&2; exit 1; }
    for i in $(seq 1 "$HOSTS"); do
      got=$(stat -c %s "/home/deploy/rb-memory/mem/h$i/current/blob")
      [ "$got" = "$((SIZE_MIB * 1024 * 1024))" ] || { echo "FAILED: h$i received $got bytes" >&2; exit 1; }
    done
    desc=$([ "$a" = tree ] && echo "directory (packed once)" || echo ".tar.gz (sent as it is)")
    echo "| $desc | $(awk -v n=$((e - s)) 'BEGIN {printf "%.1f", n / 1e9}') | $((kb / 1024)) MiB | <= 128 MiB |"
  done
  rm -rf art
  echo
fi

if [ "$PART" != memory ]; then
  mkdir -p lart/tree
  head -c "$((LINK_MIB * 1024 * 1024))" /dev/urandom > lart/tree/blob
  printf 'APP_ENV=bench\n' > lart/tree/.env
  python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1], "w:gz", compresslevel=0); t.add(sys.argv[2], arcname="."); t.close()' lart/app.tar.gz lart/tree
  one() { ssh -F "$W/ssh_config" "$NET.1" 'cat > /dev/null' < lart/tree/blob; }
  deploy() { "$RB" run deploy -e link -q "artifact=$W/lart/${LINK_ARTIFACT:-tree}"; }
  # The same bytes to every host at once with plain ssh: what the machine and the emulator
  # allow for $LINK_HOSTS links in parallel (a floor for any tool).
  all() { local a; for a in $(head -n "$LINK_HOSTS" "$W/hosts"); do ssh -F "$W/ssh_config" "$a" 'cat > /dev/null' < lart/tree/blob & done; wait; }
  # The same work as the deploy with plain ssh: the directory packed once (tar, no
  # compression: the data is random), sent to every host at once and unpacked there.
  tar -cf lart/tree.tar -C lart tree
  all_tar() { local a i=0; for a in $(head -n "$LINK_HOSTS" "$W/hosts"); do i=$((i + 1)); ssh -F "$W/ssh_config" "$a" "mkdir -p /home/deploy/rb-memory/tar/$i && tar -xf - -C /home/deploy/rb-memory/tar/$i" < lart/tree.tar & done; wait; }
  # In turns (one, all, all_tar, deploy, one, ...): a slow minute of the machine weighs on
  # every column alike. What the hosts hold from the run before is removed between runs,
  # untimed: deleting it is no tool's work.
  turns=$(BENCH_SETUP=clean_hosts bench_turns one all all_tar deploy)
  read -r t_one t_all t_tar t_rb <<<"$turns"
  echo "## a ${LINK_MIB} MiB artifact to $LINK_HOSTS hosts, each behind its own link: $LINK_TEXT"
  echo
  echo "| what (in turns) | median of $RUNS, s |"
  echo "|---|---:|"
  echo "| ssh host 'cat > /dev/null' < ${LINK_MIB} MiB, one link | $t_one |"
  echo "| plain ssh 'cat > /dev/null' to $LINK_HOSTS hosts at once | $t_all |"
  echo "| plain ssh 'tar -xf -' of the same tree to $LINK_HOSTS hosts at once | $t_tar |"
  echo "| runbook deploy (prepare + activate) of lart/${LINK_ARTIFACT:-tree} to $LINK_HOSTS hosts | $t_rb |"
  echo
  r() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
  echo "ratio: runbook / one link = $(r "$t_rb" "$t_one") x (target <= 1.3); plain ssh to all / one link = $(r "$t_all" "$t_one") x; plain ssh + tar to all / one link = $(r "$t_tar" "$t_one") x; runbook / plain ssh + tar = $(r "$t_rb" "$t_tar") x"
fi

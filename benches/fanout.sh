#!/usr/bin/env bash
# Fan-out benchmark: `uptime` on 1, 10 and 50 real sshd hosts (loopback) with runbook,
# parallel-ssh, ansible (-m raw and -m command) and plain ssh over open ControlMasters;
# then a deploy-shaped sequence of 10 commands on 50 hosts: one runbook script against
# an ansible playbook with the same 10 tasks. Medians of $RUNS runs, printed as Markdown.
#
# Needs root; installs openssh-server, pssh and ansible when missing. Every client uses
# the same ssh binary and OpenSSH's default key exchange, so the comparison is fair.
#
# LINK="20ms/100mbit" (round trip / bandwidth per direction) puts benches/linkemu.py in front
# of every host's sshd: host i's sshd stays on 127.0.3.i, every tool connects to the proxy on
# 127.0.5.i (known_hosts, inventories and ssh_config name those addresses), which adds half
# the round trip each way and caps each host's link, shared by all its connections.
# LINK="20ms" delays without a cap. Unset (the default): loopback, no emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
N=${N:-50}
LINK=${LINK:-}
ANSIBLE=${ANSIBLE:-1} # ANSIBLE=0 leaves ansible out (at N=200 it alone takes most of an hour)
P=$((N > 50 ? N : 50)) # parallelism of every tool: parallel-ssh -p, ansible -f, runbook max_concurrency
. benches/lib.sh
bench_link "$LINK"
bench_need_root
need=()
command -v parallel-ssh >/dev/null || need+=(pssh)
command -v ansible >/dev/null || need+=(ansible)
if ((${#need[@]})); then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; fi
cargo build --release --locked -q
RB=$PWD/target/release/runbook
SIZES=$(printf '%s\n' 1 10 "$N" | sort -nu | tr '\n' ' ')

# --- the fleet: one sshd per host on 127.0.3.i (benches/lib.sh) ----------------------
bench_workdir
bench_fleet "$N"
bench_linkemu
printf '[web]\n' > "$W/inventory.ini"
i=0; while read -r a; do i=$((i + 1)); echo "h$i ansible_host=$a" >> "$W/inventory.ini"; done < "$W/hosts"
cat >> "$W/inventory.ini" <<INI
[web:vars]
ansible_user=deploy
ansible_ssh_private_key_file=$W/id
ansible_ssh_common_args=-o UserKnownHostsFile=$W/known_hosts -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes -o ControlMaster=auto -o ControlPersist=60s -o ControlPath=$W/cm/a-%C
ansible_python_interpreter=/usr/bin/python3
INI

# runbook inventory: one environment per fleet size
{
  printf '[app]\nname = "bench"\ndeploy_path = "/home/deploy/app"\n[ssh]\nuser = "deploy"\nidentity_file = "%s/id"\nknown_hosts = "%s/known_hosts"\nmax_concurrency = %s\nconnect_timeout = "60s"\n' "$W" "$W" "$P"
  for n in $SIZES; do
    printf '[env.b%s]\nhosts = { ' "$n"
    for i in $(seq 1 "$n"); do printf 'h%s = "%s.%s"%s' "$i" "$NET" "$i" "$([ "$i" = "$n" ] || echo ', ')"; done
    printf ' }\n'
  done
} > "$W/runbook.toml"
mkdir -p "$W/scripts"
echo 'ssh::run(hosts(), ["uptime"], #{ quiet: true });' > "$W/scripts/uptime.rhai"
cat > "$W/scripts/ten.rhai" <<'RHAI'
let web = hosts();
for i in 0..10 { ssh::run(web, ["sh", "-c", `echo step ${i} > /dev/null`], #{ quiet: true }); }
RHAI
cat > "$W/scripts/warm.rhai" <<'RHAI'
let web = hosts();
ssh::run(web, ["true"], #{ quiet: true });
let t0 = now_ms();
for i in 0..10 { ssh::run(web, ["true"], #{ quiet: true }); }
print(`${(now_ms() - t0).to_float() / 10.0 / web.len().to_float()}`);
RHAI
{
  echo '- hosts: web'
  echo '  gather_facts: false'
  echo '  tasks:'
  for i in $(seq 0 9); do printf '    - name: step %s\n      ansible.builtin.command: sh -c "echo step %s > /dev/null"\n' "$i" "$i"; done
} > "$W/playbook.yml"
export ANSIBLE_HOST_KEY_CHECKING=True ANSIBLE_PIPELINING=True ANSIBLE_FORKS=$P ANSIBLE_STDOUT_CALLBACK=minimal ANSIBLE_LOCALHOST_WARNING=False ANSIBLE_INVENTORY_UNPARSED_WARNING=False

median() { bench_median "$@"; }
ssh_cm_open() { local n=$1; for a in $(head -n "$n" "$W/hosts"); do ssh -F "$W/ssh_config" -o ControlMaster=yes -o ControlPath="$W/cm/p-$a" -o ControlPersist=300 -N -f "$a"; done; }
ssh_cm_close() { local s; for s in "$W"/cm/p-*; do [ -S "$s" ] && ssh -o ControlPath="$s" -O exit x >/dev/null 2>&1; done; return 0; }
ssh_cm_run() { local n=$1; for a in $(head -n "$n" "$W/hosts"); do ssh -F "$W/ssh_config" -o ControlPath="$W/cm/p-$a" "$a" uptime & done; wait; }
# Once connected, measured the same way on both sides: the wall time of 10 rounds of `true`
# on every host over connections opened before the clock starts, per host per command.
ssh_cm_warm() { local n=$1 t0 r; t0=$(date +%s%N); for r in $(seq 1 10); do for a in $(head -n "$n" "$W/hosts"); do ssh -F "$W/ssh_config" -o ControlPath="$W/cm/p-$a" "$a" true & done; wait; done; awk -v t="$(($(date +%s%N) - t0))" -v n="$n" 'BEGIN {printf "%.2f", t / 1e6 / 10 / n}'; }
ssh_one() { ssh -F "$W/ssh_config" "$(head -n 1 "$W/hosts")" uptime; }
rb_cold() { "$RB" run uptime -e "b$1" -q; }
pssh_run() { local n=$1; head -n "$n" "$W/hosts" > "$W/hosts.$n"; parallel-ssh -p "$P" -h "$W/hosts.$n" -x "-F $W/ssh_config" -t 60 uptime; }
ansible_run() { local n=$1 m=$2; ansible "web[0:$((n - 1))]" -i "$W/inventory.ini" -m "$m" -a uptime -f "$P"; }
ansible_close() { for s in "$W"/cm/a-*; do [ -S "$s" ] && ssh -o ControlPath="$s" -O exit x >/dev/null 2>&1 || true; done; }
ansible_cold() { ansible_close; ansible_run "$@"; }

cd "$W"
echo "Link: $LINK_TEXT."
echo
echo "## uptime, cold (new connections each run), median of $RUNS, seconds"
echo
echo "runbook and parallel-ssh take turns, run by run; the other columns follow them."
echo
echo "| hosts | runbook | parallel-ssh -p $P | ansible -m raw | ansible -m command | plain ssh (1 host) |"
echo "|---:|---:|---:|---:|---:|---:|"
declare -A R
for n in $SIZES; do
  pair=$(bench_pair rb_cold pssh_run "$n")
  R[rb$n]=${pair% *}; R[pssh$n]=${pair#* }
  R[raw$n]=-; R[cmd$n]=-
  if [ "$ANSIBLE" = 1 ]; then
    R[raw$n]=$(median ansible_cold "$n" raw)
    R[cmd$n]=$(median ansible_cold "$n" command)
  fi
  one=""; [ "$n" = 1 ] && one=$(median ssh_one)
  echo "| $n | ${R[rb$n]} | ${R[pssh$n]} | ${R[raw$n]} | ${R[cmd$n]} | $one |"
done
# What a cold host costs the machine (every process: the clients, the hosts' sshd and
# shells, the emulator), from /proc/stat: the cold rows are bound by it, not by waiting.
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
cpu_ms() { # CMD... -> milliseconds of CPU per host of $N for one run
  local b0
  b0=$(busy); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; return 1; }
  echo $(( ($(busy) - b0) * 1000 / $(getconf CLK_TCK) / N ))
}
# In turns, as the cold rows: runbook, parallel-ssh, runbook, ...; medians of 3 each.
cr=(); cp=()
for _ in 1 2 3; do cr+=("$(cpu_ms rb_cold "$N")"); cp+=("$(cpu_ms pssh_run "$N")"); done
cpu_rb=$(printf '%s\n' "${cr[@]}" | sort -n | sed -n 2p)
cpu_pssh=$(printf '%s\n' "${cp[@]}" | sort -n | sed -n 2p)
echo
echo "CPU of the whole machine per cold host ($N hosts, in turns, median of 3): runbook $cpu_rb ms, parallel-ssh $cpu_pssh ms"
ssh_cm_open "$N"
cm=$(median ssh_cm_run "$N")
echo
echo "plain ssh over $N already-open ControlMasters: ${cm} s"
seq_rb=$(median "$RB" run ten -e "b$N" -q)
seq_an=-; [ "$ANSIBLE" = 1 ] && seq_an=$(median ansible-playbook -i "$W/inventory.ini" "$W/playbook.yml" -f "$P")
warm=$("$RB" run warm -e "b$N" -q 2>/dev/null)
ssh_cm_close; ssh_cm_open "$N" # fresh masters: ControlPersist may have ended during the sequences above
cm_warm=$(ssh_cm_warm "$N")
ratio() { if [ "$1" = - ] || [ "$2" = - ]; then echo -; else awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; fi; }
echo
echo "## deploy-shaped: 10 commands one after another on $N hosts"
echo
echo "| tool | seconds |"
echo "|---|---:|"
echo "| runbook (one script) | $seq_rb |"
echo "| ansible-playbook, 10 tasks, -f $P, pipelining | $seq_an |"
echo
echo "## ratios"
echo
echo "- $N hosts cold: runbook / parallel-ssh = $(ratio "${R[rb$N]}" "${R[pssh$N]}") (target <= 1.0)"
echo "- $N hosts cold: ansible -m command / runbook = $(ratio "${R[cmd$N]}" "${R[rb$N]}") x (target >= 3)"
echo "- 10-command sequence: ansible-playbook / runbook = $(ratio "$seq_an" "$seq_rb") x (target >= 10)"
echo "- once connected: $(printf '%.2f' "$warm") ms per host per command (target <= 3); plain ssh over open ControlMasters, the same 10 rounds of true: $cm_warm ms"

# A second invocation within the persist window: `[ssh] persist` keeps the masters of
# the run before; against plain ssh over the ControlMasters it keeps the same way (above).
sed -i 's/^\[ssh\]$/[ssh]\npersist = "5m"/' "$W/runbook.toml"
export XDG_RUNTIME_DIR=$W/run; mkdir -p -m 700 "$XDG_RUNTIME_DIR"
"$RB" run uptime -e "b$N" -q >/dev/null 2>&1
pers=$(median "$RB" run uptime -e "b$N" -q)
"$RB" disconnect >/dev/null 2>&1
echo "- a second runbook run of uptime on $N hosts with [ssh] persist: $pers s (target <= 0.3; plain ssh over open ControlMasters: $cm s)"

#!/usr/bin/env bash
# Measures the link emulator (benches/linkemu.py) itself: configured vs measured round trip
# and throughput, direct and through the proxy, printed as Markdown.
#
#   DELAY_MS=10 MBIT=100 SIZE_MIB=50 bash benches/linkemu_check.sh
#
# - TCP round trip: a 1-byte ping-pong to an echo server, median of 200 (expect +2 x delay);
# - ssh round trips: median of 20 `ssh host true` over an open ControlMaster (one channel
#   open plus the exec reply: the column "RTTs" says how many round trips that came to);
# - throughput: SIZE_MIB through ssh up and down, and two SIZE_MIB/2 uploads at once on the
#   same link (the cap is shared per link, so the pair should take as long as one).
# Needs root (starts one sshd on 127.0.6.1; the proxy listens on 127.0.7.1).
set -euo pipefail
cd "$(dirname "$0")/.."
DELAY_MS=${DELAY_MS:-10}
MBIT=${MBIT:-100}
SIZE_MIB=${SIZE_MIB:-50}
RUNS=${RUNS:-3}
[ "$(id -u)" = 0 ] || { echo "linkemu_check.sh: run as root (it starts sshd)" >&2; exit 2; }
[ -x /usr/sbin/sshd ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server; }
EMU=$PWD/benches/linkemu.py
H=127.0.6.1 P=127.0.7.1

W=$(mktemp -d /tmp/rb-linkemu.XXXX)
PIDS=()
cleanup() {
  set +e
  for s in "$W"/cm-*; do [ -S "$s" ] && ssh -o ControlPath="$s" -O exit x >/dev/null 2>&1; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT

id deploy >/dev/null 2>&1 || useradd -m -s /bin/bash deploy
usermod -p '*' deploy
mkdir -p /run/sshd ~deploy/.ssh
ssh-keygen -q -t ed25519 -N '' -C linkemu -f "$W/id"
cat "$W/id.pub" >> ~deploy/.ssh/authorized_keys
chown -R deploy:deploy ~deploy/.ssh; chmod 700 ~deploy/.ssh; chmod 600 ~deploy/.ssh/authorized_keys
ssh-keygen -q -t ed25519 -N '' -f "$W/hostkey"
printf 'ListenAddress %s:22\nHostKey %s/hostkey\nPidFile none\nAllowUsers deploy\nUsePAM no\nUseDNS no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPrintMotd no\nLogLevel ERROR\n' "$H" "$W" > "$W/sshd_config"
/usr/sbin/sshd -D -f "$W/sshd_config" -E "$W/sshd.log" </dev/null >/dev/null 2>&1 &
PIDS+=($!)
for a in $H $P; do echo "$a $(cut -d' ' -f1,2 "$W/hostkey.pub")"; done > "$W/known_hosts"
printf 'Host 127.0.*\n  User deploy\n  IdentityFile %s/id\n  IdentitiesOnly yes\n  UserKnownHostsFile %s/known_hosts\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n' "$W" "$W" > "$W/ssh_config"

cat > "$W/tcp.py" <<'PY'
import asyncio, socket, statistics, sys, time
if sys.argv[1] == "serve":  # echo server
    async def echo(r, w):
        while d := await r.read(65536):
            w.write(d)
            await w.drain()
        w.close()
    async def main():
        s = await asyncio.start_server(echo, sys.argv[2], int(sys.argv[3]))
        await s.serve_forever()
    asyncio.run(main())
else:  # ping ADDR PORT N: median 1-byte round trip in ms
    s = socket.create_connection((sys.argv[2], int(sys.argv[3])))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = []
    for _ in range(int(sys.argv[4])):
        t0 = time.perf_counter()
        s.sendall(b"x")
        if s.recv(1) != b"x":
            sys.exit("echo server answered wrongly")
        t.append(time.perf_counter() - t0)
    print(f"{statistics.median(t) * 1000:.2f}")
PY
python3 "$W/tcp.py" serve $H 7007 & PIDS+=($!)
python3 "$EMU" --delay-ms "$DELAY_MS" --mbit "$MBIT" --ready "$W/ready" \
  --map $P:22=$H:22 --map $P:7007=$H:7007 2>"$W/emu.log" & PIDS+=($!)
for _ in $(seq 1 100); do
  [ -s "$W/ready" ] && (exec 3<>/dev/tcp/$H/22) 2>/dev/null && (exec 3<>/dev/tcp/$H/7007) 2>/dev/null && break
  sleep 0.05
done
[ -s "$W/ready" ] || { echo "linkemu did not start:" >&2; cat "$W/emu.log" >&2; exit 1; }

ms() { echo $(( $(date +%s%N) / 1000000 )); }
med() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cm() { ssh -F "$W/ssh_config" -o ControlPath="$W/cm-$1" "$@"; }
for a in $H $P; do ssh -F "$W/ssh_config" -o ControlMaster=yes -o ControlPath="$W/cm-$a" -o ControlPersist=300 -N -f "$a"; done
ssh_rtt() { # addr -> median ms of 20 `ssh true` over its master
  local i s
  for i in $(seq 1 20); do s=$(ms); cm "$1" true; echo $(( $(ms) - s )); done | med
}
xfer() { # addr up|down MiB -> ms
  local s; s=$(ms)
  if [ "$2" = up ]; then head -c "$3M" /dev/zero | cm "$1" 'cat > /dev/null'
  else cm "$1" "head -c $3M /dev/zero" > /dev/null; fi
  echo $(( $(ms) - s ))
}
pair() { # addr MiB: two uploads of MiB/2 at once -> ms
  local s; s=$(ms)
  xfer "$1" up $(($2 / 2)) >/dev/null & xfer "$1" up $(($2 / 2)) >/dev/null & wait
  echo $(( $(ms) - s ))
}
runs() { local i; for i in $(seq 1 "$RUNS"); do "$@"; done | med; }

rtt=$((2 * DELAY_MS))
tcp_d=$(python3 "$W/tcp.py" ping $H 7007 200); tcp_p=$(python3 "$W/tcp.py" ping $P 7007 200)
ssh_d=$(ssh_rtt $H); ssh_p=$(ssh_rtt $P)
f() { awk "BEGIN {printf \"%.${2:-2}f\", $1}"; }
wire=$(f "$SIZE_MIB * 1048576 * 8 / ($MBIT * 1e6)" 2)
echo "## link emulator: ${DELAY_MS} ms each way (RTT ${rtt} ms), ${MBIT} Mbit/s each direction per link"
echo
echo "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start; ms are medians."
echo
echo "| measure | direct | through linkemu | added | configured | measured / configured |"
echo "|---|---:|---:|---:|---:|---:|"
echo "| TCP 1-byte round trip, ms (200) | $tcp_d | $tcp_p | $(f "$tcp_p - $tcp_d") | $rtt | $(f "($tcp_p - $tcp_d) / $rtt") |"
k=$(f "($ssh_p - $ssh_d) / $rtt" 1)
echo "| \`ssh host true\` over a master, ms (20) | $ssh_d | $ssh_p | $((ssh_p - ssh_d)) | $k RTTs | |"
for dir in up down; do
  d=$(runs xfer $H $dir "$SIZE_MIB"); p=$(runs xfer $P $dir "$SIZE_MIB")
  echo "| ${SIZE_MIB} MiB ssh $dir, s ($RUNS) | $(f "$d / 1000") | $(f "$p / 1000") | | $wire | $(f "$p / 1000 / $wire") |"
done
p=$(runs pair $P "$SIZE_MIB")
echo "| 2 x $((SIZE_MIB / 2)) MiB ssh up at once, one link, s ($RUNS) | | $(f "$p / 1000") | | $wire | $(f "$p / 1000 / $wire") |"
echo
echo "Configured throughput time = size / rate of the payload alone; the measured time also holds"
echo "ssh's own start and channel open (the round trips above) and any timer lateness under load."

# Shared setup of the fleet benchmarks (sourced, not run): a work directory cleaned up on
# exit, a fleet of real sshd hosts on loopback with a `deploy` user, and — with LINK set —
# benches/linkemu.py in front of every host. Used by fanout.sh and memory.sh.
#
#   HOST_NET=127.0.3 LINK_NET=127.0.5 LINK=20ms/100mbit
#   bench_link "$LINK"   # parses LINK: LINK_RTT, LINK_MBIT, NET (what clients connect to), LINK_TEXT
#   bench_workdir        # W, PIDS, trap cleanup
#   bench_fleet N        # sshd i on $HOST_NET.i; $W/id (client key), $W/known_hosts,
#                        # $W/hosts (one client address a line), $W/maps, $W/ssh_config
#   bench_linkemu        # starts the emulator when LINK is set (after bench_fleet)
#   bench_median CMD...  # median wall seconds of $RUNS runs; a failing run fails the bench
#   bench_pair A B ARGS... # "MEDIAN_A MEDIAN_B": A ARGS and B ARGS taken in turns, $RUNS each
#   bench_turns A B ...    # "MEDIAN_A MEDIAN_B ...": in turns, BENCH_SETUP (untimed) before each run
#   ms CMD...            # wall milliseconds of one run; a failing run stops the bench
#   median               # the median of the numbers on stdin, one a line

HOST_NET=${HOST_NET:-127.0.3}
LINK_NET=${LINK_NET:-127.0.5}
RUNS=${RUNS:-5}

bench_need_root() {
  [ "$(id -u)" = 0 ] || { echo "$(basename "$0"): run as root (it starts sshd processes)" >&2; exit 2; }
  [ -x /usr/sbin/sshd ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server; }
}

bench_link() { # LINK -> LINK_RTT LINK_MBIT NET LINK_TEXT
  local link=$1
  if [ -n "$link" ]; then
    [[ "$link" =~ ^([0-9]+(\.[0-9]+)?)ms(/([0-9]+(\.[0-9]+)?)mbit)?$ ]] ||
      { echo "$(basename "$0"): LINK='$link' is not RTTms[/MBITmbit], e.g. LINK=20ms/100mbit" >&2; exit 2; }
    LINK_RTT=${BASH_REMATCH[1]} LINK_MBIT=${BASH_REMATCH[4]:-0}
    NET=$LINK_NET # the address every client uses: the emulator's, in front of $HOST_NET.i
    LINK_TEXT="$LINK_RTT ms RTT ($(awk -v r="$LINK_RTT" 'BEGIN {print r / 2}') ms each way), $([ "$LINK_MBIT" = 0 ] && echo "no bandwidth cap" || echo "$LINK_MBIT Mbit/s each direction per host"), through benches/linkemu.py"
  else
    NET=$HOST_NET
    LINK_TEXT="loopback, no link emulation"
  fi
}

bench_workdir() {
  W=$(mktemp -d /tmp/rb-bench.XXXX)
  PIDS=()
  trap bench_cleanup EXIT
  [ -n "${KEEP:-}" ] && trap - EXIT
  return 0
}

bench_cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for s in "$W"/cm/*; do [ -S "$s" ] && ssh -o ControlPath="$s" -O exit x >/dev/null 2>&1; done
  rm -rf "$W"
}

bench_fleet() { # N
  local n=$1 i a d
  id deploy >/dev/null 2>&1 || useradd -m -s /bin/bash deploy
  usermod -p '*' deploy
  mkdir -p /run/sshd "$W/cm" ~deploy/.ssh
  ssh-keygen -q -t ed25519 -N '' -C bench -f "$W/id"
  cat "$W/id.pub" >> ~deploy/.ssh/authorized_keys
  chown -R deploy:deploy ~deploy/.ssh; chmod 700 ~deploy/.ssh; chmod 600 ~deploy/.ssh/authorized_keys
  : > "$W/known_hosts"; : > "$W/hosts"; : > "$W/maps"
  for i in $(seq 1 "$n"); do
    a=$HOST_NET.$i; d=$W/h$i; mkdir -p "$d"
    ssh-keygen -q -t ed25519 -N '' -f "$d/key"
    printf 'ListenAddress %s:22\nHostKey %s/key\nPidFile none\nAllowUsers deploy\nUsePAM no\nUseDNS no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPrintMotd no\nMaxStartups 200:30:400\nMaxSessions 100\nLogLevel ERROR\n' "$a" "$d" > "$d/cfg"
    /usr/sbin/sshd -D -f "$d/cfg" -E "$d/log" </dev/null >/dev/null 2>&1 &
    PIDS+=($!)
    echo "$NET.$i $(cut -d' ' -f1,2 "$d/key.pub")" >> "$W/known_hosts"
    echo "$NET.$i" >> "$W/hosts"
    echo "$NET.$i:22=$a:22" >> "$W/maps"
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/$HOST_NET.$i/22") 2>/dev/null && break; sleep 0.05; done
  done
  # An sshd that could not bind (an old one still listening there) exits: fail, do not
  # measure against a stranger.
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "$(basename "$0"): an sshd of the fleet exited (is $HOST_NET.* in use?):" >&2; cat "$W"/h*/log >&2; exit 1; }
  done
  printf 'Host %s.* %s.*\n  User deploy\n  IdentityFile %s/id\n  IdentitiesOnly yes\n  UserKnownHostsFile %s/known_hosts\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n' "$HOST_NET" "$LINK_NET" "$W" "$W" > "$W/ssh_config"
}

bench_linkemu() {
  [ -n "${LINK:-}" ] || return 0
  python3 benches/linkemu.py --delay-ms "$(awk -v r="$LINK_RTT" 'BEGIN {print r / 2}')" --mbit "$LINK_MBIT" \
    --maps "$W/maps" --ready "$W/link-ready" 2>"$W/linkemu.log" &
  PIDS+=($!)
  for _ in $(seq 1 100); do [ -s "$W/link-ready" ] && break; sleep 0.05; done
  [ -s "$W/link-ready" ] || { echo "$(basename "$0"): the link emulator did not start:" >&2; cat "$W/linkemu.log" >&2; exit 1; }
}

bench_median() { # command... -> median seconds over $RUNS runs
  local t=() i _s _e
  for ((i = 0; i < RUNS; i++)); do
    _s=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; return 1; }; _e=$(date +%s%N)
    t+=($(( (_e - _s) / 1000000 )))
  done
  printf '%s\n' "${t[@]}" | median_s
}

# The medians of two commands run in turns (A, B, A, B, ...), $RUNS runs each, as
# "MEDIAN_A MEDIAN_B" in seconds: a slow minute of the machine weighs on both sides of
# the ratio alike. A failing run fails the bench.
bench_pair() { # A B ARGS...
  local a=$1 b=$2 i _s _e ta=() tb=()
  shift 2
  for ((i = 0; i < RUNS; i++)); do
    _s=$(date +%s%N); "$a" "$@" >/dev/null 2>&1 || { echo "FAILED: $a $*" >&2; return 1; }; _e=$(date +%s%N)
    ta+=($(( (_e - _s) / 1000000 )))
    _s=$(date +%s%N); "$b" "$@" >/dev/null 2>&1 || { echo "FAILED: $b $*" >&2; return 1; }; _e=$(date +%s%N)
    tb+=($(( (_e - _s) / 1000000 )))
  done
  printf '%s %s\n' "$(printf '%s\n' "${ta[@]}" | median_s)" "$(printf '%s\n' "${tb[@]}" | median_s)"
}
# The medians of commands run in turns (A, B, C, A, B, C, ...), $RUNS runs each, as
# "MEDIAN_A MEDIAN_B ..." in seconds. BENCH_SETUP, when set, is a command run before
# every timed run and not timed (a cleanup that is no tool's work). A failing run fails
# the bench. Output of the runs goes to /dev/null: nothing a run leaves behind holds
# the caller's $(…) open.
bench_turns() { # A B ...
  local i c _s _e n=$# t=() out=()
  for ((i = 0; i < RUNS; i++)); do
    for ((c = 1; c <= n; c++)); do
      if [ -n "${BENCH_SETUP:-}" ]; then
        $BENCH_SETUP >/dev/null 2>&1 || { echo "FAILED: $BENCH_SETUP" >&2; return 1; }
      fi
      _s=$(date +%s%N); "${!c}" >/dev/null 2>&1 || { echo "FAILED: ${!c}" >&2; return 1; }; _e=$(date +%s%N)
      t[c]+="$(((_e - _s) / 1000000)) "
    done
  done
  for ((c = 1; c <= n; c++)); do
    # shellcheck disable=SC2086 # one number a word
    out+=("$(printf '%s\n' ${t[c]} | median_s)")
  done
  echo "${out[*]}"
}
median_s() { sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]/1000}'; }

# Wall milliseconds of one run of "$@". A run that fails stops the benchmark with its
# output: a failure is never timed as a result.
ms() {
  local t0 t1 out
  t0=$(date +%s%N)
  out=$("$@" 2>&1) || { printf '%s: `%s` failed:\n%s\n' "$(basename "$0")" "$*" "$out" >&2; exit 1; }
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000000))
}

# The median of the numbers on stdin, one a line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

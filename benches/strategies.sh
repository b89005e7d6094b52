#!/usr/bin/env bash
# Strategy benchmark (needs root, sshd, nginx, php-fpm, Debian's Laravel, MariaDB, Redis,
# supervisor; `bash tests/run.sh` installs them): wall time of a zero-downtime deploy to
# two web hosts + a worker split into remote commands, health checks in flight and
# runbook's own share, and the time from a failed post-deploy health check to the
# previous release on every host. RUNS (default 5) of each, on
#   FLEET=prod    the production-shaped fleet (tests/support/prod.rs: separate hosts,
#                 one MariaDB, Redis, a supervised worker, the balancer on its own host)
#   FLEET=shared  the older fleet of tests/strategies.rs (three sshd on one disk)
#   FLEET=both    (default) one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${FLEET:-both}" in
  prod) filter=strategies::bench_prod_fleet_ ;;
  shared) filter=strategies::bench_zero_downtime_ ;;
  both) filter=strategies::bench_ ;;
  *) echo "FLEET is prod, shared or both" >&2; exit 2 ;;
esac
cargo build --release --locked -q
RUNS=${RUNS:-5} cargo test --release --locked -q --test integration \
  "$filter" -- --ignored --nocapture --test-threads=1 2>&1 |
  grep -E '^(RESULT|zero-downtime|failed health check|production-shaped fleet \()'

#!/usr/bin/env bash
# Strategy benchmark on the test fleet (needs root, sshd, nginx, php-fpm, Debian's Laravel;
# `bash tests/run.sh` installs them): wall time of a zero-downtime deploy to two web hosts
# split into remote commands vs everything else, and the time from a failed post-deploy
# health check to the previous release serving again. RUNS (default 5) of each.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q
RUNS=${RUNS:-5} cargo test --release --locked -q --test integration \
  strategies::bench_ -- --ignored --nocapture 2>&1 | grep -E '^(RESULT|zero-downtime)'

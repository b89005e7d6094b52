#!/usr/bin/env bash
# The randomised fault trials with more repetitions than CI runs (FAULT_TRIALS, default
# 100; FAULT_SEED picks another sequence of signal timings). Needs what the tests need
# (`bash tests/run.sh` installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
# The trials' summary lines, then cargo's own exit status: a failed trial fails the run.
rc=0
out=$(FAULT_TRIALS=${FAULT_TRIALS:-100} cargo test --locked -q --test integration -- \
  faults::two_deploys prod::signals prod::after_a_sigkill --nocapture --test-threads=1 2>&1) || rc=$?
grep -E '^(concurrent deploys|signals|sigkill of [a-z-]*):|panicked|FAILED' <<<"$out" || echo "faults.sh: no trial summary in the output" >&2
exit "$rc"

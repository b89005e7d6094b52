//! Integration tests through the real binary. One test binary; one file per feature.

mod support;
// Short paths for the support code most tests use.
use support::{fleet, harness, receivers, web};

mod alerts; // the seed's Prometheus alert rules, checked and unit-tested by promtool
mod backup; // backups on the local transport: round trip, database, safety, pruning, a full disk
mod canary; // the canary judged on real traffic (the access log), sticky cohorts, the allowlist
mod check; // `runbook check`: compile everything, touch nothing
mod ci; // CI mode, the audit log, sharding, shell completions, the shipped workflows
mod errors; // the exact bytes of script error messages
mod faults; // faults and hostile input around a deploy (randomised trials, fuzzed archives)
mod firstday; // the first day on fresh servers: .env from CI secrets, the seed's SSH secrets, adopting
mod governance; // who may deploy, and DORA figures from the audit log
mod hardening; // the small holes: multi-line secrets, terminal escapes, SMTP without TLS, redirects
mod health; // health checks against real local servers, each failure with a report to act on
mod hooks; // hooks on the strategies' named steps: [[hooks]] and steps::before/replace/skip, on_failure's imports
mod inventory; // inventory errors and `runbook hosts`
mod laravel; // releases, locks and artisan on the sshd fleet with the real Laravel app
mod layers; // the crate's modules import only their own layer or below, without cycles
mod locks; // the deploy lock across hosts with their own lock directories; `runbook unlock`
mod notify; // notifications and metrics against real receivers; secrets never in any output
mod observability; // real Prometheus + Pushgateway + mtail: deploy metrics, askproai_http_* per pool, NaN
mod oncall; // the on-call surface: list, the backup runbook, doc types, REPL display
mod prod; // the production-shaped fleet: separate hosts, one MariaDB, supervised workers, OPcache
mod readme; // every ```rhai block of the README passes `runbook check`
mod remote_commands; // what a remote command exposes and whether it can still be stopped
mod rollout; // runbook rollout status|pause|resume|promote|abort from a second process
mod run; // `runbook run`: arguments, hosts, dry-run, JSON events, secrets, confirmation
mod secrets; // secrets planted everywhere appear in no byte of any output
mod signals; // Ctrl-C / SIGTERM: the running command dies, the failure path runs, exit 130
mod ssh; // the SSH transport against real sshd processes on loopback
mod status; // runbook status, releases, lock status|freeze|thaw on the production-shaped fleet
mod strategies; // the shipped strategies end to end under load, on the shared-disk topology
mod streaming; // transfers prepared once and sent at once; bounded output capture

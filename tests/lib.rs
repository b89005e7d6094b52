//! Integration tests through the real binary. One test binary; one file per feature.

mod harness;
mod support;

mod alerts; // the seed's Prometheus alert rules, checked and unit-tested by promtool
mod backup;
mod canary; // the canary judged on real traffic (the access log), sticky cohorts, the allowlist
mod check;
mod ci;
mod errors;
mod faults;
mod firstday;
mod fleet;
mod governance;
mod hardening;
mod health;
mod hooks; // hooks on the strategies' named steps: [[hooks]] and steps::before/replace/skip, on_failure's imports
mod inventory;
mod laravel;
mod locks;
mod notify;
mod observability; // real Prometheus + Pushgateway + mtail: deploy metrics, askproai_http_* per pool, NaN
// The on-call surface: list, the backup runbook, doc types, REPL display, honest errors.
mod oncall;
mod prod;
mod readme;
mod receivers;
mod remote_commands;
mod rollout; // runbook rollout status|pause|resume|promote|abort from a second process
mod run;
mod secrets;
mod signals;
mod ssh;
mod status; // runbook status, releases, lock status|freeze|thaw on the production-shaped fleet
mod strategies;
mod web;

//! Integration tests through the real binary. One test binary; one file per feature.

mod harness;

mod backup;
mod check;
mod ci;
mod errors;
mod faults;
mod firstday;
mod fleet;
mod governance;
mod health;
mod inventory;
mod laravel;
mod notify;
mod readme;
mod receivers;
mod run;
mod secrets;
mod signals;
mod ssh;
mod strategies;
mod web;

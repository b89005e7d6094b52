//! Integration tests through the real binary. One test binary; one file per feature.

mod harness;

mod check;
mod errors;
mod fleet;
mod inventory;
mod laravel;
mod readme;
mod run;
mod signals;
mod ssh;
mod web;

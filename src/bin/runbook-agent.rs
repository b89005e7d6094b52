//! `runbook-agent`: the part of runbook that runs on an SSH host so that a backup stays
//! there (see `runbook::backup::agent` for why, `runbook::backup::serve` for what it does).
//! runbook uploads and starts it; it is not meant to be run by hand.

fn main() {
    std::process::exit(runbook::backup::serve::main(std::env::args()));
}

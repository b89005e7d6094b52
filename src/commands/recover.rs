//! `runbook recover`: what a run that died (SIGKILL, OOM, the runner's network gone) left
//! on the hosts, read from the hosts alone — its lock and the progress record inside it —
//! and the fleet brought back to one whole release: the release the dead run had
//! verified everywhere, else the one it started from; maintenance mode it turned on
//! lifted; its lock and lock temporaries removed; all of it audited (`recovered`).

use crate::cli::{Global, RecoverArgs};
use crate::error::Error;

pub(crate) fn run(global: &Global, args: &RecoverArgs) -> Result<(), Error> {
    let (_rt, session, env) =
        super::fleet_command(global, args.env.as_deref(), args.yes, "recover")?;
    let clock = std::time::Instant::now();
    let opts = crate::recovery::Options {
        wait: args.wait,
        kill: args.kill,
    };
    let result = crate::recovery::recover_with(&session.effects, &env, &session.info.id, &opts);
    let word = match &result {
        Ok(true) => "recovered",
        Ok(false) => "success",
        Err(_) => "failed",
    };
    let mut record = super::audit_record(&session, "recover", "", word, clock.elapsed());
    if let Err(e) = &result {
        record.error = Some(e.to_string());
    }
    super::write_audit(&session, &record, true);
    session.effects.close();
    result.map(drop).map_err(|e| Error::Message(e.to_string()))
}

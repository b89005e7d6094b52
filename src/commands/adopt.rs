//! `runbook adopt`: take over a server another tool deployed (Deployer's `releases/1..N`,
//! a `current` that is a real directory). Its releases become rollback targets that
//! cleanup keeps; a `current` directory becomes a release behind a link while the site
//! keeps serving. Deploys refuse such a fleet until it is adopted.

use crate::cli::AdoptArgs;
use crate::cli::Global;
use crate::effects::Target;
use crate::error::Error;
use crate::output::Level;

pub(crate) fn run(global: &Global, args: &AdoptArgs) -> Result<(), Error> {
    let (_rt, session, env) = super::fleet_command(global, args.env.as_deref(), args.yes, "adopt")?;
    let targets: Vec<Target> = env.hosts.iter().cloned().map(Target::Host).collect();
    let output = session.effects.output().clone();
    let clock = std::time::Instant::now();
    let result = crate::release::adopt(&session.effects, &targets, &session.info.actor);
    let word = if result.is_ok() { "success" } else { "failed" };
    let mut record = super::audit_record(&session, "adopt", "", word, clock.elapsed());
    match &result {
        Ok(done) => {
            for (host, lines) in done {
                if lines.is_empty() {
                    output.log(Level::Info, format!("{host}: nothing to adopt"));
                }
                for line in lines {
                    output.log(Level::Info, format!("{host}: {line}"));
                }
            }
        }
        Err(e) => record.error = Some(e.message.clone()),
    }
    super::write_audit(&session, &record, true);
    session.effects.close();
    result.map(drop).map_err(|e| Error::Message(e.message))
}

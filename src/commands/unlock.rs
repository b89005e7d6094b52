//! `runbook unlock`: remove a deploy lock left behind by a run that died. With `--stale`
//! (the safe default for people) a live lock — heartbeat within the TTL — is refused.

use super::{SessionConfig, runtime, session};
use crate::cli::{Global, UnlockArgs};
use crate::effects::Target;
use crate::error::Error;
use crate::output::{Event, Kind, Level};
use crate::project::Project;

pub fn run(global: &Global, args: &UnlockArgs) -> Result<(), Error> {
    let project = Project::load(global.config.as_deref())?;
    let env = project.env(args.env.as_deref())?;
    if !args.stale && env.protected && !args.yes {
        return Err(Error::NotConfirmed {
            env: env.name.clone(),
        });
    }
    let rt = runtime()?;
    let session = session(
        &rt,
        SessionConfig::for_env(&project.inventory, &env, "unlock", global.verbosity()),
    );
    let targets: Vec<Target> = env.hosts.iter().cloned().map(Target::Host).collect();
    let stale = args.stale.then_some(crate::lock::DEFAULT_TTL);
    let output = session.effects.output().clone();
    let mut refused = 0;
    for (host, result) in crate::lock::unlock(&session.effects, &targets, stale) {
        match result {
            Ok(what) => output.emit(Event::new(Kind::Lock).host(&host).message(what)),
            Err(why) => {
                refused += 1;
                output.log(Level::Error, format!("{host}: {why}"));
            }
        }
    }
    session.effects.close();
    if refused > 0 {
        return Err(Error::CheckFailed { count: refused });
    }
    Ok(())
}

//! `runbook disconnect`: the ssh master connections `[ssh] persist` keeps open between
//! invocations, ended.

use crate::cli::{DisconnectArgs, Global};
use crate::error::Error;

/// `runbook disconnect`: ends the master connections `[ssh] persist` kept open, every one
/// or those of one environment's hosts.
pub(crate) fn run(global: &Global, args: &DisconnectArgs) -> Result<(), Error> {
    let hosts = match &args.env {
        Some(name) => {
            let project = crate::project::Project::load(global.config.as_deref())?;
            Some(project.env(Some(name))?.hosts.clone())
        }
        None => None,
    };
    let ended = crate::transport::ssh::persist::disconnect(hosts.as_deref());
    super::print(&format!(
        "{ended} kept ssh connection{} ended",
        if ended == 1 { "" } else { "s" }
    ));
    Ok(())
}

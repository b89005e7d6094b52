//! `runbook hosts`: the resolved inventory of an environment.

use crate::cli::{Global, HostsArgs};
use crate::error::Error;
use crate::project::Project;

pub(crate) fn run(global: &Global, args: &HostsArgs) -> Result<(), Error> {
    let project = Project::load(global.config.as_deref())?;
    let env = project.env(args.env.as_deref())?;
    let hosts = env.select(args.role.as_deref()).map_err(|e| {
        Error::Inventory(crate::error::InventoryError::Invalid {
            path: project.inventory.path.clone(),
            key: format!("env.{}.roles", env.name),
            message: e.to_string(),
        })
    })?;
    if args.json {
        let rows: Vec<serde_json::Value> = hosts
            .iter()
            .map(|h| {
                serde_json::json!({
                    "name": h.name,
                    "address": h.address,
                    "port": h.port,
                    "user": h.user,
                    "transport": h.transport.as_str(),
                    "roles": h.roles,
                })
            })
            .collect();
        let doc = serde_json::json!({ "env": env.name, "protected": env.protected, "hosts": rows });
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        return crate::output::stdout(&text);
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.address.clone(),
                h.port.to_string(),
                h.user.clone().unwrap_or_else(|| "-".into()),
                h.transport.as_str().to_owned(),
                h.roles.join(","),
            ]
        })
        .collect();
    let protected = if env.protected { " (protected)" } else { "" };
    let mut text = format!(
        "environment {}{protected}: {} hosts\n",
        env.name,
        rows.len()
    );
    text.push_str(&crate::output::table(
        &["NAME", "ADDRESS", "PORT", "USER", "TRANSPORT", "ROLES"],
        &rows,
    ));
    crate::output::stdout(&text)
}

//! `runbook audit`: the local audit log, filtered.

use crate::audit;
use crate::cli::AuditArgs;
use crate::error::Error;

pub fn run(args: &AuditArgs) -> Result<(), Error> {
    let path = audit::local_path();
    let since = args
        .since
        .as_deref()
        .map(audit::since)
        .transpose()
        .map_err(|message| Error::BadOption {
            option: "--since".into(),
            message,
        })?;
    let records: Vec<audit::Record> = audit::read(&path)
        .into_iter()
        .filter(|r| args.env.as_ref().is_none_or(|e| &r.env == e))
        .filter(|r| args.host.as_ref().is_none_or(|h| r.hosts.contains(h)))
        .filter(|r| args.actor.as_ref().is_none_or(|a| &r.actor == a))
        .filter(|r| {
            since.is_none_or(|s| chrono::DateTime::parse_from_rfc3339(&r.ts).is_ok_and(|t| t >= s))
        })
        .collect();
    if args.json {
        for r in &records {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return Ok(());
    }
    if records.is_empty() {
        eprintln!("no matching runs in {}", path.display());
        return Ok(());
    }
    println!(
        "{:<20} {:<12} {:<12} {:<24} {:<8} {:<20} reason",
        "when (UTC)", "env", "actor", "script", "result", "hosts"
    );
    for r in &records {
        let when: String = r.ts.chars().take(19).collect::<String>().replace('T', " ");
        println!(
            "{:<20} {:<12} {:<12} {:<24} {:<8} {:<20} {}",
            when,
            r.env,
            r.actor,
            r.script,
            r.result,
            r.hosts.join(","),
            r.reason.clone().unwrap_or_default()
        );
    }
    Ok(())
}

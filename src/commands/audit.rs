//! `runbook audit`: the local audit log, filtered.

use crate::audit;
use crate::cli::{AuditArgs, Global};
use crate::error::Error;

/// The records kept on the environment's hosts (over their usual transport).
fn from_hosts(global: &Global, env_name: &str) -> Result<Vec<audit::Record>, Error> {
    use super::{SessionConfig, runtime, session};
    let project = crate::project::Project::load(global.config.as_deref())?;
    let env = project.env(Some(env_name))?;
    let rt = runtime()?;
    let session = session(
        &rt,
        SessionConfig::for_env(
            &project.inventory,
            &env,
            "audit",
            crate::output::Verbosity::Quiet,
        ),
    );
    let (records, unread) = audit::read_hosts(&session.effects, &env);
    for host in unread {
        eprintln!("warning: could not read the audit log on `{host}`");
    }
    session.effects.close();
    Ok(records)
}

pub(crate) fn run(global: &Global, args: &AuditArgs) -> Result<(), Error> {
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
    let mut all = audit::read(&path);
    if let Some(env) = &args.env {
        // A fresh CI runner has no local log: the hosts' logs tell what ran there.
        let none_here = !all.iter().any(|r| &r.env == env);
        if args.from_hosts || none_here {
            if none_here && !args.from_hosts {
                eprintln!(
                    "note: the local audit log has no run of `{env}`: reading the hosts' logs"
                );
            }
            all = audit::merge(all, from_hosts(global, env)?);
        }
    }
    let records: Vec<audit::Record> = all
        .into_iter()
        .filter(|r| args.env.as_ref().is_none_or(|e| &r.env == e))
        .filter(|r| args.host.as_ref().is_none_or(|h| r.hosts.contains(h)))
        .filter(|r| args.actor.as_ref().is_none_or(|a| &r.actor == a))
        .filter(|r| {
            since.is_none_or(|s| chrono::DateTime::parse_from_rfc3339(&r.ts).is_ok_and(|t| t >= s))
        })
        .collect();
    if args.stats {
        let window = args
            .since
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok())
            .map(|d| d.as_secs_f64() / 86400.0);
        print_stats(&audit::stats(&records, window), args.json);
        return Ok(());
    }
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

/// `runbook audit --stats`: per environment, the deploy metrics as a table or JSON.
fn print_stats(stats: &[audit::EnvStats], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(stats).unwrap_or_default()
        );
        return;
    }
    println!(
        "{:<14} {:>7} {:>4} {:>6} {:>11} {:>13} {:>14} {:>16} {:>9}",
        "env",
        "deploys",
        "ok",
        "failed",
        "rolled back",
        "failure rate",
        "lead time",
        "time to restore",
        "per week"
    );
    for s in stats {
        println!(
            "{:<14} {:>7} {:>4} {:>6} {:>11} {:>12.1}% {:>14} {:>16} {:>9.2}",
            s.env,
            s.deploys,
            s.successful,
            s.failed,
            s.rolled_back,
            s.change_failure_rate,
            s.lead_time_median_s.map_or("-".to_owned(), human),
            s.time_to_restore_mean_s.map_or("-".to_owned(), human),
            s.per_week
        );
        for (week, (ok, failures)) in &s.weeks {
            println!("  {week}: {ok} deployed, {failures} failed or rolled back");
        }
    }
}

/// `3725` → `1h 02m`.
fn human(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86400, (s % 86400) / 3600),
    }
}

//! `runbook status` (what is live where, and is anything half done) and `runbook
//! releases` (every release, where it is present and live): the first two questions at
//! 3 a.m., answered from the hosts alone. Both only read.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cli::{Global, StatusArgs};
use crate::error::Error;
use crate::status::{FleetStatus, HostStatus, age, bytes};

/// A read-only session on the environment (no confirmation: nothing changes).
fn open(
    global: &Global,
    env: Option<&str>,
    name: &str,
) -> Result<
    (
        tokio::runtime::Runtime,
        std::sync::Arc<crate::session::Session>,
        std::sync::Arc<crate::inventory::Environment>,
    ),
    Error,
> {
    let project = crate::project::Project::load(global.config.as_deref())?;
    let env = project.env(env)?;
    let rt = super::runtime()?;
    let session = super::session(
        &rt,
        super::SessionConfig::for_env(&project.inventory, &env, name, global.verbosity()),
    );
    Ok((rt, session, env))
}

pub(crate) fn status(global: &Global, args: &StatusArgs) -> Result<(), Error> {
    let (_rt, session, env) = open(global, args.env.as_deref(), "status")?;
    let s = crate::status::read(&session.effects, &env);
    session.effects.close();
    if args.json {
        super::print(&serde_json::to_string_pretty(&s).unwrap_or_default());
    } else {
        super::print(&render(&s));
    }
    if s.consistent {
        Ok(())
    } else {
        Err(Error::Message(format!(
            "{} is not consistent: {} problem{} (each above, with what to run)",
            s.env,
            s.problems.len(),
            if s.problems.len() == 1 { "" } else { "s" }
        )))
    }
}

fn render(s: &FleetStatus) -> String {
    let mut out = String::new();
    let n = s.hosts.len();
    let head = match &s.live {
        Some(live) => {
            let first = s.hosts.iter().find(|h| &h.live == live);
            format!(
                "{}: {n} host{}, all serving {live}{}",
                s.env,
                if n == 1 { "" } else { "s" },
                first.map(describe_live).unwrap_or_default()
            )
        }
        None => format!("{}: {n} host{}", s.env, if n == 1 { "" } else { "s" }),
    };
    out.push_str(&head);
    out.push('\n');
    let header = [
        "HOST",
        "ROLES",
        "LIVE",
        "REF",
        "AGE",
        "PREVIOUS GOOD",
        "LOCK",
        "MAINT",
        "PHP-FPM",
        "WORKERS",
        "DISK FREE",
    ];
    let rows: Vec<Vec<String>> = s.hosts.iter().map(row).collect();
    out.push_str(&crate::output::table(&header, &rows));
    if let Some(t) = &s.rollback_target {
        let _ = writeln!(out, "rollback target: {t}");
    }
    for note in &s.notes {
        let _ = writeln!(out, "· {note}");
    }
    if s.consistent {
        let _ = writeln!(out, "✓ consistent ({} ms)", s.took_ms);
    } else {
        for p in &s.problems {
            let _ = writeln!(out, "✗ {}\n    → {}", p.what, p.fix);
        }
        let _ = writeln!(
            out,
            "✗ not consistent: {} problem{} ({} ms)",
            s.problems.len(),
            if s.problems.len() == 1 { "" } else { "s" },
            s.took_ms
        );
    }
    out
}

fn describe_live(h: &HostStatus) -> String {
    let mut parts = Vec::new();
    if let Some(r) = &h.live_ref {
        parts.push(format!("ref {r}"));
    }
    if let Some(c) = &h.live_commit {
        parts.push(c.chars().take(12).collect());
    }
    if let Some(by) = &h.live_by {
        parts.push(format!("by {by}"));
    }
    if let Some(a) = h.live_age_s {
        parts.push(format!("{} ago", age(a)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

fn row(h: &HostStatus) -> Vec<String> {
    let dash = || "-".to_owned();
    if let Some(e) = &h.unreachable {
        let first = e.lines().next().unwrap_or("").to_owned();
        return vec![
            h.host.clone(),
            h.roles.join(","),
            format!("UNREACHABLE: {first}"),
        ];
    }
    if !h.gets_releases {
        return vec![
            h.host.clone(),
            h.roles.join(","),
            "(gets no releases)".to_owned(),
        ];
    }
    let live = if h.live.is_empty() {
        "(none)".to_owned()
    } else if h.live_bad {
        format!("{} (bad)", h.live)
    } else {
        h.live.clone()
    };
    let lock = match &h.lock {
        Some(l) if l.dead => format!("DEAD {} ({})", l.actor, l.run),
        Some(l) => format!(
            "{} {}s",
            l.actor,
            l.heartbeat_age.map_or("?".to_owned(), |a| a.to_string())
        ),
        None if h.freeze.is_some() => "frozen".to_owned(),
        None => dash(),
    };
    let fpm = match (&h.serves, &h.serves_note) {
        (Some(s), _) if *s == h.live => "same".to_owned(),
        (Some(s), _) => format!("STALE {s}"),
        (None, Some(n)) if n.starts_with("no url") => dash(),
        (None, _) => "?".to_owned(),
    };
    let disk = match (h.free_bytes, h.need_bytes) {
        (Some(f), Some(n)) if f < n => format!("{} (LOW, needs {})", bytes(f), bytes(n)),
        (Some(f), _) => bytes(f),
        _ => dash(),
    };
    vec![
        h.host.clone(),
        h.roles.join(","),
        live,
        h.live_ref.clone().unwrap_or_else(dash),
        h.live_age_s.map_or_else(dash, age),
        h.previous_good.clone().unwrap_or_else(dash),
        lock,
        if h.maintenance { "ON" } else { "off" }.to_owned(),
        fpm,
        h.workers.map_or_else(dash, |w| w.to_string()),
        disk,
    ]
}

/// One release as `runbook releases` shows it.
#[derive(Debug, serde::Serialize)]
struct ReleaseRow {
    name: String,
    git_ref: Option<String>,
    commit: Option<String>,
    by: Option<String>,
    created_at: Option<String>,
    bad_on: Vec<String>,
    present_on: Vec<String>,
    incomplete_on: Vec<String>,
    live_on: Vec<String>,
}

/// `runbook status releases` as a table: one row per release, the hosts that did not
/// answer below it; "all" when every host that answered (`reached`) is meant.
fn releases_table(rows: &[ReleaseRow], unreachable: &[String], reached: usize) -> String {
    let hosts = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else if v.len() == reached && reached > 1 {
            "all".to_owned()
        } else {
            v.join(",")
        }
    };
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut present = hosts(&r.present_on);
            if !r.incomplete_on.is_empty() {
                let _ = write!(present, " (incomplete: {})", r.incomplete_on.join(", "));
            }
            vec![
                r.name.clone(),
                r.git_ref.clone().unwrap_or_else(|| "-".into()),
                r.commit
                    .as_deref()
                    .map_or("-".into(), |c| c.chars().take(12).collect()),
                r.by.clone().unwrap_or_else(|| "-".into()),
                r.created_at.clone().unwrap_or_else(|| "(adopted)".into()),
                if r.bad_on.is_empty() {
                    "-".into()
                } else {
                    format!("BAD on {}", hosts(&r.bad_on))
                },
                hosts(&r.live_on),
                present,
            ]
        })
        .collect();
    let mut out = crate::output::table(
        &[
            "RELEASE",
            "REF",
            "COMMIT",
            "BY",
            "CREATED",
            "BAD",
            "LIVE ON",
            "PRESENT ON",
        ],
        &table_rows,
    );
    for u in unreachable {
        let _ = writeln!(out, "✗ did not answer: {u}");
    }
    out
}

pub(crate) fn releases(global: &Global, args: &StatusArgs) -> Result<(), Error> {
    let (_rt, session, env) = open(global, args.env.as_deref(), "releases")?;
    let targets: Vec<crate::effects::Target> = env
        .hosts
        .iter()
        .cloned()
        .map(crate::effects::Target::Host)
        .collect();
    let lists = crate::release::lists(&session.effects, &targets);
    session.effects.close();
    let mut rows: BTreeMap<String, ReleaseRow> = BTreeMap::new();
    let mut unreachable = Vec::new();
    for (t, l) in targets.iter().zip(&lists) {
        let host = t.name().to_owned();
        let l = match l {
            Ok(l) => l,
            Err(e) => {
                unreachable.push(format!("{host}: {}", e.to_string().trim()));
                continue;
            }
        };
        for r in l {
            let row = rows.entry(r.name.clone()).or_insert_with(|| ReleaseRow {
                name: r.name.clone(),
                git_ref: None,
                commit: None,
                by: None,
                created_at: None,
                bad_on: Vec::new(),
                present_on: Vec::new(),
                incomplete_on: Vec::new(),
                live_on: Vec::new(),
            });
            if let Some(m) = &r.meta {
                row.git_ref.get_or_insert_with(|| m.git_ref.clone());
                row.commit.get_or_insert_with(|| m.commit.clone());
                row.by.get_or_insert_with(|| m.by.clone());
                row.created_at.get_or_insert_with(|| m.created_at.clone());
            }
            if r.state == "complete" {
                row.present_on.push(host.clone());
            } else {
                row.incomplete_on.push(format!("{host} ({})", r.state));
            }
            if r.bad {
                row.bad_on.push(host.clone());
            }
            if r.live {
                row.live_on.push(host.clone());
            }
        }
    }
    // Newest first, by when runbook made them (adopted releases have no date: oldest).
    let mut rows: Vec<ReleaseRow> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        (b.created_at.as_deref().unwrap_or(""), &b.name)
            .cmp(&(a.created_at.as_deref().unwrap_or(""), &a.name))
    });
    let reached = targets.len() - unreachable.len();
    if args.json {
        let doc = serde_json::json!({
            "env": env.name,
            "releases": rows,
            "unreachable": unreachable,
        });
        super::print(&serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        super::print(&releases_table(&rows, &unreachable, reached));
    }
    if unreachable.is_empty() {
        Ok(())
    } else {
        Err(Error::Message(format!(
            "{} of {} hosts did not answer (their releases are not listed)",
            unreachable.len(),
            targets.len()
        )))
    }
}

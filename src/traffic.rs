//! The balancer's traffic split (`vars.traffic`) as the runtime itself needs it: who set
//! it, and putting every request back on the stable pool after a run that died while it
//! had moved traffic (a blue-green switch between its two balancer steps, a canary at
//! 25%). Scripts move traffic with `stdlib/traffic.rhai` (`traffic::set`); this module
//! reads and writes the same file format: a first line naming the run and the share,
//!
//! ```text
//! # written by runbook (run <id>): <percent>% of cohorts to the staged release
//! split_clients "<cohort key>" $runbook_pool { * stable; }
//! ```

use std::sync::Arc;

use crate::effects::{Effects, Target};
use crate::inventory::{Environment, Host};
use crate::transport::{CommandSpec, Program};

/// The balancer host and how its traffic file is written, tested and loaded.
pub(crate) struct Balancer {
    pub host: Arc<Host>,
    pub file: String,
    test: Vec<String>,
    reload: Vec<String>,
}

/// What the first line of a traffic file says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub run: String,
    pub percent: u32,
}

/// Why `vars.traffic` names no balancer that can be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BalancerError {
    #[error("vars.traffic of `{env}` needs `host` and `file`")]
    Incomplete { env: String },
    #[error("vars.traffic.host `{host}` is not a host of `{env}`")]
    UnknownHost { host: String, env: String },
}

/// The environment's balancer, when `vars.traffic` names one (`Err` when it is
/// incomplete or names no host of the environment).
pub(crate) fn balancer(env: &Environment) -> Option<Result<Balancer, BalancerError>> {
    let t = env.vars.get("traffic")?;
    let text = |k: &str| t.get(k).and_then(toml::Value::as_str).map(str::to_owned);
    let argv = |k: &str, default: &[&str]| -> Vec<String> {
        t.get(k).and_then(toml::Value::as_array).map_or_else(
            || default.iter().map(|s| (*s).to_owned()).collect(),
            |a| {
                a.iter()
                    .filter_map(toml::Value::as_str)
                    .map(str::to_owned)
                    .collect()
            },
        )
    };
    let (Some(name), Some(file)) = (text("host"), text("file")) else {
        return Some(Err(BalancerError::Incomplete {
            env: env.name.clone(),
        }));
    };
    let Some(host) = env.hosts.iter().find(|h| h.name == name) else {
        return Some(Err(BalancerError::UnknownHost {
            host: name,
            env: env.name.clone(),
        }));
    };
    Some(Ok(Balancer {
        host: host.clone(),
        file,
        test: argv("test", &["nginx", "-t"]),
        reload: argv("reload", &["nginx", "-s", "reload"]),
    }))
}

/// Reads the first line of a traffic file.
pub(crate) fn parse(text: &str) -> Option<Split> {
    let line = text.lines().next()?;
    let rest = line.strip_prefix("# written by runbook (run ")?;
    let (run, rest) = rest.split_once("): ")?;
    let (percent, _) = rest.split_once('%')?;
    Some(Split {
        run: run.to_owned(),
        percent: percent.trim().parse().ok()?,
    })
}

/// The cohort key of a traffic file (`split_clients "<key>"`).
fn cohort_key(text: &str) -> Option<&str> {
    let at = text.find("split_clients \"")? + "split_clients \"".len();
    let len = text[at..].find('"')?;
    Some(&text[at..at + len])
}

/// Every request on the stable pool, written by run `run`.
pub(crate) fn stable_text(key: &str, run: &str) -> String {
    format!(
        "# written by runbook (run {run}): 0% of cohorts to the staged release\nsplit_clients \"{key}\" $runbook_pool {{ * stable; }}\n"
    )
}

/// Puts every request back on stable if run `dead` set the split last and left traffic
/// on the staged pool. Returns the share it had left there (`None`: nothing to do).
pub(crate) fn reset_if_left_by(
    effects: &Effects,
    env: &Environment,
    dead: &str,
    run: &str,
) -> Result<Option<u32>, String> {
    let Some(lb) = balancer(env) else {
        return Ok(None);
    };
    let lb = lb.map_err(|e| e.to_string())?;
    let target = Target::Host(lb.host.clone());
    let name = lb.host.name.clone();
    let mut read = CommandSpec::script(
        "traffic: read the split",
        r#"[ ! -e "$1" ] || cat -- "$1""#,
        &[&lb.file],
    );
    read.read = true;
    read.quiet = true;
    let text = effects
        .run(&target, &read)
        .map_err(|e| format!("{name}: cannot read the traffic file: {e}"))?
        .stdout;
    let Some(split) = parse(&text) else {
        return Ok(None);
    };
    if split.run != dead || split.percent == 0 {
        return Ok(None);
    }
    let key = cohort_key(&text).unwrap_or("$runbook_cohort");
    let mut write = CommandSpec::script(
        "traffic: every request to stable",
        r#"cp -p "$1" "$1.previous" 2>/dev/null || true; cat > "$1.new" && mv "$1.new" "$1""#,
        &[&lb.file],
    );
    write.stdin = Some(stable_text(key, run).into_bytes());
    effects
        .run(&target, &write)
        .map_err(|e| format!("{name}: cannot write the traffic file: {e}"))?;
    let mut check_config = CommandSpec::new(Program::Argv(lb.test.clone()));
    check_config.tolerate = true;
    check_config.quiet = true;
    let checked = effects
        .run(&target, &check_config)
        .map_err(|e| format!("{name}: cannot test the balancer's configuration: {e}"))?;
    if checked.code != 0 {
        let back = CommandSpec::script(
            "traffic: put the previous split back",
            r#"[ ! -e "$1.previous" ] || mv "$1.previous" "$1""#,
            &[&lb.file],
        );
        let _ = effects.run(&target, &back);
        return Err(format!(
            "{name}: nginx refused the traffic file {} (the previous one is back): {}",
            lb.file,
            checked.stderr.trim()
        ));
    }
    effects
        .run(&target, &CommandSpec::new(Program::Argv(lb.reload.clone())))
        .map_err(|e| format!("{name}: cannot reload the balancer: {e}"))?;
    Ok(Some(split.percent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_says_who_set_the_split_and_how_much() {
        let text = "# written by runbook (run 2026-a-b): 25% of cohorts to the staged release\nsplit_clients \"$request_id\" $runbook_split { 25% next; * stable; }\n";
        assert_eq!(
            parse(text),
            Some(Split {
                run: "2026-a-b".into(),
                percent: 25
            })
        );
        assert_eq!(cohort_key(text), Some("$request_id"));
        assert_eq!(
            parse("split_clients \"$x\" $runbook_pool { * stable; }\n"),
            None
        );
        let stable = stable_text("$runbook_cohort", "r2");
        assert_eq!(
            parse(&stable),
            Some(Split {
                run: "r2".into(),
                percent: 0
            })
        );
        assert_eq!(cohort_key(&stable), Some("$runbook_cohort"));
    }
}

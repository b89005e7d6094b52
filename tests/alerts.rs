//! The seed's alert rules (`examples/prometheus/alerts.yml`): valid for Prometheus, and each
//! alert fires on a series that should fire it and stays quiet on one that should not
//! (`promtool test rules examples/prometheus/alerts_test.yml`).
//!
//! promtool comes with Debian's `prometheus` (tests/run.sh installs it). Where it is
//! missing the tests are skipped with a message — except under `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/prometheus")
}

/// `promtool`, or `None` (with a message) where it is not installed.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("promtool is not installed under CI=true: apt-get install prometheus")
        }
        None => {
            eprintln!("SKIPPED: promtool not found (apt-get install prometheus)");
            None
        }
    }
}

fn promtool_says(args: &[&str]) -> String {
    let Some(bin) = promtool() else {
        return String::new();
    };
    let out = Command::new(&bin)
        .args(args)
        .current_dir(dir())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed:\n{text}",
        args.join(" ")
    );
    text
}

fn yaml(name: &str) -> yaml_rust2::Yaml {
    let text = std::fs::read_to_string(dir().join(name)).expect("the file is shipped");
    yaml_rust2::YamlLoader::load_from_str(&text)
        .expect("valid YAML")
        .remove(0)
}

/// Every alert name in alerts.yml.
fn alerts() -> Vec<String> {
    yaml("alerts.yml")["groups"]
        .as_vec()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_vec().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_check_rules() {
    let text = promtool_says(&["check", "rules", "alerts.yml"]);
    if !text.is_empty() {
        let n = alerts().len();
        assert!(
            text.contains(&format!("SUCCESS: {n} rules found")),
            "{text}"
        );
    }
}

#[test]
fn every_seed_alert_is_there_and_its_unit_tests_pass() {
    let names = alerts();
    for seed in [
        "DeploymentFailed",
        "HealthCheckFailing",
        "HighErrorRate",
        "SlowResponses",
        "QueueBacklog",
        "HighMemoryUsage",
        "HighDiskUsage",
        "SlowQueries",
        "FailedJobs",
    ] {
        assert!(
            names.iter().any(|n| n == seed),
            "no alert {seed} in {names:?}"
        );
    }
    // promtool does not notice an alert without a test: every alert must have an
    // evaluation where it fires (the other series of that test must then stay quiet).
    let tests = yaml("alerts_test.yml");
    let firing: Vec<&str> = tests["tests"]
        .as_vec()
        .into_iter()
        .flatten()
        .flat_map(|t| t["alert_rule_test"].as_vec().into_iter().flatten())
        .filter(|a| a["exp_alerts"].as_vec().is_some_and(|v| !v.is_empty()))
        .filter_map(|a| a["alertname"].as_str())
        .collect();
    for name in &names {
        assert!(
            firing.contains(&name.as_str()),
            "alert {name} has no promtool test that fires it"
        );
    }
    let text = promtool_says(&["test", "rules", "alerts_test.yml"]);
    assert!(text.is_empty() || text.contains("SUCCESS"), "{text}");
}

//! The on-call surface: `list`, the backup runbook, the API reference, the REPL's
//! display of hosts, honest errors, and output into a closed pipe.

use crate::harness::Test;

/// The repository's own project (runbook.toml and the shipped scripts/).
fn examples() -> Test {
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("runbook.toml");
    Test::bare().args(&["-c", &config.to_string_lossy()])
}

/// The column where `header` starts in the first line, and that every row has a cell
/// starting there (aligned columns).
#[track_caller]
fn column(table: &str, header: &str) -> usize {
    let first = table.lines().next().unwrap_or("");
    let at = first
        .find(header)
        .unwrap_or_else(|| panic!("no {header} in {first:?}"));
    for line in table.lines().skip(1) {
        let before = line.get(..at).unwrap_or("");
        assert!(
            before.ends_with("  ") || line.len() <= at,
            "{header} column not aligned in {line:?}\n{table}"
        );
    }
    at
}

#[test]
fn list_shows_every_shipped_script_with_purpose_and_arguments() {
    let out = examples().args(&["list"]).run();
    out.code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("SCRIPT"), "{}", out.stdout);
    let names: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "not sorted:\n{}", out.stdout);
    for name in [
        "deploy",
        "rollback",
        "emergency/stop-everything",
        "troubleshoot/db-check",
    ] {
        assert!(names.contains(&name), "{name} missing:\n{}", out.stdout);
    }
    let purpose = column(&out.stdout, "PURPOSE");
    let arguments = column(&out.stdout, "ARGUMENTS");
    let row = |name: &str| {
        *lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row {name}"))
    };
    let rollback = row("rollback");
    assert!(
        rollback[purpose..].starts_with("Rollback (the seed's eight steps)"),
        "{rollback}"
    );
    assert!(
        rollback[arguments..].contains("archive=BACKUP-NAME") && rollback.contains("to=RELEASE"),
        "{rollback}"
    );
    assert!(
        row("deploy").contains("ref=TAG|BRANCH|COMMIT"),
        "{}",
        row("deploy")
    );
    assert!(row("emergency/stop-everything").contains("emergency"));
    assert!(row("health-check").contains("read-only"));
    // Arguments only shown in a usage line still count.
    assert!(row("maintenance/archive-logs").contains("days=7 keep=30"));
}

#[test]
fn list_reads_any_project_and_says_when_a_script_has_no_description() {
    let t = Test::new()
        .file("scripts/plain.rhai", "let x = 1; // a trailing comment is no header\n")
        .file(
            "scripts/ops/flush.rhai",
            "//! Flush the cache: drops every key.\n//! Arguments: pattern=GLOB (default *).\n\nprint(1);\n",
        );
    let out = t.run_with(&["list"]);
    out.code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[1].starts_with("ops/flush "), "{}", out.stdout);
    assert!(
        lines[1].contains("Flush the cache") && lines[1].ends_with("pattern=GLOB"),
        "{}",
        out.stdout
    );
    assert!(
        lines[2].starts_with("plain ") && lines[2].contains("(no description)"),
        "{}",
        out.stdout
    );

    let json = t.run_with(&["list", "--json"]);
    json.code(0);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(v[0]["name"], "ops/flush");
    assert_eq!(v[0]["purpose"], "Flush the cache");
    assert_eq!(v[0]["arguments"][0], "pattern=GLOB");
    assert_eq!(v[1]["name"], "plain");
    assert!(v[1]["purpose"].is_null(), "{v}");
}

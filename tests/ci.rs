//! CI mode, the audit log, sharding, shell completions, and the shipped workflows.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::Test;

#[test]
fn github_actions_gets_groups_masks_annotations_and_a_summary() {
    let t = Test::new().file(
        "scripts/x.rhai",
        "let token = secret(\"RB_TOKEN\");\nstep(\"greet\", || local::run([\"echo\", \"token \" + token]));\nlocal::shell(\"echo broken >&2; exit 7\");\n",
    );
    let summary = t.path().join("summary.md");
    let t = t
        .args(&["run", "x", "-e", "dev", "--reason", "ci test"])
        .env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", summary.to_str().unwrap())
        .env("RB_TOKEN", "hunter2-token");
    let out = t.run();
    out.code(1);
    let all = format!("{}{}", out.stdout, out.stderr);
    // The secret appears exactly once: in the mask command, before anything else.
    assert_eq!(all.matches("hunter2-token").count(), 1, "{all}");
    assert!(
        out.stdout.starts_with("::add-mask::hunter2-token\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("::group::greet\n"), "{}", out.stdout);
    assert!(out.stdout.contains("::endgroup::\n"));
    assert!(
        out.stdout
            .contains("::error file=scripts/x.rhai,line=3,col=8::command failed on `local`"),
        "{}",
        out.stdout
    );
    let md = std::fs::read_to_string(summary).unwrap();
    assert!(
        md.contains("## runbook: scripts/x.rhai on `dev` — ❌ failed"),
        "{md}"
    );
    assert!(md.contains("| reason | ci test |"), "{md}");
    assert!(md.contains("| greet | ✅ ok |"), "{md}");
    assert!(!md.contains("hunter2"), "{md}");
}

#[test]
fn every_run_is_audited_with_its_outcome_and_audit_filters_them() {
    let t = Test::new()
        .file(
            "scripts/ok.rhai",
            "step(\"one\", || local::run([\"true\"]));",
        )
        .file("scripts/bad.rhai", "ssh::run(hosts(\"one\"), [\"false\"]);")
        .file("scripts/p.rhai", "local::run([\"true\"]);")
        .file("scripts/wait.rhai", "print(\"waiting\");\nsleep(300);\n");
    t.run_with(&["run", "ok", "-e", "dev", "--reason", "routine", "ref=v1"])
        .code(0);
    t.run_with(&["run", "bad", "-e", "dev"]).code(1);
    t.run_with(&["run", "p", "-e", "prod"]).code(2);
    let mut child = t
        .command()
        .args(["run", "wait", "-e", "dev"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "waiting");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "SIGTERM did not end the run");
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = t.run_with(&["audit", "--json"]);
    out.code(0);
    let records: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["script"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        [
            ("scripts/ok.rhai", "success"),
            ("scripts/bad.rhai", "failed"),
            ("scripts/p.rhai", "refused"),
            ("scripts/wait.rhai", "aborted")
        ]
    );
    let ok = &records[0];
    assert_eq!(ok["reason"], "routine");
    assert_eq!(ok["args"]["ref"], "v1");
    assert_eq!(ok["steps"][0]["name"], "one");
    assert_eq!(ok["script_sha256"].as_str().unwrap().len(), 64);
    assert_eq!(records[1]["hosts"], serde_json::json!(["a"]));
    assert!(
        records[1]["error"]
            .as_str()
            .unwrap()
            .contains("exited with code 1")
    );
    // The host the failed run touched has the record too.
    let host_log = std::fs::read_to_string(t.path().join("deploy/.runbook/audit.jsonl")).unwrap();
    assert!(host_log.contains("scripts/bad.rhai"), "{host_log}");

    let prod = t.run_with(&["audit", "--json", "--env", "prod"]);
    assert_eq!(prod.stdout.lines().count(), 1);
    let by_host = t.run_with(&["audit", "--json", "--host", "a"]);
    assert_eq!(by_host.stdout.lines().count(), 1);
    let none = t.run_with(&["audit", "--json", "--actor", "nobody-at-all"]);
    assert_eq!(none.stdout, "");
    let table = t.run_with(&["audit", "--since", "1h"]);
    table.code(0).stdout_has("scripts/wait.rhai");
}

#[test]
fn shards_split_a_role_across_ci_jobs_exactly_once() {
    let hosts: Vec<String> = (1..=7).map(|i| format!("w{i} = \"localhost\"")).collect();
    let t = Test::bare()
        .file(
            "runbook.toml",
            &format!("[app]\nname = \"t\"\ndeploy_path = \"d\"\n[env.dev]\ntransport = \"local\"\nhosts = {{ {} }}\n", hosts.join(", ")),
        )
        .file("scripts/h.rhai", "print(hosts().names);");
    let mut seen: Vec<String> = Vec::new();
    for i in 1..=3 {
        let out = t.run_with(&["run", "h", "-e", "dev", "-q", "--shard", &format!("{i}/3")]);
        out.code(0);
        let names: Vec<String> = serde_json::from_str(out.stdout.trim()).unwrap();
        seen.extend(names);
    }
    seen.sort();
    assert_eq!(seen, ["w1", "w2", "w3", "w4", "w5", "w6", "w7"]);
    let out = t.run_with(&[
        "run", "h", "-e", "dev", "-q", "--hosts", "w[", "--shard", "4/3",
    ]);
    out.code(2).stderr_has("--shard 4/3: expected I/N");
    let out = t.run_with(&["run", "h", "-e", "dev", "-q", "--hosts", "w?"]);
    out.code(0);
}

#[test]
fn completions_and_the_man_page_are_generated_from_the_cli() {
    let t = Test::bare();
    let bash = t.run_with(&["completions", "bash"]);
    bash.code(0)
        .stdout_has("_runbook()")
        .stdout_has("--dry-run");
    t.run_with(&["completions", "zsh"])
        .code(0)
        .stdout_has("#compdef runbook");
    let man = t.run_with(&["man"]);
    man.code(0).stdout_has(".TH runbook").stdout_has("audit");
}

fn yaml(path: &str) -> yaml_rust2::Yaml {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap()
        .remove(0)
}

#[test]
fn the_example_deploy_workflow_has_the_seed_inputs_and_runs_runbook() {
    let w = yaml("examples/github/deploy.yml");
    let inputs = &w["on"]["workflow_dispatch"]["inputs"];
    let options: Vec<&str> = inputs["environment"]["options"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|o| o.as_str())
        .collect();
    assert_eq!(options, ["staging", "production"]);
    for key in ["ref", "skip_tests", "reason"] {
        assert!(!inputs[key].is_badvalue(), "input {key} missing");
    }
    assert_eq!(inputs["skip_tests"]["type"].as_str(), Some("boolean"));
    assert_eq!(
        w["concurrency"]["group"].as_str(),
        Some("deploy-${{ inputs.environment }}")
    );
    let steps = w["jobs"]["deploy"]["steps"].as_vec().unwrap();
    let deploy = steps
        .iter()
        .find(|s| s["name"].as_str() == Some("Deploy"))
        .unwrap();
    let run = deploy["run"].as_str().unwrap();
    assert!(
        run.contains("runbook run")
            && run.contains("--yes")
            && run.contains("--reason")
            && run.contains("ref="),
        "{run}"
    );
    // Both scripts it can run are shipped.
    for script in ["deploy", "emergency-deploy"] {
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("scripts/{script}.rhai"))
                .exists()
        );
    }
}

#[test]
fn this_repository_ci_runs_fmt_clippy_and_the_readme_test_command() {
    let w = yaml(".github/workflows/ci.yml");
    let runs: Vec<&str> = w["jobs"]["test"]["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo fmt --all -- --check"))
    );
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo clippy") && r.contains("-D warnings"))
    );
    assert!(runs.iter().any(|r| r.contains("bash tests/run.sh")));
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    assert!(
        readme.contains("\nbash tests/run.sh\n"),
        "the README's test command changed"
    );
}

#[test]
fn the_checked_in_api_reference_is_current() {
    let out = Test::bare().run_with(&["doc", "--markdown"]);
    out.code(0);
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    assert!(
        out.stdout == checked_in,
        "docs/api.md is stale: regenerate it with `cargo run -- doc --markdown > docs/api.md`"
    );
}

#[test]
fn definitions_are_written_for_every_module() {
    let t = Test::bare();
    let dir = t.path().join("defs");
    t.run_with(&["definitions", dir.to_str().unwrap()]).code(0);
    for module in [
        "ssh", "release", "lock", "backup", "health", "notify", "artisan",
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{module}.d.rhai"))).unwrap();
        assert!(text.contains("fn "), "{module}: {text}");
    }
}

#[test]
fn init_scaffolds_without_overwriting() {
    let t = Test::bare().file("scripts/deploy.rhai", "// mine\n");
    let out = t.run_with(&["init"]);
    out.code(0)
        .stderr_has("kept     scripts/deploy.rhai")
        .stderr_has("created  runbook.toml");
    assert_eq!(
        std::fs::read_to_string(t.path().join("scripts/deploy.rhai")).unwrap(),
        "// mine\n"
    );
    assert!(t.path().join("scripts/health-check.rhai").exists());
    t.run_with(&["check"]).code(0);
}

#[test]
fn repl_actions_are_audited_and_host_logs_can_be_merged() {
    let t = Test::new();
    let out = t.repl(
        "dev",
        "let n = 40 + 2;\nssh::run(hosts(\"one\"), [\"true\"]);\nprint(n);\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("42"));
    let records = t.run_with(&["audit", "--json"]);
    let lines: Vec<serde_json::Value> = records
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", records.stdout);
    assert!(
        lines
            .iter()
            .all(|r| r["script"] == "repl" && r["result"] == "success")
    );
    assert_eq!(
        lines[1]["args"]["input"],
        "ssh::run(hosts(\"one\"), [\"true\"]);"
    );
    assert_eq!(lines[1]["hosts"], serde_json::json!(["a"]));
    // Without the local log, the host's own log still tells the story.
    std::fs::remove_file(t.path().join("audit.jsonl")).unwrap();
    let merged = t.run_with(&["audit", "--json", "-e", "dev", "--from-hosts"]);
    merged.code(0);
    assert_eq!(merged.stdout.lines().count(), 1, "{}", merged.stdout);
    assert!(merged.stdout.contains("ssh::run"));
}

#[test]
fn the_maintenance_workflow_schedules_the_seed_tasks_in_the_deploy_concurrency_group() {
    let w = yaml("examples/github/maintenance.yml");
    let crons: Vec<&str> = w["on"]["schedule"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|c| c["cron"].as_str())
        .collect();
    assert_eq!(crons.len(), 3);
    assert_eq!(
        w["concurrency"]["group"].as_str(),
        Some("deploy-production")
    );
    let runs: Vec<&str> = w["jobs"]["maintenance"]["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .collect();
    for script in [
        "maintenance/archive-logs",
        "maintenance/weekly-report",
        "maintenance/dr-test",
    ] {
        assert!(
            runs.iter().any(|r| r.contains(script)),
            "{script} is not scheduled"
        );
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("scripts/{script}.rhai"))
                .exists()
        );
    }
}

/// Every workflow file of the repository: ours and the ones we ship as examples.
fn workflow_files() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = [".github/workflows", "examples/github"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).into_iter().flatten())
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    files
}

/// A linter on PATH (tests/run.sh installs them), or `None` when it is missing (a
/// failure under `CI=true`).
fn linter(name: &str, version_flag: &str) -> Option<std::process::Command> {
    let found = std::process::Command::new(name)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{name} is missing under CI: tests/run.sh installs it with pip (a venv in target/ci-tools)"
        );
        eprintln!("SKIPPED: {name} not installed (bash tests/run.sh installs it)");
        return None;
    }
    Some(std::process::Command::new(name))
}

#[test]
fn every_workflow_passes_zizmor_and_actionlint() {
    let files = workflow_files();
    assert!(files.len() >= 3, "{files:?}");
    if let Some(mut zizmor) = linter("zizmor", "--version") {
        // Offline: no GitHub token, no network; every offline audit runs.
        let out = zizmor
            .arg("--offline")
            .arg("--no-progress")
            .args(&files)
            .env_remove("GH_TOKEN")
            .env_remove("GITHUB_TOKEN")
            .env("NO_COLOR", "1")
            .output()
            .expect("zizmor runs");
        assert!(
            out.status.success(),
            "zizmor found problems:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(mut actionlint) = linter("actionlint", "--version") {
        let out = actionlint
            .arg("-no-color")
            .args(&files)
            .output()
            .expect("actionlint runs");
        assert!(
            out.status.success(),
            "actionlint found problems:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn workflows_pass_inputs_through_env_pin_actions_and_read_only() {
    for path in workflow_files() {
        let rel = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let w = yaml(&rel);
        assert_eq!(
            w["permissions"]["contents"].as_str(),
            Some("read"),
            "{rel}: least permissions"
        );
        for (job, body) in w["jobs"].as_hash().unwrap() {
            for step in body["steps"].as_vec().unwrap() {
                if let Some(run) = step["run"].as_str() {
                    assert!(
                        !run.contains("${{"),
                        "{rel} {job:?}: an expression spliced into shell text: {run}"
                    );
                    assert!(
                        !run.contains("--git "),
                        "{rel}: compiles runbook from a URL on every run: {run}"
                    );
                }
                if let Some(uses) = step["uses"].as_str() {
                    let pin = uses.split_once('@').map_or("", |(_, p)| p);
                    assert!(
                        pin.len() == 40 && pin.chars().all(|c| c.is_ascii_hexdigit()),
                        "{rel}: {uses} is not pinned by commit"
                    );
                }
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("runbook-dev/runbook"),
            "{rel}: names a placeholder repository"
        );
    }
    // The deploy restores runbook from a cache keyed by its version and only builds on a miss.
    let w = yaml("examples/github/deploy.yml");
    let steps = w["jobs"]["deploy"]["steps"].as_vec().unwrap();
    let cache = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/cache@"))
        })
        .expect("a cache step");
    let key = cache["with"]["key"].as_str().unwrap();
    assert!(
        key.contains("RUNBOOK_VERSION") && key.contains("Cargo.lock"),
        "{key}"
    );
    let build = steps
        .iter()
        .find(|s| {
            s["run"]
                .as_str()
                .is_some_and(|r| r.contains("cargo install"))
        })
        .expect("a build step");
    assert!(
        build["if"]
            .as_str()
            .is_some_and(|c| c.contains("cache-hit")),
        "the build must run only on a cache miss"
    );
    // Our own CI keeps CI=true through sudo, or every "fail under CI" guard skips.
    let ci = yaml(".github/workflows/ci.yml");
    let tests = ci["jobs"]["test"]["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|s| s["run"].as_str())
        .find(|r| r.contains("tests/run.sh"))
        .unwrap();
    let keeps_ci = tests.contains("env CI=true")
        || tests
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("--preserve-env="))
            .any(|list| list.split(',').any(|v| v == "CI"));
    assert!(keeps_ci, "sudo drops CI: {tests}");
}

#[test]
fn the_repl_keeps_the_last_result_answers_meta_commands_and_keeps_secrets_out_of_history() {
    let t = Test::new()
        .env("RB_REPL_SECRET", "s3cr3t-value")
        .env("HOME", "/nonexistent-home");
    let out = t.repl("dev", "40 + 2\nlast + 1\n:hosts\n:help timestamp\nlet s = secret(\"RB_REPL_SECRET\");\nlet leak = \"s3cr3t-value\";\nlet x = 1;\n:quit\nprint(\"not reached\");\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("42\n43\n"), "{stdout}");
    assert!(
        stdout.contains("a ") && stdout.contains("local"),
        "{stdout}"
    );
    assert!(stdout.contains("timestamp() -> String"), "{stdout}");
    assert!(!stdout.contains("not reached"));
    // History sits next to the audit log (RUNBOOK_AUDIT_FILE's directory in tests).
    let history = std::fs::read_to_string(t.path().join("history")).unwrap();
    assert!(history.contains("let x = 1;"), "{history}");
    assert!(history.contains("last + 1"));
    assert!(
        history.contains("secret(\"RB_REPL_SECRET\")"),
        "naming a secret is fine: {history}"
    );
    assert!(
        !history.contains("s3cr3t-value"),
        "a secret value reached the history: {history}"
    );
}

/// Drives the REPL in a real terminal (tmux), as an engineer would.
#[test]
fn in_a_terminal_the_repl_completes_hints_and_survives_ctrl_c() {
    let t = Test::new();
    let Some(term) = t.repl_in_terminal("dev") else {
        return;
    };
    term.wait_for("dev>", 15);
    term.type_text("ssh::sh");
    term.press("Tab");
    term.wait_for("dev> ssh::shell", 10);
    term.type_text("(");
    term.wait_for("target: any, script: String", 10);
    // Ctrl-C clears the line; the REPL stays (and takes keys again at its new prompt).
    term.press("C-c");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while term.screen().matches("dev>").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no new prompt after Ctrl-C:\n{}",
            term.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    term.type_text("1 + 1");
    term.press("Enter");
    term.wait_for("2\n", 10);
    // Ctrl-C during a running command cancels it and returns to the prompt.
    term.type_text("local::run([\"sleep\", \"30\"]);");
    term.press("Enter");
    std::thread::sleep(Duration::from_millis(500));
    term.press("C-c");
    term.wait_for("interrupted", 10);
    term.type_text("40 + 2");
    term.press("Enter");
    term.wait_for("42", 10);
    term.press("C-d");
    term.wait_exit(10);
}

#[test]
fn the_repl_renders_per_host_rows_asks_before_changing_production_and_saves_a_script() {
    let t = Test::new();
    let input = "ssh::run(hosts(\"web\"), [\"echo\", \"same\"])\nssh::shell(hosts(\"web\"), \"echo $$\")\nfn twice(x) {\n  x * 2\n}\ntwice(21)\nlet y = ;\n:save scripts/saved.rhai\n:env prod\nprod\nlock::acquire(hosts());\nn\n";
    let out = t.repl("dev", input);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("a..b: ok, same output: same"), "{stdout}");
    assert!(
        stdout.contains("a  exit 0") && stdout.contains("b  exit 0"),
        "{stdout}"
    );
    assert!(stdout.contains("42"), "multi-line fn then a call: {stdout}");
    assert!(
        stderr.contains("syntax error"),
        "a syntax error is shown and the REPL goes on: {stderr}"
    );
    assert!(
        stdout.contains("saved 4 statements to scripts/saved.rhai"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not run"),
        "a protected change needs a yes: {stdout}"
    );
    assert!(!t.path().join("deploy/.runbook/lock").exists());
    t.run_with(&["check", "scripts/saved.rhai"]).code(0);
    let saved = std::fs::read_to_string(t.path().join("scripts/saved.rhai")).unwrap();
    assert!(
        saved.contains("fn twice(x)") && !saved.contains("let y = ;"),
        "{saved}"
    );
}

#[test]
fn the_repl_switches_dry_run_environments_runs_scripts_and_keeps_imports() {
    let t = Test::new()
        .file("stdlib/greet.rhai", "fn hi(who) { `hi ${who}` }\n")
        .file("scripts/say.rhai", "print(`said ${args.word}`);\n");
    let marker = t.path().join("made");
    let input = format!(
        ":dry on\nlocal::run([\"touch\", \"{m}\"]);\n:dry off\nlocal::run([\"echo\", \"hello from the last command\"]);\n:last\nimport \"greet\" as g;\ng::hi(\"there\")\n:run say word=ok\n:env prod\nprod\nprint(`now on ${{env.name}}`);\n",
        m = marker.display()
    );
    let out = t.repl("dev", &input);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("dry run on: nothing will be executed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[local] hello from the last command"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"hi there\""),
        "imports stay loaded: {stdout}"
    );
    assert!(stdout.contains("said ok"), "{stdout}");
    assert!(stdout.contains("now on prod"), "{stdout}");
    // The dry-run touch never ran.
    assert!(!marker.exists(), "a command ran with :dry on");
}

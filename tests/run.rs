//! `runbook run`: arguments, hosts, dry-run, JSON events, secrets, confirmation.

use crate::harness::Test;

#[test]
fn a_script_name_resolves_under_scripts_and_receives_its_arguments() {
    Test::new()
        .file(
            "scripts/hello.rhai",
            r"print(`${env.vars.greeting} ${args.ref} ${args.skip_tests}`);",
        )
        .args(&["run", "hello", "-e", "dev", "ref=v1.2.3", "skip_tests=true"])
        .run()
        .code(0)
        .stdout_has("hello v1.2.3 true");
}

#[test]
fn runbook_env_selects_the_environment() {
    Test::new()
        .file("scripts/e.rhai", "print(env.name);")
        .args(&["run", "e"])
        .env("RUNBOOK_ENV", "dev")
        .run()
        .code(0)
        .stdout_has("dev");
}

#[test]
fn a_missing_script_lists_the_scripts_that_exist() {
    Test::new()
        .file("scripts/deploy.rhai", "")
        .file("scripts/ops/restart.rhai", "")
        .args(&["run", "deplyo", "-e", "dev"])
        .run()
        .code(2)
        .stderr_has("script `deplyo` not found")
        .stderr_has("available scripts: deploy, ops/restart");
}

#[test]
fn an_unknown_environment_lists_the_known_ones() {
    Test::new()
        .file("scripts/x.rhai", "")
        .args(&["run", "x", "-e", "staging"])
        .run()
        .code(2)
        .stderr_has("no environment `staging` (environments: dev, prod)");
}

#[test]
fn an_unknown_role_is_an_error_naming_the_roles() {
    Test::new()
        .file("scripts/x.rhai", "hosts(\"db\");")
        .args(&["run", "x", "-e", "dev"])
        .run()
        .code(1)
        .stderr_has("environment `dev` has no role `db` (roles: one, web)")
        .stderr_has("scripts/x.rhai:1:1");
}

#[test]
fn malformed_script_arguments_are_a_usage_error() {
    Test::new()
        .file("scripts/x.rhai", "")
        .args(&["run", "x", "-e", "dev", "ref"])
        .run()
        .code(2)
        .stderr_has("expected KEY=VALUE");
}

#[test]
fn commands_run_on_every_host_of_a_role_at_the_same_time() {
    // Each host's command waits until both have started: sequential execution would
    // never see two markers and fail after its bounded wait.
    let t = Test::new().file(
        "scripts/fan.rhai",
        r#"
        let dir = app.root + "/fan";
        local::run(["mkdir", "-p", dir]);
        let rs = ssh::shell(hosts("web"), `mktemp -p ${dir} >/dev/null; i=0; while [ "$(ls ${dir} | wc -l)" -lt 2 ]; do i=$((i+1)); [ $i -gt 100 ] && exit 9; sleep 0.05; done; echo done`);
        print(`results=${rs.len()} hosts=${rs.map(|r| r.host)} ok=${rs.all(|r| r.ok)}`);
        "#,
    );
    t.args(&["run", "fan", "-e", "dev"])
        .run()
        .code(0)
        .stdout_has(r#"results=2 hosts=["a", "b"] ok=true"#);
}

#[test]
fn dry_run_executes_nothing_and_says_what_would_run() {
    let script = r#"let r = ssh::run(hosts("one"), ["touch", app.root + "/marker"]); print(`dry=${r[0].dry_run}`);"#;
    let t = Test::new().file("scripts/touch.rhai", script).args(&[
        "run",
        "touch",
        "-e",
        "dev",
        "--dry-run",
    ]);
    t.run()
        .code(0)
        .stderr_has("would run: touch")
        .stdout_has("dry=true");
    assert!(
        !t.path().join("marker").exists(),
        "dry run created the file"
    );

    let t = Test::new()
        .file("scripts/touch.rhai", script)
        .args(&["run", "touch", "-e", "dev"]);
    t.run().code(0).stdout_has("dry=false");
    assert!(
        t.path().join("marker").exists(),
        "a real run must create the file"
    );
}

#[test]
fn json_events_parse_line_by_line_with_stable_fields() {
    let out = Test::new()
        .file(
            "scripts/j.rhai",
            r#"step("greet", || local::run(["echo", "hi"])); print("done");"#,
        )
        .args(&["run", "j", "-e", "dev", "--json", "--reason", "test run"])
        .run();
    out.code(0);
    let events = out.events();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "run_started",
            "step_started",
            "command_started",
            "output",
            "command_finished",
            "step_finished",
            "log",
            "run_finished"
        ]
    );
    let run_id = events[0]["run"].as_str().unwrap();
    assert!(
        events
            .iter()
            .all(|e| e["run"] == run_id && e["ts"].as_str().is_some_and(|t| t.ends_with('Z')))
    );
    assert_eq!(events[0]["data"]["reason"], "test run");
    assert_eq!(events[2]["argv"], serde_json::json!(["echo", "hi"]));
    assert_eq!(events[3]["message"], "hi");
    assert_eq!(events[3]["stream"], "stdout");
    assert_eq!(events[4]["code"], 0);
    assert!(events[4]["duration_ms"].is_u64());
    assert_eq!(events[5]["step"], "greet");
    assert_eq!(events[5]["result"], "ok");
    assert_eq!(events[7]["result"], "ok");
}

#[test]
fn secrets_are_redacted_from_output_events_and_errors() {
    let out = Test::new()
        .file(
            "scripts/s.rhai",
            r#"let token = secret("RB_TEST_TOKEN"); local::run(["echo", "token=" + token]); throw "bad token " + token;"#,
        )
        .args(&["run", "s", "-e", "dev", "--json"])
        .env("RB_TEST_TOKEN", "hunter2-secret")
        .run();
    out.code(1);
    assert!(
        !out.stdout.contains("hunter2"),
        "stdout leaks:\n{}",
        out.stdout
    );
    assert!(
        !out.stderr.contains("hunter2"),
        "stderr leaks:\n{}",
        out.stderr
    );
    out.stdout_has("token=***");
}

#[test]
fn inventory_secrets_are_masked_even_when_only_a_shell_prints_them() {
    let inventory = format!(
        "{}\n[notify.slack]\nwebhook = {{ env = \"RB_TEST_HOOK\" }}\n",
        crate::harness::INVENTORY
    );
    Test::bare()
        .file("runbook.toml", &inventory)
        .file("scripts/s.rhai", r#"local::shell("echo $RB_TEST_HOOK");"#)
        .args(&["run", "s", "-e", "dev"])
        .env("RB_TEST_HOOK", "https://hooks.invalid/T000/B000/XXXX")
        .run()
        .code(0)
        .stderr_has("[local] ***");
}

#[test]
fn a_missing_secret_names_the_variable_only_when_used() {
    Test::new()
        .file(
            "scripts/s.rhai",
            r#"print("before"); secret("RB_NOT_SET_ANYWHERE");"#,
        )
        .args(&["run", "s", "-e", "dev"])
        .run()
        .code(1)
        .stdout_has("before")
        .stderr_has("secret `RB_NOT_SET_ANYWHERE` is not set");
}

#[test]
fn a_protected_environment_needs_confirmation_or_yes() {
    let t = Test::new().file(
        "scripts/p.rhai",
        r#"local::run(["touch", app.root + "/ran"]);"#,
    );
    let t = t.args(&["run", "p", "-e", "prod"]);
    t.run()
        .code(2)
        .stderr_has("`prod` is protected")
        .stderr_has("--yes");
    assert!(!t.path().join("ran").exists());
    let t = t.args(&["--yes"]);
    t.run().code(0);
    assert!(t.path().join("ran").exists());
}

#[test]
fn on_failure_runs_with_the_error_and_can_still_run_commands() {
    let t = Test::new().file(
        "scripts/f.rhai",
        r#"
fn on_failure(err) {
    local::run(["sh", "-c", "printf '%s' \"$1\" > failure.txt", "sh", err.message + " @ " + err.location]);
}
local::run(["false"]);
"#,
    )
    .args(&["run", "f", "-e", "dev"]);
    t.run().code(1);
    let text = std::fs::read_to_string(t.path().join("failure.txt")).expect("on_failure ran");
    assert_eq!(
        text,
        "command failed on `local`: `false` exited with code 1 @ scripts/f.rhai:5:8"
    );
}

#[test]
fn the_demo_rollout_switches_current_atomically_and_keeps_releases_bounded() {
    let t = Test::new().file("app/public/index.html", "v1").file(
        "scripts/deploy.rhai",
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/deploy.rhai"))
            .unwrap(),
    );
    let t = t
        .file(
            "runbook.toml",
            "[app]\nname = \"t\"\ndeploy_path = \"deploy\"\nkeep_releases = 2\n[env.dev]\ntransport = \"local\"\nhosts = { a = \"localhost\" }\nroles = { web = [\"a\"] }\nvars = { laravel = false, source = \"app\" }\n",
        )
        .args(&["run", "deploy", "-e", "dev", "--reason", "weekly release"]);
    for _ in 0..3 {
        t.run().code(0).stderr_has("succeeded");
    }
    let deploy = t.path().join("deploy");
    let releases: Vec<_> = std::fs::read_dir(deploy.join("releases"))
        .unwrap()
        .collect();
    assert_eq!(releases.len(), 2, "keep_releases = 2");
    let current = std::fs::read_link(deploy.join("current")).unwrap();
    assert!(current.starts_with("releases/"), "{current:?}");
    let live = current.file_name().unwrap().to_str().unwrap().to_owned();
    let meta =
        std::fs::read_to_string(deploy.join(format!(".runbook/releases/{live}.json"))).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["reason"], "weekly release");
    assert!(
        meta["source"].as_str().unwrap().starts_with("artifact "),
        "{meta}"
    );
    assert!(
        !deploy.join(".runbook/lock").exists(),
        "the lock was released"
    );
    assert_eq!(
        std::fs::read_to_string(deploy.join("current/public/index.html")).unwrap(),
        "v1"
    );
    assert!(
        std::fs::symlink_metadata(deploy.join("current/.env"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn the_library_entry_point_can_run_twice_in_one_process() {
    let t = Test::new().file("scripts/x.rhai", "let a = 1;");
    let cfg = t.path().join("runbook.toml");
    let script = t.path().join("scripts/x.rhai");
    for _ in 0..2 {
        let code = runbook::run(
            [
                "runbook",
                "-q",
                "-c",
                cfg.to_str().unwrap(),
                "run",
                script.to_str().unwrap(),
                "-e",
                "dev",
            ]
            .map(std::ffi::OsString::from),
        );
        assert_eq!(code, 0);
    }
}

#[test]
fn without_a_terminal_each_hosts_output_stays_together() {
    let out = Test::new()
        .file(
            "scripts/f.rhai",
            r#"ssh::shell(hosts("web"), "echo first; sleep 0.3; echo second");"#,
        )
        .args(&["run", "f", "-e", "dev"])
        .run();
    out.code(0)
        .stderr_has("  [a] first\n  [a] second\n")
        .stderr_has("  [b] first\n  [b] second\n");
}

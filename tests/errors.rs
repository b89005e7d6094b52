//! The exact bytes of script error messages: they are a product feature.

use crate::harness::Test;

fn stderr_tail(stderr: &str, from: &str) -> String {
    let start = stderr
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} in:\n{stderr}"));
    stderr[start..].to_owned()
}

#[test]
fn a_failed_command_inside_a_stdlib_function_shows_every_frame() {
    let out = Test::new()
        .file(
            "stdlib/tasks.rhai",
            "fn migrate(hosts) {\n    ssh::shell(hosts, \"echo 'SQLSTATE[HY000] no such table' >&2; exit 3\");\n}\n",
        )
        .file(
            "scripts/deploy.rhai",
            "import \"tasks\" as tasks;\n\nlet web = hosts(\"one\");\ntasks::migrate(web);\n",
        )
        .args(&["run", "deploy", "-e", "dev", "-q"])
        .run();
    out.code(1);
    assert_eq!(
        stderr_tail(&out.stderr, "error:"),
        r#"error: command failed on `a`: `sh -c "echo 'SQLSTATE[HY000] no such table' >&2; exit 3"` exited with code 3
  stderr (last lines):
  | SQLSTATE[HY000] no such table
 --> stdlib/tasks.rhai:2:10
  |
2 |     ssh::shell(hosts, "echo 'SQLSTATE[HY000] no such table' >&2; exit 3");
  |          ^^^^^
  = called from scripts/deploy.rhai:4:8 (in `migrate`)
  |
4 | tasks::migrate(web);
  |        ^^^^^^^
"#
    );
}

#[test]
fn a_syntax_error_points_at_the_token_and_runs_nothing() {
    let t = Test::new()
        .file(
            "scripts/bad.rhai",
            "local::run([\"touch\", \"ran\"]);\nlet x = ;\n",
        )
        .args(&["run", "bad", "-e", "dev"]);
    let out = t.run();
    out.code(1);
    assert_eq!(
        out.stderr,
        "error: syntax error: Unexpected ';'\n --> scripts/bad.rhai:2:9\n  |\n2 | let x = ;\n  |         ^\n"
    );
    assert!(
        !t.path().join("ran").exists(),
        "a command ran before a syntax error"
    );
}

#[test]
fn a_runaway_loop_is_stopped_with_a_clear_message() {
    let out = Test::new()
        .file("scripts/spin.rhai", "let n = 0;\nloop { n += 1; }\n")
        .args(&["run", "spin", "-e", "dev", "-q"])
        .env("RUNBOOK_MAX_OPERATIONS", "100000")
        .run();
    out.code(1);
    assert_eq!(
        stderr_tail(&out.stderr, "error:"),
        "error: the script exceeded its operation limit and was stopped\n --> scripts/spin.rhai:2:13\n  |\n2 | loop { n += 1; }\n  |             ^\n  = hint: look for a loop that never ends\n"
    );
}

#[test]
fn an_unknown_function_names_it_and_points_to_the_reference() {
    Test::new()
        .file("scripts/typo.rhai", "ssh::rnu(hosts(), [\"true\"]);\n")
        .args(&["run", "typo", "-e", "dev"])
        .run()
        .code(1)
        .stderr_has("error: unknown function: ssh::rnu (HostSet, array)")
        .stderr_has(" --> scripts/typo.rhai:1:")
        .stderr_has("= hint: `runbook doc` lists every function scripts can call");
}

#[test]
fn a_missing_module_is_named() {
    Test::new()
        .file("scripts/m.rhai", "import \"nope\" as n;\n")
        .args(&["run", "m", "-e", "dev"])
        .run()
        .code(1)
        .stderr_has("error: module `nope` not found")
        .stderr_has("1 | import \"nope\" as n;\n  |        ^^^^^^");
}

#[test]
fn a_bad_option_key_lists_the_valid_ones() {
    Test::new()
        .file("scripts/o.rhai", "local::run([\"true\"], #{ tolerat: true });\n")
        .args(&["run", "o", "-e", "dev"])
        .run()
        .code(1)
        .stderr_has("unknown option `tolerat` (options: cwd, env, timeout, tolerate, stdin, sudo, quiet, concurrency, batch, max_fail, fail, pause, read)");
}

#[test]
fn a_timeout_kills_the_command_and_says_so() {
    Test::new()
        .file(
            "scripts/t.rhai",
            "local::run([\"sleep\", \"20\"], #{ timeout: \"300ms\" });\n",
        )
        .args(&["run", "t", "-e", "dev"])
        .run()
        .code(1)
        .stderr_has("error: command on `local` timed out after 300ms: `sleep 20` (it was killed)");
}

#[test]
fn several_failed_hosts_are_all_named() {
    Test::new()
        .file("scripts/f.rhai", "ssh::shell(hosts(\"web\"), \"exit 4\");\n")
        .args(&["run", "f", "-e", "dev"])
        .run()
        .code(1)
        .stderr_has("error: 2 of 2 hosts failed:\n- command failed on `a`: `sh -c 'exit 4'` exited with code 4\n- command failed on `b`");
}

#[test]
fn tolerate_turns_a_failure_into_a_result() {
    Test::new()
        .file(
            "scripts/t.rhai",
            "let r = local::shell(\"echo out; exit 5\", #{ tolerate: true });\nprint(`${r.ok} ${r.code}`);\n",
        )
        .args(&["run", "t", "-e", "dev"])
        .run()
        .code(0)
        .stdout_has("false 5");
}

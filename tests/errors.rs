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

// What a script's `catch (e)` reads from a command that failed on real ssh hosts: a
// `HostError` with fields, that still prints as the sentence above.

use crate::fleet::Fleet;

/// Runs `script` on `fleet` (environment `fleet`, role `web` = every host), quietly.
fn on_fleet(fleet: &Fleet, script: &str, env: &[(&str, &str)]) -> crate::harness::Output {
    let mut t = Test::bare()
        .file("runbook.toml", &fleet.inventory(""))
        .file("scripts/s.rhai", script)
        .args(&["run", "s", "-e", "fleet", "-q"]);
    for (k, v) in env {
        t = t.env(k, v);
    }
    t.run()
}

/// Prints every field of the caught error, one `name=value` line each.
const SHOW: &str = r#"
    print(`host=${e.host}`);
    print(`command=${e.command}`);
    print(`code=${e.code}`);
    print(`kind=${e.kind}`);
    print(`stderr=${e.stderr}`);
    print(`hosts=${e.hosts.len()} first=${e.hosts[0].host}`);
    print(`same=${"" + e == e.message && e.to_string() == e.message}`);
    print(`message=${e}`);
"#;

#[test]
fn a_catch_reads_the_failed_host_its_exit_code_and_stderr_tail() {
    let Some(fleet) = Fleet::start(2) else { return };
    // Only web2 fails: each host knows itself by the address it was reached on.
    let script = format!(
        "try {{\n    ssh::shell(hosts(\"web\"), \"case \\\"$SSH_CONNECTION\\\" in *' {} '*) echo 'SQLSTATE[HY000] gone away' >&2; exit 3;; esac\");\n    print(\"no error\");\n}} catch (e) {{{SHOW}}}\n",
        fleet.hosts[1].addr
    );
    let out = on_fleet(&fleet, &script, &[]);
    out.code(0)
        .stdout_has("host=web2\n")
        .stdout_has("code=3\n")
        .stdout_has("kind=exit\n")
        .stdout_has("stderr=SQLSTATE[HY000] gone away\n")
        .stdout_has("hosts=1 first=web2\n")
        .stdout_has("same=true\n")
        .stdout_has("message=1 of 2 hosts failed:\n- command failed on `web2`: `sh -c ")
        .stdout_has(
            "exited with code 3\n    stderr (last lines):\n    | SQLSTATE[HY000] gone away\n",
        );
    assert!(out.stdout.contains("command=sh -c "), "{}", out.stdout);
}

#[test]
fn a_catch_reads_a_timeout_as_kind_timeout() {
    let Some(fleet) = Fleet::start(1) else { return };
    let script = format!(
        "try {{\n    ssh::run(host(\"web1\"), [\"sh\", \"-c\", \"echo started >&2; sleep 20\"], #{{ timeout: \"700ms\" }});\n}} catch (e) {{{SHOW}}}\n"
    );
    let out = on_fleet(&fleet, &script, &[]);
    out.code(0)
        .stdout_has("host=web1\n")
        .stdout_has("kind=timeout\n")
        .stdout_has("code=\n")
        .stdout_has("stderr=started\n")
        .stdout_has("message=command on `web1` timed out after 700ms: ");
}

#[test]
fn a_catch_reads_a_stopped_host_as_unreachable() {
    let Some(mut fleet) = Fleet::start(2) else {
        return;
    };
    fleet.stop(1);
    let script =
        format!("try {{\n    ssh::run(hosts(\"web\"), [\"true\"]);\n}} catch (e) {{{SHOW}}}\n");
    let out = on_fleet(&fleet, &script, &[]);
    out.code(0)
        .stdout_has("host=web2\n")
        .stdout_has("kind=unreachable\n")
        .stdout_has("code=\n")
        .stdout_has("command=true\n")
        .stdout_has("hosts=1 first=web2\n")
        .stdout_has(&format!(
            "message=1 of 2 hosts failed:\n- cannot connect to `web2` ({}:{}): connection refused",
            fleet.hosts[1].addr, fleet.hosts[1].port
        ));
}

#[test]
fn a_secret_in_stderr_is_masked_in_the_error_a_script_catches() {
    let Some(fleet) = Fleet::start(1) else { return };
    // The secret reaches the host only through the environment; the host writes it to
    // stderr. Booleans are printed: the output layer's own masking cannot hide a leak.
    let script = r#"
let token = secret("DEPLOY_TOKEN");
try {
    ssh::shell(host("web1"), "echo \"token $TOKEN was refused\" >&2; exit 1", #{ env: #{ TOKEN: token } });
} catch (e) {
    print(`stderr clear=${e.stderr.contains(token)} masked=${e.stderr == "token *** was refused"}`);
    print(`message clear=${e.message.contains(token)} hosts clear=${e.hosts[0].stderr.contains(token)}`);
}
"#;
    let out = on_fleet(&fleet, script, &[("DEPLOY_TOKEN", "s3cr3t-t0ken-42")]);
    out.code(0)
        .stdout_has("stderr clear=false masked=true\n")
        .stdout_has("message clear=false hosts clear=false\n");
}

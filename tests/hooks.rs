//! Hooks on the strategies' named steps (`[[hooks]]` in runbook.toml, `steps::before(…)`
//! in a script): they run where they say, in order, on every host; a replaced step runs
//! the replacement, a skipped one nothing; a bad hook is refused before any host changes.
//! Two local hosts with their own deploy paths, the shipped `deploy` script, no Laravel.

use std::path::Path;

use crate::harness::Test;

/// The inventory: hosts `a` and `b` (deploy paths `da`, `db`), deploying `app/`, then
/// `hooks` (TOML appended as is).
fn project(hooks: &str) -> Test {
    let deploy =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/deploy.rhai"))
            .expect("scripts/deploy.rhai");
    Test::bare()
        .file("app/index.html", "v1")
        .file("scripts/deploy.rhai", &deploy)
        .file(
            "runbook.toml",
            &format!(
                "[app]\nname = \"t\"\ndeploy_path = \"unused\"\nkeep_releases = 1\n\n[env.dev]\ntransport = \"local\"\nhosts = {{ a = {{ address = \"localhost\", deploy_path = \"da\" }}, b = {{ address = \"localhost\", deploy_path = \"db\" }} }}\nroles = {{ web = [\"a\", \"b\"] }}\nvars = {{ laravel = false, source = \"app\" }}\n\n{hooks}"
            ),
        )
}

/// The lines of `rel` under the test's directory ("" when it does not exist).
fn lines(t: &Test, rel: &str) -> Vec<String> {
    std::fs::read_to_string(t.path().join(rel))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn live(dir: &Path) -> String {
    std::fs::read_link(dir.join("current"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A hook command that appends `tag` and where `current` points now to `hooks.log` in the
/// host's deploy path (the hook runs in the new release: releases/NAME).
fn record(tag: &str) -> String {
    format!(
        "[\"sh\", \"-c\", \"echo {tag} $(readlink ../../current || echo none) $(basename $PWD) >> ../../hooks.log\"]"
    )
}

#[test]
fn an_inventory_hook_before_switch_runs_on_every_host_before_current_moves_and_one_after_it() {
    let t = project(&format!(
        "[[hooks]]\nbefore = \"switch\"\nrun = {}\n\n[[hooks]]\nafter = \"switch\"\nstrategy = \"rolling\"\nrun = {}\n\n[[hooks]]\nafter = \"verify\"\ncall = \"deploy_hooks::verified\"\n",
        record("before"),
        record("after")
    ))
    .file(
        "stdlib/deploy_hooks.rhai",
        "fn verified(ctx) {\n    for h in ctx.hosts { ssh::run(h, [\"sh\", \"-c\", `echo verified ${ctx.step} ${ctx.release} >> hooks.log`], #{ cwd: h.deploy_path }); }\n}\n",
    );
    t.run_with(&["run", "deploy", "-e", "dev"]).code(0);
    let first = live(&t.path().join("da"));
    let name = first.trim_start_matches("releases/").to_owned();
    t.run_with(&["run", "deploy", "-e", "dev"]).code(0);
    let second = live(&t.path().join("da"));
    let name2 = second.trim_start_matches("releases/").to_owned();
    assert_ne!(first, second);
    for host in ["da", "db"] {
        assert_eq!(
            lines(&t, &format!("{host}/hooks.log")),
            [
                format!("before none {name}"),
                format!("after {first} {name}"),
                format!("verified verify {name}"),
                format!("before {first} {name2}"),
                format!("after {second} {name2}"),
                format!("verified verify {name2}"),
            ],
            "{host}: each hook on its host, before and after the switch, in order"
        );
    }
}

#[test]
fn an_inventory_hook_replaces_one_step_and_skips_another_with_its_reason() {
    let t = project(
        "[[hooks]]\nreplace = \"cleanup\"\nrun = [\"sh\", \"-c\", \"echo kept >> ../../replaced.log\"]\n\n[[hooks]]\nskip = \"verify\"\nreason = \"the balancer checks each backend\"\n",
    );
    t.run_with(&["run", "deploy", "-e", "dev"]).code(0);
    let out = t.run_with(&["run", "deploy", "-e", "dev", "--json"]);
    out.code(0);
    // keep_releases = 1, but cleanup was replaced: both releases stay, the replacement ran.
    for host in ["da", "db"] {
        let releases = std::fs::read_dir(t.path().join(host).join("releases"))
            .unwrap()
            .count();
        assert_eq!(releases, 2, "{host}: cleanup did not run");
        assert_eq!(lines(&t, &format!("{host}/replaced.log")), ["kept", "kept"]);
    }
    let events = out.events();
    let finished = |step: &str| {
        events
            .iter()
            .find(|e| e["event"] == "step_finished" && e["step"] == step)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(finished("verify")["result"], "skipped", "{events:?}");
    assert!(
        finished("verify")["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the balancer checks each backend (runbook.toml hooks[1])"),
        "{:?}",
        finished("verify")
    );
    assert_eq!(
        finished("instead of cleanup: sh -c 'echo kept >> ../../replaced.log'")["result"],
        "ok"
    );
    assert!(
        finished("clean up old releases").is_null(),
        "the step itself did not run"
    );
}

#[test]
fn a_script_hooks_before_replaces_and_skips_steps() {
    let t = project("").file(
        "scripts/hooked.rhai",
        r#"import "strategies/rolling" as rolling;
import "strategies/common" as common;
steps::before("switch", |ctx| {
    for h in ctx.hosts {
        ssh::run(h, ["sh", "-c", `echo before ${ctx.step} ${ctx.release} $(readlink current || echo none) >> hooks.log`], #{ cwd: h.deploy_path });
    }
});
steps::replace("cleanup", |ctx| {
    for h in ctx.hosts { ssh::run(h, ["sh", "-c", "echo replaced >> hooks.log"], #{ cwd: h.deploy_path }); }
});
steps::skip("verify", "verified by the smoke test job");
steps::skip("optimize");
let name = rolling::deploy(hosts("web"), common::deploy_source(args));
print(`released ${name}`);
"#,
    );
    let out = t.run_with(&["run", "hooked", "-e", "dev"]);
    out.code(0).stderr_has(
        "step `verify` skipped: verified by the smoke test job (scripts/hooked.rhai:11)",
    );
    let name = live(&t.path().join("db"))
        .trim_start_matches("releases/")
        .to_owned();
    for host in ["da", "db"] {
        assert_eq!(
            lines(&t, &format!("{host}/hooks.log")),
            [format!("before switch {name} none"), "replaced".to_owned()],
            "{host}"
        );
    }
}

#[test]
fn an_unknown_step_or_a_safety_step_skipped_without_a_reason_is_refused_before_any_change() {
    // From the inventory: every command refuses to start, naming the steps there are.
    let t = project("[[hooks]]\nbefore = \"symlink\"\nrun = [\"true\"]\n");
    let out = t.run_with(&["run", "deploy", "-e", "dev"]);
    assert_ne!(out.code, 0);
    out.stderr_has("`hooks[0]`: no strategy has a step `symlink`; the steps are:")
        .stderr_has("rolling: lock → backup → maintenance-on → prepare → migration-gate → migrate → optimize → switch → switch-workers → restart-workers → maintenance-off → verify → cleanup");
    let t2 = project("[[hooks]]\nskip = \"lock\"\n");
    let out2 = t2.run_with(&["run", "deploy", "-e", "dev"]);
    assert_ne!(out2.code, 0);
    out2.stderr_has("step `lock` keeps the fleet safe: skipping it needs a reason");
    // From a script: at the line that asks, or (a step of another strategy) when the
    // strategy starts — before the lock, the backup or any release.
    let t3 = project("")
        .file(
            "scripts/typo.rhai",
            "import \"strategies/rolling\" as rolling;\nsteps::after(\"swtich\", |ctx| ());\nrolling::deploy(hosts(\"web\"), #{ artifact: \"app\" });\n",
        )
        .file(
            "scripts/other.rhai",
            "import \"strategies/rolling\" as rolling;\nsteps::after(\"monitor\", |ctx| ());\nrolling::deploy(hosts(\"web\"), #{ artifact: \"app\" });\n",
        );
    let typo = t3.run_with(&["run", "typo", "-e", "dev"]);
    assert_ne!(typo.code, 0);
    typo.stderr_has("steps::after(\"swtich\"): no strategy has a step `swtich`")
        .stderr_has("scripts/typo.rhai:2:");
    let other = t3.run_with(&["run", "other", "-e", "dev"]);
    assert_ne!(other.code, 0);
    other
        .stderr_has("the hooks on the rolling strategy's steps cannot run (nothing was changed)")
        .stderr_has("steps::after(\"monitor\") at scripts/other.rhai:2: strategy `rolling` has no step `monitor`");
    // A `call` hook naming a function its module lacks: refused when the strategy starts.
    let t4 = project("[[hooks]]\nafter = \"verify\"\ncall = \"deploy_hooks::nope\"\n")
        .file("stdlib/deploy_hooks.rhai", "fn warm(ctx) { }\n");
    let missing = t4.run_with(&["run", "deploy", "-e", "dev"]);
    assert_ne!(missing.code, 0);
    missing.stderr_has("runbook.toml hooks[0]: call = \"deploy_hooks::nope\": the module `deploy_hooks` (stdlib/deploy_hooks.rhai) has no `fn nope(ctx)`");
    for t in [&t, &t2, &t3, &t4] {
        for host in ["da", "db"] {
            // (The run's audit record may be there: it read `current`.)
            for made in ["releases", "current", "shared", ".runbook/lock"] {
                assert!(
                    !t.path().join(host).join(made).exists(),
                    "{host}: {made} was created"
                );
            }
        }
    }
}

#[test]
fn a_dry_run_lists_the_strategys_steps_by_name() {
    project("")
        .run_with(&["run", "deploy", "-e", "dev", "--dry-run"])
        .code(0)
        .stderr_has("the rolling strategy's steps (hook them by name): lock → backup → maintenance-on → prepare");
}

#[test]
fn on_failure_sees_the_modules_the_script_imports() {
    let t = project("")
        .file("stdlib/pager.rhai", "fn page(msg) { print(`paged: ${msg}`); }\n")
        .file(
            "scripts/fails.rhai",
            "import \"pager\" as pager;\nfn on_failure(err) { pager::page(err.message); }\nthrow \"disk full\";\n",
        );
    let out = t.run_with(&["run", "fails", "-e", "dev"]);
    assert_ne!(out.code, 0);
    out.stdout_has("paged: disk full");
    assert!(
        !out.stderr.contains("on_failure itself failed"),
        "{}",
        out.stderr
    );
}

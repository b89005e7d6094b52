//! `runbook check`: compile everything, touch nothing.

use crate::harness::Test;

#[test]
fn the_shipped_project_checks_clean() {
    let out = Test::bare()
        .args(&[
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/runbook.toml"),
            "check",
        ])
        .run();
    out.code(0)
        .stderr_has("scripts/deploy.rhai")
        .stderr_has("stdlib/laravel.rhai")
        .stderr_has("all ok");
}

#[test]
fn the_example_inventory_checks_clean() {
    Test::bare()
        .args(&[
            "-c",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/askproai/runbook.toml"
            ),
            "check",
        ])
        .run()
        .code(0);
}

#[test]
fn an_undefined_variable_fails_the_check_with_its_location_and_runs_nothing() {
    let t = Test::new()
        .file("scripts/good.rhai", "print(args);\n")
        .file(
            "scripts/bad.rhai",
            "local::run([\"touch\", \"ran\"]);\nprint(relase);\n",
        )
        .args(&["check"]);
    let out = t.run();
    out.code(1)
        .stderr_has("error: syntax error: Undefined variable: relase")
        .stderr_has(" --> scripts/bad.rhai:2:7")
        .stderr_has("1 script(s) failed the check");
    assert!(!t.path().join("ran").exists());
}

#[test]
fn a_broken_project_stdlib_module_is_reported_by_its_source_name() {
    Test::new()
        .file("stdlib/broken.rhai", "fn f( {\n")
        .args(&["check"])
        .run()
        .code(1)
        .stderr_has("--> stdlib/broken.rhai:1:");
}

#[test]
fn an_import_that_does_not_resolve_fails_the_check() {
    Test::new()
        .file("scripts/i.rhai", "import \"no/such/module\" as m;\n")
        .args(&["check"])
        .run()
        .code(1)
        .stderr_has("module `no/such/module` not found");
}

#[test]
fn explicit_paths_need_no_inventory() {
    Test::bare()
        .file("a.rhai", "let x = 1 + 2;\n")
        .args(&["check", "a.rhai"])
        .run()
        .code(0);
}

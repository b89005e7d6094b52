//! Inventory errors and `runbook hosts`.

use crate::harness::Test;

#[test]
fn an_unknown_key_is_named_with_its_line() {
    Test::bare()
        .file(
            "runbook.toml",
            "[app]\nname = \"t\"\ndeploy_path = \"/srv/t\"\n[env.prod]\nhots = { a = \"10.0.0.1\" }\n",
        )
        .args(&["hosts", "-e", "prod"])
        .run()
        .code(2)
        .stderr_has("runbook.toml")
        .stderr_has("line 5")
        .stderr_has("unknown field `hots`");
}

#[test]
fn no_inventory_says_how_to_get_one() {
    Test::bare()
        .args(&["hosts"])
        .run()
        .code(2)
        .stderr_has("no runbook.toml found")
        .stderr_has("--config");
}

#[test]
fn the_inventory_is_found_from_a_subdirectory() {
    Test::new()
        .file("deep/er/.keep", "")
        .args(&["-c", "runbook.toml", "hosts", "-e", "dev"])
        .run()
        .code(0);
    let t = Test::new().file("deep/er/.keep", "");
    let mut cmd = t.command();
    cmd.current_dir(t.path().join("deep/er"))
        .args(["hosts", "-e", "dev"]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hosts_prints_a_table_and_json() {
    let out = Test::new()
        .args(&["hosts", "-e", "dev", "--role", "web"])
        .run();
    out.code(0).stdout_has("environment dev: 2 hosts");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "ADDRESS", "PORT", "USER", "TRANSPORT", "ROLES"]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["a", "localhost", "22", "-", "local", "one,web"]
    );

    let out = Test::new().args(&["hosts", "-e", "prod", "--json"]).run();
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["protected"], true);
    assert_eq!(doc["hosts"][0]["name"], "p");
}

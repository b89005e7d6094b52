//! The deploy lock across hosts that each have their own lock directory (real sshd
//! hosts), what runbook does with a lock path it did not write, and `runbook unlock` as
//! an audited decision. The takeover race itself is `lock::tests` (200 trials of the
//! real lock scripts).

use std::path::Path;
use std::process::Stdio;

use crate::fleet::{Fleet, USER};
use crate::harness::Test;

/// A fleet whose hosts each have their own deploy path (so their own lock), removed at
/// the end.
struct Separate {
    fleet: Fleet,
    roots: Vec<(String, String)>,
}

impl Drop for Separate {
    fn drop(&mut self) {
        for (_, root) in &self.roots {
            let _ = std::fs::remove_dir_all(root);
            if let Some(parent) = Path::new(root).parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

impl Separate {
    fn start(n: usize) -> Option<Separate> {
        let fleet = Fleet::start(n)?;
        let roots = fleet.deploy_roots("rbl");
        Some(Separate { fleet, roots })
    }

    fn project(&self, script: &str) -> Test {
        let hosts: Vec<String> = self
            .fleet
            .hosts
            .iter()
            .zip(&self.roots)
            .map(|(h, (_, root))| {
                format!(
                    "{} = {{ address = \"{}\", port = {}, deploy_path = \"{root}\" }}",
                    h.name, h.addr, h.port
                )
            })
            .collect();
        let names: Vec<String> = self
            .fleet
            .hosts
            .iter()
            .map(|h| format!("\"{}\"", h.name))
            .collect();
        let inventory = format!(
            "[app]\nname = \"t\"\ndeploy_path = \"/srv/unused\"\n\n[ssh]\nuser = \"{USER}\"\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\nconnect_timeout = \"5s\"\n\n[env.fleet]\nhosts = {{ {} }}\nroles = {{ web = [{}] }}\n",
            self.fleet.client_key().display(),
            self.fleet.known_hosts.display(),
            hosts.join(", "),
            names.join(", ")
        );
        Test::bare()
            .file("runbook.toml", &inventory)
            .file("scripts/s.rhai", script)
    }

    fn lock(&self, i: usize) -> std::path::PathBuf {
        Path::new(&self.roots[i].1).join(".runbook/lock")
    }
}

/// Two runs started at the same moment against two hosts with separate lock
/// directories: exactly one proceeds, the other is refused naming the holder, and it
/// leaves no lock behind on either host (it must give back a host it had won).
#[test]
fn two_runs_on_two_hosts_with_their_own_locks_never_both_proceed() {
    let Some(s) = Separate::start(2) else { return };
    assert_ne!(s.roots[0].1, s.roots[1].1);
    let t = s.project("lock::acquire(hosts(\"web\"));\nprint(\"proceeded\");\nsleep(0.3);\n");
    let trials = 10;
    for trial in 0..trials {
        let spawn = || {
            t.command()
                .args(["run", "s", "-e", "fleet", "-q"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("runbook starts")
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        let proceeded = outs
            .iter()
            .filter(|o| String::from_utf8_lossy(&o.stdout).contains("proceeded"))
            .count();
        assert_eq!(
            proceeded, 1,
            "trial {trial}: {proceeded} runs proceeded: {outs:?}"
        );
        let loser = outs
            .iter()
            .find(|o| !String::from_utf8_lossy(&o.stdout).contains("proceeded"))
            .unwrap();
        let err = String::from_utf8_lossy(&loser.stderr);
        assert!(
            err.contains("the deploy lock is held by another run") && err.contains("pid"),
            "trial {trial}: {err}"
        );
        for i in 0..2 {
            assert!(
                !s.lock(i).exists(),
                "trial {trial}: a lock was left on {}",
                s.roots[i].0
            );
        }
    }
    eprintln!("two hosts, separate locks: {trials} trials, exactly one run proceeded each time");
}

/// A run holding only the second host; another run wants both: it wins the first host
/// (its own lock directory), is refused on the second, and gives the first back.
#[test]
fn a_run_refused_on_one_host_gives_back_the_hosts_it_had_taken() {
    let Some(s) = Separate::start(2) else { return };
    let holder = s.project("lock::acquire(host(\"web2\"));\nprint(\"holding\");\nsleep(30);\n");
    let mut child = holder
        .command()
        .args(["run", "s", "-e", "fleet", "-q"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !s.lock(1).join("info").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never locked web2"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!s.lock(0).exists(), "web1 has its own lock directory");
    let both = s.project("lock::acquire(hosts(\"web\"));\nprint(\"proceeded\");\n");
    let out = both.args(&["run", "s", "-e", "fleet", "-q"]).run();
    out.code(1)
        .stderr_has("the deploy lock is held by another run")
        .stderr_has("- web2:");
    assert!(!out.stdout.contains("proceeded"));
    assert!(
        !s.lock(0).exists(),
        "the refused run left its lock on web1, which it had won"
    );
    assert!(s.lock(1).exists(), "the holder's lock on web2 was touched");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    assert!(!s.lock(1).exists(), "the holder did not release web2");
}

/// A hand-made `lock/` directory (a freeze) is never replaced, not even by a takeover:
/// the refusal names what is there and the command that clears it.
#[test]
fn an_empty_lock_directory_is_refused_with_what_it_is_and_how_to_clear_it() {
    let t = Test::new().file(
        "scripts/take.rhai",
        "lock::acquire(hosts(\"one\"), #{ take_stale: true });\nprint(\"proceeded\");\n",
    );
    let lock = t.path().join("deploy/.runbook/lock");
    std::fs::create_dir_all(&lock).unwrap();
    let old = std::process::Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&lock)
        .status()
        .unwrap();
    assert!(old.success());
    let out = t.run_with(&["run", "take", "-e", "dev"]);
    out.code(1)
        .stderr_has("the deploy lock cannot be taken:")
        .stderr_has("is an empty directory")
        .stderr_has("runbook never replaces a lock it cannot read")
        .stderr_has("`runbook unlock -e dev`");
    assert!(!out.stdout.contains("proceeded"), "{}", out.stdout);
    assert!(lock.is_dir(), "the freeze was removed");
    assert_eq!(
        std::fs::read_dir(&lock).unwrap().count(),
        0,
        "the freeze was replaced"
    );
    // `unlock --stale` cannot tell whether it is stale; a plain unlock removes it (`dev`'s
    // two hosts share this directory: one removes it, the other finds nothing).
    t.run_with(&["unlock", "-e", "dev", "--stale"])
        .code(1)
        .stderr_has("is an empty directory")
        .stderr_has("--stale only removes the lock of a run that is known to be gone")
        .stderr_has("unlock refused: the deploy lock stays on 2 of 2 hosts of `dev`");
    assert!(lock.is_dir());
    t.run_with(&["unlock", "-e", "dev"])
        .code(0)
        .stderr_has("removed an empty directory");
    assert!(!lock.exists());
}

/// `runbook unlock` on a protected environment needs a reason; refused or done, it is in
/// the audit log with who, why, and whose lock it removed.
#[test]
fn unlock_is_audited_and_needs_a_reason_on_a_protected_environment() {
    let t = Test::new();
    let lock = t.path().join("deploy/.runbook/lock");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(
        lock.join("info"),
        r#"{"run":"20261201T000000000Z-1-abcdefabcdef","actor":"bob","machine":"ci-7","pid":1,"script":"scripts/deploy.rhai","reason":null,"ci_run":null,"started_at":"2026-12-01T00:00:00Z"}"#,
    )
    .unwrap();
    std::fs::write(lock.join("heartbeat"), "").unwrap();

    t.run_with(&["unlock", "-e", "prod", "--yes"])
        .code(2)
        .stderr_has("needs a written reason")
        .stderr_has("--reason");
    assert!(lock.exists(), "removed without a reason");
    t.run_with(&[
        "unlock",
        "-e",
        "prod",
        "--yes",
        "--reason",
        "bob's run died with the CI runner",
    ])
    .code(0)
    .stderr_has("removed the lock of bob");
    assert!(!lock.exists());

    let log = std::fs::read_to_string(t.path().join("audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{log}");
    assert_eq!(records[0]["script"], "unlock");
    assert_eq!(records[0]["result"], "refused");
    assert_eq!(records[1]["result"], "success");
    assert_eq!(records[1]["reason"], "bob's run died with the CI runner");
    assert_eq!(records[1]["env"], "prod");
    assert!(
        records[1]["args"]["host.p"]
            .as_str()
            .is_some_and(|m| m.contains("bob (run 20261201T000000000Z-1-abcdefabcdef")),
        "{log}"
    );
    // And on the host itself.
    let on_host = std::fs::read_to_string(t.path().join("deploy/.runbook/audit.jsonl")).unwrap();
    assert!(on_host.contains("\"script\":\"unlock\""), "{on_host}");
}

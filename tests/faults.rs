//! Faults and hostile input: what runbook does when things go wrong around it, and what
//! is lost (nothing). Each test prints its figure. Randomised trials run `FAULT_TRIALS`
//! times (a fixed number in CI; `bash benches/faults.sh` runs more).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{INVENTORY, Test};

pub(crate) fn trials(default: usize) -> usize {
    std::env::var("FAULT_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(default)
}

/// A tiny deterministic generator (no dependency, reproducible from the seed printed).
pub(crate) struct Lcg(pub u64);

impl Lcg {
    pub(crate) fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below.max(1)
    }
}

#[test]
fn two_deploys_started_at_the_same_moment_never_both_proceed() {
    let n = trials(50);
    // While it holds the lock a run keeps a directory: a second run inside at the same
    // time fails to make it ("File exists"). Two runs may both succeed only one after the
    // other (on a loaded machine one can start after the other has ended).
    let t = Test::new().file(
        "scripts/hold.rhai",
        "lock::acquire(hosts(\"web\"));\nlocal::run([\"mkdir\", args.inside]);\nprint(\"proceeded\");\nsleep(0.2);\nlocal::run([\"rmdir\", args.inside]);\n",
    );
    let inside = t.path().join("inside");
    let inside_arg = format!("inside={}", inside.display());
    let (mut refused, mut one_after_the_other) = (0, 0);
    for trial in 0..n {
        let spawn = || {
            t.command()
                .args(["run", "hold", "-e", "dev", "-q", &inside_arg])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("runbook starts")
        };
        let (a, b) = (spawn(), spawn());
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        for o in &outs {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                !err.contains("File exists"),
                "trial {trial}: two runs held the lock at the same time: {outs:?}"
            );
        }
        let proceeded = outs
            .iter()
            .filter(|o| String::from_utf8_lossy(&o.stdout).contains("proceeded"))
            .count();
        assert!(!inside.exists(), "trial {trial}: a run left its directory");
        assert!(!t.path().join("deploy/.runbook/lock").exists());
        if proceeded == 2 {
            assert!(
                outs.iter().all(|o| o.status.success()),
                "trial {trial}: {outs:?}"
            );
            one_after_the_other += 1;
            continue;
        }
        assert_eq!(
            proceeded, 1,
            "trial {trial}: {proceeded} runs proceeded: {outs:?}"
        );
        let loser = outs
            .iter()
            .find(|o| !String::from_utf8_lossy(&o.stdout).contains("proceeded"))
            .unwrap();
        let err = String::from_utf8_lossy(&loser.stderr);
        assert_eq!(loser.status.code(), Some(1), "trial {trial}: {err}");
        assert!(
            err.contains("the deploy lock is held by another run") && err.contains("pid"),
            "trial {trial}: the refusal does not name the holder:\n{err}"
        );
        refused += 1;
    }
    eprintln!(
        "concurrent deploys: {n} trials, never two inside at once; {refused} refusals named the holder, {one_after_the_other} ran one after the other"
    );
    assert!(
        refused > 0,
        "no trial had the two runs meet at the lock: the test proved nothing"
    );
}

/// Values that break naive quoting: each must arrive on the other side byte for byte.
const HOSTILE: &[&str] = &[
    "plain",
    "two words",
    "semi;colon",
    "a; rm -rf /tmp/nope",
    "pipe|cat /etc/passwd",
    "and&&true",
    "or||true",
    "back`id`tick",
    "$(id)",
    "${HOME}",
    "$HOME",
    "'single quotes'",
    "\"double quotes\"",
    "mixed 'a' \"b\" `c`",
    "it's",
    "new\nline",
    "carriage\rreturn",
    "tab\there",
    "-rf",
    "--force",
    "-",
    "*",
    "?",
    "[abc]",
    "~root",
    "a\\b\\\\c",
    "redirect > /tmp/x",
    "< /etc/shadow",
    "#comment",
    "!event",
    "{a,b}",
    "%s%n%x",
    "\u{202e}override",
    "zero\u{200b}width",
    "e\u{301}combining",
    "emoji 🚀 deploy",
    "ﬁ ligature ı dotless",
    " leading and trailing ",
    "",
];

#[test]
fn hostile_arguments_arrive_literally_over_ssh() {
    let Some(fleet) = crate::fleet::Fleet::start(1) else {
        return;
    };
    let t = Test::bare().file("runbook.toml", &fleet.inventory("")).file(
        "scripts/echo.rhai",
        // Each value goes out as one argument of printf, back as stdout, byte for byte.
        "let n = parse_int(args.n);\nfor i in 0..n {\n    let v = args[`v${i}`];\n    let r = ssh::run(hosts()[0], [\"printf\", \"%s|\", v], #{ quiet: true });\n    print(`${i}=${r.stdout}`);\n}\n",
    );
    let mut cmd = t.command();
    cmd.args(["run", "echo", "-e", "fleet", "-q", "--json"]);
    cmd.arg(format!("n={}", HOSTILE.len()));
    for (i, v) in HOSTILE.iter().enumerate() {
        cmd.arg(format!("v{i}={v}"));
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Printed lines come back as JSON `output` events: decode them, then compare.
    let printed: Vec<String> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "output" || e["event"] == "log")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    let all = printed.join("\n");
    eprintln!("| # | value | arrived literally |\n|---|---|---|");
    for (i, v) in HOSTILE.iter().enumerate() {
        let expected = format!("{i}={v}|");
        let ok = all.contains(&expected);
        eprintln!("| {i} | {v:?} | {} |", if ok { "yes" } else { "NO" });
        assert!(ok, "case {i} {v:?} did not arrive literally:\n{all}");
    }
    eprintln!("hostile arguments: {} cases, all literal", HOSTILE.len());
}

#[test]
fn hostile_file_names_refs_and_reasons_stay_values() {
    let Some(fleet) = crate::fleet::Fleet::start(1) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    Command::new("chmod")
        .arg("777")
        .arg(dir.path())
        .status()
        .unwrap();
    let names: Vec<&str> = HOSTILE
        .iter()
        .copied()
        .filter(|v| !v.is_empty() && !v.contains('/') && *v != "-")
        .collect();
    let mut script = format!("let d = \"{}\";\n", dir.path().display());
    script.push_str("for k in args.keys() { if k.starts_with(\"f\") { ssh::run(hosts()[0], [\"touch\", d + \"/\" + args[k]], #{ quiet: true }); } }\n");
    let mut t = Test::bare()
        .file("runbook.toml", &fleet.inventory(""))
        .file("scripts/touch.rhai", &script)
        .file(
            "scripts/prep.rhai",
            "release::prepare(hosts(), #{ ref: args.r, repository: \"/nonexistent.git\" });",
        );
    t = t.args(&["run", "touch", "-e", "fleet", "-q"]);
    let mut cmd = t.command();
    for (i, v) in names.iter().enumerate() {
        cmd.arg(format!("f{i}={v}"));
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut made: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    made.sort();
    let mut want: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(made, want, "file names did not arrive literally");
    // A hostile ref and reason: the ref is looked up as a value (and not found), the
    // reason is recorded as written; nothing runs that the value spells.
    let canary = dir.path().join("pwned");
    let r = format!("main; touch {}", canary.display());
    let reason = format!(
        "$(touch {})\n`touch {}`",
        canary.display(),
        canary.display()
    );
    let out = Test::bare()
        .file("runbook.toml", &fleet.inventory(""))
        .file(
            "scripts/prep.rhai",
            "release::prepare(hosts(), #{ ref: args.r, repository: \"/nonexistent.git\" });",
        )
        .args(&[
            "run",
            "prep",
            "-e",
            "fleet",
            &format!("r={r}"),
            "--reason",
            &reason,
        ])
        .run();
    out.code(1);
    assert!(!canary.exists(), "a ref or reason was executed");
    eprintln!(
        "hostile file names: {} created exactly; a hostile ref and reason executed nothing",
        names.len()
    );
}

#[test]
fn runaway_scripts_are_stopped_and_nothing_runs_after() {
    let cases = [
        ("recursion", "fn f(n) { f(n + 1) }\nf(0);\n", "call depth"),
        ("string", "let s = \"x\";\nloop { s += s; }\n", "too large"),
        ("array", "let a = [1];\nloop { a += a; }\n", "too large"),
        (
            "import",
            "import \"../../../etc/passwd\" as p;\n",
            "reaches outside the project",
        ),
        (
            "absolute import",
            "import \"/etc/hostname\" as p;\n",
            "reaches outside the project",
        ),
    ];
    for (what, body, message) in cases {
        let t = Test::new().file(
            "scripts/bad.rhai",
            &format!("{body}\nlocal::run([\"touch\", \"after\"]);\n"),
        );
        let started = Instant::now();
        let t = t.env("RUNBOOK_MAX_OPERATIONS", "5000000");
        let out = t.run_with(&["run", "bad", "-e", "dev", "-q"]);
        out.code(1);
        assert!(
            out.stderr.to_lowercase().contains(message),
            "{what}: no `{message}` in:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("scripts/bad.rhai:"),
            "{what}: no location:\n{}",
            out.stderr
        );
        assert!(
            !t.path().join("after").exists(),
            "{what}: the script went on"
        );
        eprintln!("runaway {what}: stopped in {:?}", started.elapsed());
    }
}

#[test]
fn a_bad_inventory_names_the_key() {
    let cases = [
        (
            "[app]\nname = \"t\"\ndeploy_path = \"/srv/app\"\n[env.x\nhosts = {}\n",
            "runbook.toml",
            "line 4",
        ),
        (
            "[app]\nname = \"t\"\ndeploy_path = \"/srv/app\"\n[env.x]\nhosts = { a = \"10.0.0.1\" }\nrole = { web = [\"a\"] }\n",
            "unknown field `role`",
            "line 6",
        ),
        (
            "[app]\nname = \"t\"\ndeploy_path = \"/srv/app\"\n[env.x]\nhosts = { a = { port = 22 } }\n",
            "env.x.hosts.a",
            "address",
        ),
        (
            "[app]\nname = \"t\"\ndeploy_path = \"/srv/app\"\n[env.x]\nhosts = { a = \"10.0.0.1\" }\nroles = { web = [\"a\", \"b\"] }\n",
            "env.x.roles.web",
            "`b`",
        ),
        (
            "[app]\nname = \"t\"\ndeploy_path = \"/srv/app\"\n[env.x]\nhosts = { a = \"10.0.0.1\", a = \"10.0.0.2\" }\n",
            "duplicate key",
            "line 5",
        ),
    ];
    for (toml, first, second) in cases {
        let out = Test::bare()
            .file("runbook.toml", toml)
            .args(&["hosts", "-e", "x"])
            .run();
        out.code(2);
        assert!(
            out.stderr.contains(first) && out.stderr.contains(second),
            "expected `{first}` and `{second}` in:\n{}",
            out.stderr
        );
    }
}

/// A server that accepts connections and never answers (held for at most a minute).
fn silent_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_mins(1);
        let _ = l.set_nonblocking(true);
        let mut held = Vec::new();
        while Instant::now() < until {
            if let Ok((s, _)) = l.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    port
}

/// An SMTP server that greets, then drops the connection at the first command.
fn dropping_smtp() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().take(4).flatten() {
            let mut s = s;
            let _ = s.write_all(b"220 test ESMTP\r\n");
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            drop(s);
        }
    });
    port
}

#[test]
fn slow_and_dead_dependencies_are_bounded_and_never_hide_the_result() {
    let hang = silent_server();
    let smtp = dropping_smtp();
    let script = format!(
        "let t0 = now_ms();\n\
         let h = health::check(\"http://127.0.0.1:{hang}/api/health\", #{{ timeout: \"1s\" }});\n\
         print(`health ok=${{h.ok}} after ${{now_ms() - t0}} ms: ${{h.error}}`);\n\
         let t1 = now_ms();\n\
         let w = notify::webhook(\"http://127.0.0.1:{hang}/hook\", #{{ text: \"deployed\" }});\n\
         print(`webhook ok=${{w.ok}} after ${{now_ms() - t1}} ms`);\n\
         let t2 = now_ms();\n\
         let m = notify::email(#{{ subject: \"deployed\", body: \"v1\" }});\n\
         print(`email ok=${{m.ok}} after ${{now_ms() - t2}} ms`);\n\
         print(\"deploy result: released\");\n"
    );
    let out = Test::bare()
        .file(
            "runbook.toml",
            &format!(
                "{INVENTORY}\n[notify.email]\nhost = \"127.0.0.1\"\nport = \"{smtp}\"\ntls = \"none\"\nfrom = \"runbook@example.test\"\nto = \"oncall@example.test\"\n"
            ),
        )
        .file("scripts/d.rhai", &script)
        .args(&["run", "d", "-e", "dev"])
        .run();
    out.code(0).stdout_has("deploy result: released");
    for line in out.stdout.lines().filter(|l| l.contains(" after ")) {
        eprintln!("dead dependency: {line}");
        assert!(line.contains("ok=false"), "{line}");
        let ms: u64 = line
            .split(" after ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(ms < 15_000, "not bounded by its timeout: {line}");
    }
    assert!(
        out.stderr.contains("webhook notification failed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("email notification failed"),
        "{}",
        out.stderr
    );
}

/// A small filesystem mounted for one test (tmpfs, root only); unmounted on drop.
struct SmallFs {
    path: PathBuf,
}

impl SmallFs {
    fn mount(path: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "cannot mount a tmpfs under CI=true (root needed)"
            );
            eprintln!("SKIPPED: cannot mount a tmpfs (root needed)");
            return None;
        }
        Some(SmallFs {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// `len` bytes that do not compress.
fn noise(len: usize) -> Vec<u8> {
    let mut g = Lcg(42);
    (0..len)
        .map(|_| u8::try_from(g.next(256)).expect("below 256"))
        .collect()
}

#[test]
fn a_full_disk_during_a_backup_or_a_release_loses_nothing() {
    let t = Test::bare()
        .file(
            "runbook.toml",
            "[app]\nname = \"t\"\ndeploy_path = \"small/app\"\n\n[env.dev]\ntransport = \"local\"\nbackup_dir = \"tiny/backups\"\nhosts = { a = \"localhost\" }\nroles = { web = [\"a\"] }\nvars = { laravel = false }\n",
        )
        .file("build/index.html", "v1\n")
        .file("big/index.html", "v2\n")
        .file(
            "scripts/release.rhai",
            "let n = release::prepare(hosts(\"web\"), #{ artifact: args.dir });\nrelease::activate(hosts(\"web\"), n);\nprint(n);\n",
        )
        .file(
            "scripts/backup.rhai",
            "print(backup::create(hosts(\"web\")[0], #{}).name);\n",
        )
        .file("scripts/verify.rhai", "print(backup::verify(args.name).ok);\n");
    let Some(small) = SmallFs::mount(&t.path().join("small"), "2m") else {
        return;
    };
    let Some(tiny) = SmallFs::mount(&t.path().join("tiny"), "1m") else {
        return;
    };
    std::fs::write(t.path().join("big/blob"), noise(3 << 20)).unwrap();

    // v1 is live and backed up.
    let v1 = t.run_with(&["run", "release", "-e", "dev", "-q", "dir=build"]);
    v1.code(0);
    let v1 = v1.stdout.trim().to_owned();
    let b1 = t.run_with(&["run", "backup", "-e", "dev", "-q"]);
    b1.code(0);
    let b1 = b1.stdout.trim().to_owned();
    let backups = tiny.path.join("backups");
    let b1_bytes = std::fs::read(backups.join(&b1)).unwrap();

    // The release does not fit: a clear error, v1 still live, no half release left.
    let out = t.run_with(&["run", "release", "-e", "dev", "dir=big"]);
    out.code(1).stderr_has("No space left on device");
    let app = small.path.join("app");
    assert_eq!(
        std::fs::read_link(app.join("current")).unwrap(),
        Path::new("releases").join(&v1)
    );
    assert_eq!(
        std::fs::read_to_string(app.join("current/index.html")).unwrap(),
        "v1\n"
    );
    let releases: Vec<_> = std::fs::read_dir(app.join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(releases.len(), 1, "{releases:?}");

    // A backup that does not fit: a clear error, no archive under a final name, the
    // older backup intact.
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(&backups)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    std::fs::write(app.join("current/blob"), noise(1200 << 10)).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let out = t.run_with(&["run", "backup", "-e", "dev"]);
    out.code(1).stderr_has("No space left on device");
    assert_eq!(listing(), before, "a failed backup left something behind");
    assert_eq!(std::fs::read(backups.join(&b1)).unwrap(), b1_bytes);
    t.run_with(&["run", "verify", "-e", "dev", "-q", &format!("name={b1}")])
        .code(0)
        .stdout_has("true");
    eprintln!("disk full: release refused with v1 live; backup refused, {b1} intact");
}

/// A signal that arrives once the deploy was verified everywhere (here: while the script
/// waits after the strategy returned, as a slow final notification would) no longer
/// undoes it. Before, the failure path switched every host back and the run exited 130.
#[test]
fn a_signal_after_the_deploy_was_verified_leaves_it_in_place() {
    let Some(s) = crate::support::stack::stack() else {
        return;
    };
    let v1 = s.first_release();
    let project = s.project().file(
        "scripts/deploy-then-wait.rhai",
        "import \"strategies/rolling\" as rolling;\nfn on_failure(err) {\n    import \"strategies/rolling\" as rolling;\n    rolling::recover(hosts(\"web\"), err);\n}\nrolling::deploy(hosts(\"web\"), #{ ref: args.ref });\nprint(\"deployed\");\nsleep(6);\n",
    );
    for signal in ["TERM", "HUP"] {
        std::thread::sleep(Duration::from_millis(1100)); // a new release name
        let before = s.current(0);
        let mut child = project
            .command()
            .args(["run", "deploy-then-wait", "-e", "prod", "ref=v2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("deployed") {
            let n = stdout.read(&mut buf).unwrap_or(0);
            assert!(n > 0, "the deploy ended before it was verified");
            seen.extend_from_slice(&buf[..n]);
        }
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "SIG{signal}: {err}");
        assert!(err.contains("already complete"), "SIG{signal}: {err}");
        let now = s.current(0);
        assert_ne!(
            now, before,
            "SIG{signal}: the verified deploy was undone\n{err}"
        );
        assert_ne!(now, v1);
        for i in 0..s.roots.len() {
            assert_eq!(s.current(i), now, "SIG{signal}: host {i}");
        }
        assert!(!Path::new(&s.roots[0].1).join(".runbook/lock").exists());
    }
}

/// The subnet of the namespaced test hosts. Before anything else the test makes it
/// unreachable, so that once a host's link is down its traffic can never go anywhere.
const NETNS_SUBNET: &str = "10.213.0.0/16";

/// A network namespace holding one end of a veth pair (10.213.N.2), the other end
/// (10.213.N.1) on this side: a host the test can cut off. Dropping removes it all.
struct Netns {
    name: String,
    host_if: String,
    addr: String,
    route_added: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let tag = std::process::id() % 200 + 20;
        let mut ns = Netns {
            name: format!("rbt{tag}"),
            host_if: format!("rbh{tag}"),
            addr: format!("10.213.{tag}.2"),
            route_added: false,
        };
        ip(&["route", "add", "unreachable", NETNS_SUBNET])?;
        ns.route_added = true;
        let ns_if = format!("rbn{tag}");
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &ns.name])?;
        ip(&[
            "addr",
            "add",
            &format!("10.213.{tag}.1/30"),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns.name.as_str(), "ip"];
            full.extend_from_slice(args);
            ip(&full)
        };
        inside(&["addr", "add", &format!("{}/30", ns.addr), "dev", &ns_if])?;
        inside(&["link", "set", &ns_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Pulls the cable: the host side of the link goes down.
    fn cut(&self) {
        let _ = ip(&["link", "set", &self.host_if, "down"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
        if self.route_added {
            let _ = ip(&["route", "del", "unreachable", NETNS_SUBNET]);
        }
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn a_host_lost_mid_deploy_is_noticed_the_others_switch_back_and_unlock() {
    let Some(mut fleet) = crate::fleet::Fleet::start(1) else {
        return;
    };
    // Without the right to create namespaces (a container without CAP_NET_ADMIN) there
    // is nothing to cut: say so and stop.
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED: cannot create a network namespace here: {why}");
            return;
        }
    };
    fleet.add_host("lost", &ns.addr, Some(&ns.name)).unwrap();
    let base = tempfile::tempdir_in(format!("/home/{}", crate::fleet::USER)).unwrap();
    Command::new("chown")
        .args(["-R", crate::fleet::USER])
        .arg(base.path())
        .status()
        .unwrap();
    let root = |n: &str| base.path().join(n).display().to_string();
    let hosts: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| {
            format!(
                "{} = {{ address = \"{}\", port = {}, deploy_path = \"{}\" }}",
                h.name,
                h.addr,
                h.port,
                root(&h.name)
            )
        })
        .collect();
    let inventory = format!(
        "[app]\nname = \"t\"\ndeploy_path = \"/srv/unused\"\n\n[ssh]\nuser = \"{u}\"\nidentity_file = \"{k}\"\nknown_hosts = \"{kh}\"\nconnect_timeout = \"3s\"\nkeepalive = \"2s\"\n\n[env.fleet]\nhosts = {{ {h} }}\nroles = {{ web = [\"web1\", \"lost\"] }}\nvars = {{ laravel = false }}\n",
        u = crate::fleet::USER,
        k = fleet.client_key().display(),
        kh = fleet.known_hosts.display(),
        h = hosts.join(", ")
    );
    let t = Test::bare()
        .file("runbook.toml", &inventory)
        .file("build/index.html", "new\n")
        .file(
            "scripts/roll.rhai",
            "fn on_failure(err) {\n    import \"strategies/rolling\" as rolling;\n    rolling::recover(hosts(\"web\"), err);\n}\nlock::acquire(hosts(\"web\"));\nlet n = release::prepare(hosts(\"web\"), #{ artifact: \"build\" });\nrelease::activate(hosts(\"web\"), n);\nprint(`switched ${n}`);\nssh::run(hosts(\"web\"), [\"sleep\", args.hold]);\n",
        );
    t.run_with(&["run", "roll", "-e", "fleet", "-q", "hold=0"])
        .code(0);
    let first = std::fs::read_link(Path::new(&root("web1")).join("current")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));

    let mut child = t
        .command()
        .args(["run", "roll", "-e", "fleet", "--json", "hold=12"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lines
        .iter()
        .any(|(_, l): &(Instant, String)| l.contains("switched "))
    {
        assert!(
            Instant::now() < deadline,
            "the deploy never switched: {lines:?}"
        );
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    ns.cut();
    let deadline = Instant::now() + Duration::from_mins(1);
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            lines.push(l);
        }
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "runbook did not end after losing a host"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let exited = cut.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let noticed = lines
        .iter()
        .find(|(_, l)| {
            l.contains("\"event\":\"command_finished\"")
                && l.contains("\"host\":\"lost\"")
                && !l.contains("\"result\":\"ok\"")
        })
        .map(|(at, _)| at.saturating_duration_since(cut));
    eprintln!(
        "host lost mid-deploy: noticed after {noticed:?} (keepalive 2 s x 2 probes), runbook exited after {exited:?}"
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("lost"),
        "the lost host is not named:\n{stderr}"
    );
    let noticed = noticed.expect("no failed command on the lost host was reported");
    assert!(
        noticed <= Duration::from_secs(10),
        "the loss was noticed after {noticed:?}, past the keep-alive bound"
    );
    // The reachable host is back on its previous release and unlocked; the lost one is
    // reported as not switched back.
    let web1 = Path::new(&root("web1")).to_path_buf();
    assert_eq!(std::fs::read_link(web1.join("current")).unwrap(), first);
    assert!(
        !web1.join(".runbook/lock").exists(),
        "the reachable host is still locked"
    );
    assert!(
        stderr.contains("could not switch back 1 host"),
        "the lost host's state is not reported:\n{stderr}"
    );
}

//! The first day on fresh servers, through the real binary on the sshd fleet: `.env`
//! rendered from a template with the CI job's secrets (the seed's
//! `DB_PASSWORD=${DB_PASSWORD_PRODUCTION}`) against a real MariaDB, a missing variable
//! refused before any host changes, a first deploy without settings refused before the
//! migrations, and the seed's `PRODUCTION_SSH_HOST/USER/KEY` secrets used as they are.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, USER};
use crate::harness::Test;
use crate::laravel::git;
use crate::support::mariadb::MariaDb;
use crate::web::WebStack;

/// Characters a dotenv line would misread unquoted (a space, `#`, `$`).
const PASSWORD: &str = "Sup3r$ecret #1-fd";

const TEMPLATE: &str = "\
APP_NAME=firstday
APP_ENV=production
APP_KEY=
APP_DEBUG=false
LOG_CHANNEL=single
CACHE_DRIVER=file
QUEUE_CONNECTION=sync

# Database: one MariaDB for every host
DB_CONNECTION=mysql
DB_SOCKET=${FD_DB_SOCKET}
DB_DATABASE=firstday
DB_USERNAME=firstday_user
DB_PASSWORD=${DB_PASSWORD_PRODUCTION}
";

/// The deploy an operator runs, then a look at the file (its values must stay masked).
const FIRST: &str = r#"import "strategies/rolling" as rolling;
fn on_failure(err) {
    import "strategies/rolling" as rolling;
    rolling::recover(hosts("web"), err);
}
let web = hosts("web");
rolling::deploy(web, #{ ref: args.ref });
if !run.dry_run {
    let r = ssh::run(web[0], ["cat", `${web[0].deploy_path}/shared/.env`]);
    print(r.stdout);
}
"#;

struct FirstDay {
    fleet: Fleet,
    web: WebStack,
    repo: PathBuf,
    _repo_dir: tempfile::TempDir,
    roots: Vec<(String, String)>,
}

impl Drop for FirstDay {
    fn drop(&mut self) {
        for (_, root) in &self.roots {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// The test app as a real app keeps it: no `.env` in git.
fn app_repo(base: &Path) -> PathBuf {
    let work = base.join("work");
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/laravel");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&app)
            .arg(&work)
            .status()
            .unwrap()
            .success()
    );
    std::fs::remove_file(work.join(".env")).unwrap();
    std::fs::write(work.join(".env.production"), TEMPLATE).unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "v1"]);
    git(&work, &["tag", "v1"]);
    let path = base.join("app.git");
    assert!(
        Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(&path)
            .status()
            .unwrap()
            .success()
    );
    for p in [base, path.as_path()] {
        Command::new("chmod").arg("755").arg(p).status().unwrap();
    }
    Command::new("chown")
        .args(["-R", USER])
        .arg(&path)
        .status()
        .unwrap();
    path
}

fn first_day(n: usize) -> Option<FirstDay> {
    let fleet = Fleet::start(n)?;
    let roots = fleet.deploy_roots("rbfd");
    let sites: Vec<(String, String)> = roots
        .iter()
        .map(|(n, r)| (n.clone(), format!("{r}/current")))
        .collect();
    let web = WebStack::start(&sites)?;
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = app_repo(repo_dir.path());
    Some(FirstDay {
        fleet,
        web,
        repo,
        _repo_dir: repo_dir,
        roots,
    })
}

impl FirstDay {
    /// `env_extra` goes into `[env.fleet]`, `vars` (", k = v") into its vars; every host
    /// has its own url (verified).
    fn inventory(&self, env_extra: &str, vars: &str) -> String {
        let hosts: Vec<String> = self
            .fleet
            .hosts
            .iter()
            .zip(&self.roots)
            .map(|(h, (_, root))| {
                format!(
                    "{} = {{ address = \"{}\", port = {}, deploy_path = \"{root}\", url = \"http://127.0.0.1:{}\" }}",
                    h.name,
                    h.addr,
                    h.port,
                    self.web.port(&h.name)
                )
            })
            .collect();
        let names: Vec<String> = self
            .fleet
            .hosts
            .iter()
            .map(|h| format!("\"{}\"", h.name))
            .collect();
        format!(
            "[app]\nname = \"fd\"\ndeploy_path = \"/srv/unused\"\nrepository = \"{repo}\"\n\n[ssh]\nuser = \"{USER}\"\nidentity_file = \"{key}\"\nknown_hosts = \"{kh}\"\n\n[env.fleet]\n{env_extra}\nvars = {{ backup = {{ before_deploy = false }}{vars} }}\nhosts = {{ {hosts} }}\nroles = {{ web = [{names}] }}\n",
            repo = self.repo.display(),
            key = self.fleet.client_key().display(),
            kh = self.fleet.known_hosts.display(),
            hosts = hosts.join(", "),
            names = names.join(", ")
        )
    }

    fn project(&self, env_extra: &str, vars: &str) -> Test {
        Test::bare()
            .file("runbook.toml", &self.inventory(env_extra, vars))
            // runbook.toml sits in the app's checkout: the template is the app's file.
            .file(".env.production", TEMPLATE)
            .file("scripts/first.rhai", FIRST)
    }

    fn current(&self, i: usize) -> String {
        std::fs::read_link(Path::new(&self.roots[i].1).join("current"))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn releases(&self, i: usize) -> Vec<String> {
        std::fs::read_dir(Path::new(&self.roots[i].1).join("releases"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn a_fresh_fleet_deploys_with_env_from_a_template_against_mariadb_and_the_secret_stays_masked() {
    let Some(day) = first_day(2) else { return };
    let Some(db) = MariaDb::start() else { return };
    // php-fpm and artisan run as the deploy user: they must reach the socket.
    let sock = db.socket();
    Command::new("chmod")
        .arg("755")
        .arg(Path::new(&sock).parent().unwrap())
        .status()
        .unwrap();
    db.sql(&format!(
        "create database firstday; create user 'firstday_user'@'localhost' identified by '{PASSWORD}'; grant all on firstday.* to 'firstday_user'@'localhost';"
    ));
    let t = day
        .project("env_template = \".env.production\"", "")
        .env("DB_PASSWORD_PRODUCTION", PASSWORD)
        .env("FD_DB_SOCKET", &sock);

    // The plan of the first deploy: rendered (so checked), never showing the value.
    let plan = t.path().join("plan.json");
    let dry = t.run_with(&[
        "run",
        "first",
        "-e",
        "fleet",
        "ref=v1",
        "--dry-run",
        "--json",
        "--plan-out",
        plan.to_str().unwrap(),
    ]);
    dry.code(0);
    let plan_text = std::fs::read_to_string(&plan).unwrap();
    assert!(
        plan_text.contains("write shared/.env from the template"),
        "{plan_text}"
    );
    for (what, text) in [
        ("plan", &plan_text),
        ("dry-run events", &dry.stdout),
        ("dry-run stderr", &dry.stderr),
    ] {
        assert!(
            !text.contains(PASSWORD),
            "the secret is in the {what}:\n{text}"
        );
    }
    for (_, root) in &day.roots {
        assert!(
            !Path::new(root).join("releases").exists(),
            "a dry run created releases/ on {root}"
        );
    }

    let out = t.run_with(&["run", "first", "-e", "fleet", "ref=v1", "--json"]);
    out.code(0);
    let events = out.events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "run_finished" && e["result"] == "ok"),
        "{}",
        out.stdout
    );
    // The file was printed — masked, in every stream.
    assert!(
        out.stdout.contains("DB_PASSWORD='***'") && out.stderr.contains("DB_PASSWORD='***'"),
        "the printed .env is not in the output, masked:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    let local_audit = std::fs::read_to_string(t.path().join("audit.jsonl")).unwrap();
    let mut texts = vec![
        ("json events", out.stdout.clone()),
        ("stderr", out.stderr.clone()),
        ("local audit", local_audit),
    ];
    for (name, root) in &day.roots {
        texts.push((
            "a host's audit",
            std::fs::read_to_string(Path::new(root).join(".runbook/audit.jsonl"))
                .unwrap_or_else(|e| panic!("{name}: no audit on the host: {e}")),
        ));
    }
    for (what, text) in &texts {
        assert!(
            !text.contains(PASSWORD),
            "the secret is in the {what}:\n{text}"
        );
    }

    // Every host has the rendered file, 0640, the value quoted so dotenv reads it back.
    for (name, root) in &day.roots {
        let env = Path::new(root).join("shared/.env");
        assert_eq!(mode(&env), 0o640, "{name}: mode of shared/.env");
        let text = std::fs::read_to_string(&env).unwrap();
        assert!(
            text.contains(&format!("DB_PASSWORD='{PASSWORD}'\n")),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!("DB_SOCKET={sock}\n")),
            "{name}: {text}"
        );
        let leftovers: Vec<String> = std::fs::read_dir(Path::new(root).join("shared"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".runbook-env"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
    }
    // The migrations ran once, on MariaDB, with the password from the template; every
    // host serves the release from that database through nginx.
    assert_eq!(
        db.sql("select count(*) from firstday.migrations").trim(),
        "1"
    );
    let live = day.current(0);
    assert!(!live.is_empty());
    for (i, (name, _)) in day.roots.iter().enumerate() {
        assert_eq!(day.current(i), live, "{name}");
        let (status, body) = day.web.get(name, "/api/health");
        assert_eq!(status, 200, "{name}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(json["release"], live.as_str(), "{name}: {body}");
        assert_eq!(json["migrations"], 1, "{name}: {body}");
    }
}

#[test]
fn a_missing_template_variable_refuses_the_deploy_before_any_host_changes() {
    let Some(day) = first_day(2) else { return };
    let t = day
        .project("env_template = \".env.production\"", "")
        .env("FD_DB_SOCKET", "/run/mysqld/fd.sock")
        .env("DB_PASSWORD_PRODUCTION", "");
    let out = t.run_with(&["run", "first", "-e", "fleet", "ref=v1"]);
    out.code(1)
        .stderr_has("needs DB_PASSWORD_PRODUCTION, which is not set here")
        .stderr_has(".env.production:14: DB_PASSWORD=${DB_PASSWORD_PRODUCTION}")
        .stderr_has("nothing was changed on any host");
    // No lock, no releases/, no shared/, no current: only the run's audit line (written by
    // the failure path, which is not this test's concern) may be there.
    for (name, root) in &day.roots {
        let found = Command::new("find")
            .arg(root)
            .arg("-mindepth")
            .arg("1")
            .output()
            .unwrap();
        let found = String::from_utf8_lossy(&found.stdout);
        let changed: Vec<&str> = found
            .lines()
            .filter(|p| !p.ends_with("/.runbook") && !p.ends_with("/.runbook/audit.jsonl"))
            .collect();
        assert!(
            changed.is_empty(),
            "{name}: the refused deploy changed the host: {changed:?}"
        );
    }
    // `runbook check` says what a deploy will need, without failing a lint job.
    t.run_with(&["check"])
        .code(0)
        .stderr_has(".env.production:14 reads DB_PASSWORD_PRODUCTION, which is not set here");
}

#[test]
fn without_a_template_an_empty_env_stops_the_first_deploy_before_the_migrations() {
    let Some(day) = first_day(2) else { return };
    // SQLite: each host has its own database file, each migrates it.
    let t = day.project("", ", database_per_host = true");
    let out = t.run_with(&["run", "first", "-e", "fleet", "ref=v1"]);
    out.code(1)
        .stderr_has(
            "the first deploy needs the app's settings, but shared/.env is missing or empty",
        )
        .stderr_has(&format!("web1: {}/shared/.env", day.roots[0].1))
        .stderr_has("env_template = \".env.production\"");
    assert!(
        !out.stderr.contains("artisan migrate"),
        "the migrations ran:\n{}",
        out.stderr
    );
    for (i, (name, _)) in day.roots.iter().enumerate() {
        assert_eq!(day.current(i), "", "{name} was switched");
        assert!(day.releases(i).is_empty(), "{name}: {:?}", day.releases(i));
    }
    // What the sentence says to do: put the settings there. Then the deploy goes through.
    for (_, root) in &day.roots {
        let env = Path::new(root).join("shared/.env");
        std::fs::write(&env, "APP_NAME=firstday\nDB_CONNECTION=sqlite\n").unwrap();
        Command::new("chown").arg(USER).arg(&env).status().unwrap();
    }
    t.run_with(&["run", "first", "-e", "fleet", "ref=v1", "-q"])
        .code(0);
    assert_eq!(day.web.get("web2", "/api/health").0, 200);
}

/// The key-file directory of a run (under the run's TMPDIR), if one exists now.
fn key_dir(tmp: &Path) -> Option<PathBuf> {
    std::fs::read_dir(tmp)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("rb-key-"))
        })
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario end to end on one fleet, read top to bottom"
)]
fn the_seeds_ssh_secrets_name_the_host_user_and_key_and_the_key_lives_only_for_the_run() {
    let Some(fleet) = Fleet::start(1) else { return };
    let h = &fleet.hosts[0];
    let key = std::fs::read_to_string(fleet.client_key()).unwrap();
    let inventory = format!(
        "[app]\nname = \"fd\"\ndeploy_path = \"/home/{USER}/fd-unused\"\n\n[ssh]\nuser = {{ env = \"FD_SSH_USER\" }}\nidentity = {{ env = \"FD_SSH_KEY\" }}\nknown_hosts = \"{kh}\"\nconnect_timeout = \"5s\"\n\n[env.production]\nhosts = {{ web1 = {{ address = {{ env = \"FD_SSH_HOST\" }} }} }}\nroles = {{ web = [\"web1\"] }}\n",
        kh = fleet.known_hosts.display()
    );
    let t = Test::bare()
        .file("runbook.toml", &inventory)
        .file(
            "scripts/who.rhai",
            "let who = ssh::run(host(\"web1\"), [\"id\", \"-un\"]).stdout;\nwho.trim();\nprint(`login: ${who}`);\n",
        )
        .file(
            "scripts/wait.rhai",
            "ssh::run(host(\"web1\"), [\"sleep\", \"30\"]);\n",
        )
        .file("scripts/boom.rhai", "ssh::run(host(\"web1\"), [\"true\"]);\nthrow \"boom\";\n");
    let home = t.path().join("home");
    let tmp = t.path().join("tmp");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    // No other key anywhere: no agent, an empty HOME.
    let command = |key: &str, host: Option<&str>, args: &[&str]| {
        let mut c = t.command();
        c.args(args)
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env_remove("SSH_AUTH_SOCK")
            .env("FD_SSH_USER", USER)
            .env("FD_SSH_KEY", key);
        match host {
            Some(a) => c.env("FD_SSH_HOST", a),
            None => c.env_remove("FD_SSH_HOST"),
        };
        c
    };
    let address = format!("{}:{}", h.addr, h.port);
    let out = command(&key, Some(&address), &["run", "who", "-e", "production"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("login: {USER}")),
        "{stdout}\n{stderr}"
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
    assert_eq!(key_dir(&tmp), None, "the key outlived the run");

    // The key used is the variable's: another key is refused by the host.
    let other = tempfile::tempdir().unwrap();
    let other_key = other.path().join("k");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&other_key)
            .status()
            .unwrap()
            .success()
    );
    let other_key = std::fs::read_to_string(&other_key).unwrap();
    let out = command(
        &other_key,
        Some(&address),
        &["run", "who", "-e", "production"],
    )
    .output()
    .unwrap();
    assert!(
        !out.status.success(),
        "connected with a key the host does not know"
    );
    assert_eq!(key_dir(&tmp), None, "the key outlived a failed run");

    // During a run: a 0700 directory holding a 0600 file; gone after an error and after SIGTERM.
    let out = command(&key, Some(&address), &["run", "boom", "-e", "production"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(key_dir(&tmp), None, "the key outlived a script error");
    let mut child = command(&key, Some(&address), &["run", "wait", "-e", "production"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let dir = loop {
        if let Some(d) = key_dir(&tmp)
            && d.join("key-1").exists()
        {
            break d;
        }
        assert!(Instant::now() < deadline, "no key file appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("key-1")), 0o600);
    assert_eq!(std::fs::read_to_string(dir.join("key-1")).unwrap(), key);
    std::thread::sleep(Duration::from_millis(500)); // the remote sleep is running
    // The material is in no process's argument list (runbook's, ssh's, the master's).
    let body = key.lines().nth(1).unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(body),
                "the key is in the argv of process {:?}",
                entry.file_name()
            );
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(!dir.exists(), "the key outlived a SIGTERM");

    // A secret that is not set: refused, naming the key; `runbook check` says so too.
    let out = command(&key, None, &["run", "who", "-e", "production"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "`env.production.hosts.web1.address`: reads FD_SSH_HOST, which is not set here"
        ),
        "{stderr}"
    );
    let out = command(&key, None, &["check"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("runbook.toml `env.production.hosts.web1.address` reads FD_SSH_HOST"),
        "{stderr}"
    );
}

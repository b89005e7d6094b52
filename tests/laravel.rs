//! Releases, locks and artisan on the sshd fleet with a real Laravel app behind real
//! nginx + php-fpm: what an on-call engineer sees through the browser after each step.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{Fleet, USER};
use crate::harness::Test;
use crate::web::WebStack;

/// A bare git repository (owned by the deploy user, as on a real git server) holding the
/// test app at tag v1; v2 adds a migration; v3-flaky and v4-broken answer 5% and 100% of
/// health checks with 500; v5-slow-migration is healthy again with a migration that takes
/// 3 s; v7-fail-1pct fails exactly one answer in 100 on each host and v8-slow answers
/// 200 ms slower (both v2 otherwise). Each tag's `App\Build::NAME` is the tag, so the code
/// that runs names itself.
pub(crate) struct Repo {
    pub path: PathBuf,
}

pub(crate) fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

impl Repo {
    pub(crate) fn create(base: &Path) -> Repo {
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
        let build = |tag: &str| {
            std::fs::write(
                work.join("app/Build.php"),
                format!("<?php\n\nnamespace App;\n\n/** Which tag of the test app this code is: each tag's commit rewrites it. */\nfinal class Build\n{{\n    public const NAME = '{tag}';\n}}\n"),
            )
            .unwrap();
        };
        git(&work, &["init", "-q"]);
        build("v1");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "v1"]);
        git(&work, &["tag", "v1"]);
        std::fs::write(
            work.join("database/migrations/2026_02_01_000000_create_notes_table.php"),
            "<?php\nuse Illuminate\\Database\\Migrations\\Migration;\nuse Illuminate\\Database\\Schema\\Blueprint;\nuse Illuminate\\Support\\Facades\\Schema;\nreturn new class extends Migration {\n    public function up() { Schema::create('notes', function (Blueprint $t) { $t->id(); }); }\n    public function down() { Schema::dropIfExists('notes'); }\n};\n",
        )
        .unwrap();
        build("v2");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "v2"]);
        git(&work, &["tag", "v2"]);
        // Releases that fail on purpose: 5% of answers (a canary to stop), then all.
        for (rate, tag) in [("5", "v3-flaky"), ("100", "v4-broken")] {
            std::fs::write(work.join("FAIL_RATE"), rate).unwrap();
            build(tag);
            git(&work, &["add", "-A"]);
            git(&work, &["commit", "-qm", tag]);
            git(&work, &["tag", tag]);
        }
        // Canary subjects beside v2 (no migration of their own): one answer in 100 fails
        // on each host (v7-fail-1pct, below the 99.5% gate); every answer 200 ms slower but
        // all successful (v8-slow).
        git(&work, &["checkout", "-q", "-b", "canary-subjects", "v2"]);
        for (file, value, tag) in [
            ("FAIL_EVERY", "100", "v7-fail-1pct"),
            ("SLOW_MS", "200", "v8-slow"),
        ] {
            let _ = std::fs::remove_file(work.join("FAIL_RATE"));
            let _ = std::fs::remove_file(work.join("FAIL_EVERY"));
            std::fs::write(work.join(file), value).unwrap();
            build(tag);
            git(&work, &["add", "-A"]);
            git(&work, &["commit", "-qm", tag]);
            git(&work, &["tag", tag]);
        }
        git(&work, &["checkout", "-q", "main"]);
        // Healthy again, with a migration that takes 3 s (one shared database: it must
        // run once, and nobody may start it a second time meanwhile).
        std::fs::remove_file(work.join("FAIL_RATE")).unwrap();
        std::fs::write(
            work.join("database/migrations/2026_03_01_000000_create_feature_flags_table.php"),
            "<?php\nuse Illuminate\\Database\\Migrations\\Migration;\nuse Illuminate\\Database\\Schema\\Blueprint;\nuse Illuminate\\Support\\Facades\\Schema;\nreturn new class extends Migration {\n    public function up() { sleep(3); Schema::create('feature_flags', function (Blueprint $t) { $t->id(); $t->string('name'); }); }\n    public function down() { Schema::dropIfExists('feature_flags'); }\n};\n",
        )
        .unwrap();
        build("v5-slow-migration");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "v5-slow-migration"]);
        git(&work, &["tag", "v5-slow-migration"]);
        // A destructive change: the old code still reads `feature_flags.name`.
        std::fs::write(
            work.join("database/migrations/2026_04_01_000000_drop_feature_flag_names.php"),
            "<?php\nuse Illuminate\\Database\\Migrations\\Migration;\nuse Illuminate\\Database\\Schema\\Blueprint;\nuse Illuminate\\Support\\Facades\\Schema;\nreturn new class extends Migration {\n    public function up() { Schema::table('feature_flags', function (Blueprint $t) { $t->dropColumn('name'); }); }\n    public function down() { Schema::table('feature_flags', function (Blueprint $t) { $t->string('name')->default(''); }); }\n};\n",
        )
        .unwrap();
        build("v6-drop-column");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "v6-drop-column"]);
        git(&work, &["tag", "v6-drop-column"]);
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
        Repo { path }
    }
}

struct Site {
    fleet: Fleet,
    web: WebStack,
    repo: Repo,
    _repo_dir: tempfile::TempDir,
    roots: Vec<(String, String)>,
}

impl Drop for Site {
    fn drop(&mut self) {
        for (_, root) in &self.roots {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

fn site(n: usize) -> Option<Site> {
    let fleet = Fleet::start(n)?;
    let roots = fleet.deploy_roots("rbt");
    // Each host's DR scratch layout gets a private port of its own.
    let mut sites: Vec<(String, String)> = roots
        .iter()
        .map(|(n, r)| (n.clone(), format!("{r}/current")))
        .collect();
    sites.extend(
        roots
            .iter()
            .map(|(n, r)| (format!("{n}-dr"), format!("{r}/.runbook/dr/current"))),
    );
    let web = WebStack::start(&sites)?;
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = Repo::create(repo_dir.path());
    Some(Site {
        fleet,
        web,
        repo,
        _repo_dir: repo_dir,
        roots,
    })
}

impl Site {
    fn inventory(&self) -> String {
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
        format!(
            "[app]\nname = \"t\"\ndeploy_path = \"/srv/unused\"\nrepository = \"{repo}\"\nkeep_releases = 2\n\n[ssh]\nuser = \"{USER}\"\nidentity_file = \"{key}\"\nknown_hosts = \"{kh}\"\n\n[env.fleet]\nbackup_dir = \"{backups}\"\nvars = {{ dr_url = \"http://127.0.0.1:{dr}\", database_per_host = true }}\nhosts = {{ {hosts} }}\nroles = {{ web = [{names}] }}\n",
            backups = self.backups(),
            dr = self.web.port("web1-dr"),
            repo = self.repo.path.display(),
            key = self.fleet.client_key().display(),
            kh = self.fleet.known_hosts.display(),
            hosts = hosts.join(", "),
            names = names.join(", ")
        )
    }

    /// The environment's backup_dir (on the hosts, which share this machine's disk).
    fn backups(&self) -> String {
        let root = Path::new(&self.roots[0].1);
        root.parent()
            .map(|p| p.join("backups"))
            .unwrap_or_default()
            .display()
            .to_string()
    }

    fn project(&self) -> Test {
        let deploy =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/deploy.rhai"))
                .unwrap();
        Test::bare()
            .file("runbook.toml", &self.inventory())
            .file("scripts/deploy.rhai", &deploy)
            .file(
                "scripts/down.rhai",
                "import \"laravel\" as laravel;\nlaravel::down(hosts(\"web\"));\n",
            )
            .file(
                "scripts/up.rhai",
                "import \"laravel\" as laravel;\nlaravel::up(hosts(\"web\"));\n",
            )
            .file(
                "scripts/rollback.rhai",
                "let r = release::rollback(hosts(\"web\"));\nprint(r);\n",
            )
            .file(
                "scripts/hold.rhai",
                "lock::acquire(hosts(\"web\"));\nprint(\"holding\");\nsleep(60);\n",
            )
            .file(
                "scripts/hold-down.rhai",
                "lock::acquire(hosts(\"web\"));\nartisan::run(hosts(\"web\"), [\"down\"]);\nprint(\"holding\");\nsleep(60);\n",
            )
    }

    fn run(&self, args: &[&str]) -> crate::harness::Output {
        self.project().args(args).run()
    }

    /// The release each host's nginx serves, from /api/health.
    fn served(&self, host: &str) -> (u16, Option<String>, i64) {
        let (status, body) = self.web.get(host, "/api/health");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        (
            status,
            json["release"].as_str().map(str::to_owned),
            json["migrations"].as_i64().unwrap_or(-1),
        )
    }

    fn current(&self, i: usize) -> String {
        std::fs::read_link(Path::new(&self.roots[i].1).join("current"))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn releases(&self, i: usize) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(Path::new(&self.roots[i].1).join("releases"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[test]
fn a_full_release_cycle_is_visible_through_nginx() {
    let Some(site) = site(2) else { return };

    // v1: first deploy from git.
    site.run(&["run", "deploy", "-e", "fleet", "ref=v1", "-q"])
        .code(0);
    let v1 = site.current(0);
    assert!(!v1.is_empty());
    for (host, _) in &site.roots {
        assert_eq!(
            site.served(host),
            (200, Some(v1.clone()), 1),
            "{host} after v1"
        );
    }

    // v2 brings a migration; nginx serves the new release on the next request.
    std::thread::sleep(Duration::from_millis(1100)); // a new second: a new release name
    site.run(&["run", "deploy", "-e", "fleet", "ref=v2", "-q"])
        .code(0);
    let v2 = site.current(0);
    assert_ne!(v1, v2);
    for (host, _) in &site.roots {
        assert_eq!(
            site.served(host),
            (200, Some(v2.clone()), 2),
            "{host} after v2"
        );
    }
    let meta = std::fs::read_to_string(
        Path::new(&site.roots[0].1).join(format!(".runbook/releases/{v2}.json")),
    )
    .unwrap();
    assert!(meta.contains("\"ref\":\"v2\""), "{meta}");
    // What a rollback from v2 to v1 would leave the database ahead of.
    site.project()
        .file(
            "scripts/mig.rhai",
            &format!("print(release::new_migrations(host(\"web1\"), \"{v1}\", \"{v2}\"));"),
        )
        .args(&["run", "mig", "-e", "fleet", "-q"])
        .run()
        .code(0)
        .stdout_has("[\"2026_02_01_000000_create_notes_table.php\"]");

    // Maintenance mode, for real.
    site.run(&["run", "down", "-e", "fleet", "-q"]).code(0);
    assert_eq!(site.web.get("web1", "/api/health").0, 503);
    site.run(&["run", "up", "-e", "fleet", "-q"]).code(0);
    assert_eq!(site.web.get("web1", "/api/health").0, 200);

    // A ref that does not exist: nothing changes, no half-release is left.
    let before = site.releases(0);
    site.run(&["run", "deploy", "-e", "fleet", "ref=no-such-tag", "-q"])
        .code(1)
        .stderr_has("ref 'no-such-tag' does not exist");
    assert_eq!(site.releases(0), before);
    assert_eq!(site.current(0), v2);
    assert_eq!(site.served("web2").1, Some(v2.clone()));

    // Rollback: back to v1, and v2 is marked bad.
    site.run(&["run", "rollback", "-e", "fleet", "-q"]).code(0);
    for (host, _) in &site.roots {
        assert_eq!(
            site.served(host).1,
            Some(v1.clone()),
            "{host} after rollback"
        );
    }
    assert!(
        Path::new(&site.roots[1].1)
            .join(format!(".runbook/bad/{v2}"))
            .exists()
    );

    // Cleanup keeps 2 (keep_releases), the live one among them.
    std::thread::sleep(Duration::from_millis(1100));
    site.run(&["run", "deploy", "-e", "fleet", "ref=v2", "-q"])
        .code(0);
    let releases = site.releases(0);
    assert_eq!(releases.len(), 2, "{releases:?}");
    assert!(releases.contains(&site.current(0)));
}

#[test]
fn an_artifact_deploys_without_git_on_the_hosts() {
    let Some(site) = site(1) else { return };
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/laravel");
    let out = site.run(&[
        "run",
        "deploy",
        "-e",
        "fleet",
        &format!("artifact={}", app.display()),
        "-q",
    ]);
    out.code(0);
    assert_eq!(site.served("web1"), (200, Some(site.current(0)), 1));
}

/// A deploy that loses the lock race touches nothing: before, its failure path ran
/// `php artisan up` on the fleet and lifted the maintenance mode of the run holding it.
#[test]
fn a_deploy_refused_by_the_lock_leaves_the_holders_maintenance_mode_alone() {
    let Some(site) = site(2) else { return };
    site.run(&["run", "deploy", "-e", "fleet", "ref=v1", "-q"])
        .code(0);
    let live: Vec<String> = (0..2).map(|i| site.current(i)).collect();
    let holding = site.project().args(&["run", "hold-down", "-e", "fleet"]);
    let mut holder = holding
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.served("web2").0 != 503 {
        if let Ok(Some(_)) = holder.try_wait() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut holder.stderr.take().unwrap(), &mut err);
            panic!("the holder ended early: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "the holder never turned maintenance on"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = site.run(&["run", "deploy", "-e", "fleet", "ref=v2"]);
    let _ = holder.kill();
    let _ = holder.wait();
    out.code(1)
        .stderr_has("the deploy lock is held by another run");
    assert!(!out.stderr.contains("artisan up"), "{}", out.stderr);
    for (i, host) in ["web1", "web2"].iter().enumerate() {
        assert_eq!(
            site.served(host).0,
            503,
            "{host}: the refused deploy lifted the holder's maintenance mode"
        );
        assert_eq!(
            site.current(i),
            live[i],
            "{host}: the refused deploy switched"
        );
    }
}

#[test]
fn a_second_run_is_refused_while_the_lock_is_held_and_sigterm_releases_it() {
    let Some(site) = site(2) else { return };
    let holder = site
        .project()
        .args(&["run", "hold", "-e", "fleet", "--reason", "long migration"]);
    let mut child = holder
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = Path::new(&site.roots[0].1).join(".runbook/lock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lock.join("heartbeat").exists() {
        assert!(
            Instant::now() < deadline,
            "the first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = site.run(&["run", "deploy", "-e", "fleet", "ref=v1", "-q"]);
    out.code(1)
        .stderr_has("the deploy lock is held by another run")
        .stderr_has("running `scripts/hold.rhai`")
        .stderr_has("reason: long migration")
        .stderr_has("--lock-wait");
    assert!(
        site.current(0).is_empty(),
        "the refused run deployed anyway"
    );

    // A run that waits for the lock gets it once the holder is gone.
    let waiter = site.project().args(&[
        "run",
        "deploy",
        "-e",
        "fleet",
        "ref=v1",
        "-q",
        "--lock-wait",
        "2m",
    ]);
    let waiting = waiter
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().cast_signed()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the waiting deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !site.current(0).is_empty(),
        "the waiting deploy did not deploy"
    );
    for (_, root) in &site.roots {
        assert!(
            !Path::new(root).join(".runbook/lock").exists(),
            "a lock was left on {root}"
        );
    }
}

#[test]
fn only_a_stale_lock_is_removed_by_unlock_stale() {
    let Some(site) = site(1) else { return };
    let lock = Path::new(&site.roots[0].1).join(".runbook/lock");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(lock.join("info"), r#"{"run":"dead-run","actor":"bob","machine":"ci-7","pid":1,"script":"scripts/deploy.rhai","reason":null,"ci_run":null,"started_at":"2026-11-27T00:00:00Z"}"#).unwrap();
    std::fs::write(lock.join("heartbeat"), "").unwrap();
    Command::new("chown")
        .args(["-R", USER])
        .arg(lock.parent().unwrap().parent().unwrap())
        .status()
        .unwrap();
    site.run(&["unlock", "-e", "fleet", "--stale"])
        .code(1)
        .stderr_has("is live");
    assert!(lock.exists());
    Command::new("touch")
        .args(["-d", "5 minutes ago"])
        .arg(lock.join("heartbeat"))
        .status()
        .unwrap();
    site.run(&["unlock", "-e", "fleet", "--stale"])
        .code(0)
        .stderr_has("removed the lock of bob (run dead-run");
    assert!(!lock.exists());
}

#[test]
fn an_ssh_host_is_backed_up_and_restored_with_its_database() {
    let Some(site) = site(1) else { return };
    site.run(&["run", "deploy", "-e", "fleet", "ref=v1", "-q"])
        .code(0);
    let v1 = site.current(0);
    let root = site.roots[0].1.clone();
    let db = format!(
        "#{{ database: #{{ driver: \"sqlite\", path: \"{root}/shared/storage/database.sqlite\" }} }}"
    );
    let out = site
        .project()
        .file(
            "scripts/b.rhai",
            &format!("let b = backup::create(host(\"web1\"), {db});\nprint(b.name);\nprint(backup::list(host(\"web1\")).len());\nprint(backup::verify(host(\"web1\"), b.name).ok);"),
        )
        .args(&["run", "b", "-e", "fleet", "-q"])
        .run();
    out.code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let name = lines[0].to_owned();
    assert_eq!(&lines[1..], ["1", "true"]);
    assert!(
        Path::new(&site.backups()).join(&name).is_file(),
        "the archive is stored on the host"
    );

    // v2 migrates the database; the restore brings back v1's code AND its database.
    std::thread::sleep(Duration::from_millis(1100));
    site.run(&["run", "deploy", "-e", "fleet", "ref=v2", "-q"])
        .code(0);
    assert_eq!(site.served("web1").2, 2);
    std::thread::sleep(Duration::from_millis(1100));
    let out = site
        .project()
        .file(
            "scripts/r.rhai",
            &format!("print(backup::restore(host(\"web1\"), \"{name}\", {db}));"),
        )
        .args(&["run", "r", "-e", "fleet", "-q"])
        .run();
    out.code(0);
    let restored = out.stdout.trim().to_owned();
    assert_ne!(restored, v1);
    assert_eq!(site.current(0), restored);
    assert_eq!(
        site.served("web1"),
        (200, Some(restored.clone()), 1),
        "restored code and database"
    );
    let same = |rel: &str| {
        std::fs::read(Path::new(&root).join("releases").join(&v1).join(rel)).unwrap()
            == std::fs::read(Path::new(&root).join("releases").join(&restored).join(rel)).unwrap()
    };
    assert!(same("routes/web.php") && same("artisan") && same("REVISION"));

    // A second backup; pruning to one keeps the newest that verifies.
    std::thread::sleep(Duration::from_millis(1100));
    let out = site
        .project()
        .file("scripts/p.rhai", "let b = backup::create(host(\"web1\"), #{});\nprint(backup::prune(host(\"web1\"), #{ keep: 1 }));\nprint(backup::list(host(\"web1\")).map(|s| s.name));")
        .args(&["run", "p", "-e", "fleet", "-q"])
        .run();
    out.code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    // The older ones go: this one and the v2 deploy's own pre-deploy backup.
    assert!(
        lines[0].contains(&name),
        "the older backup was pruned: {}",
        lines[0]
    );
    assert_eq!(lines[0].matches("backup-").count(), 2, "{}", lines[0]);
    assert!(!lines[1].contains(&name));
    assert!(!Path::new(&site.backups()).join(&name).exists());
}

#[test]
fn a_dry_run_of_the_rolling_deploy_records_the_whole_plan_and_touches_no_host() {
    let Some(site) = site(1) else { return };
    let t = site.project();
    let plan = t.path().join("plan.json");
    t.run_with(&[
        "run",
        "deploy",
        "-e",
        "fleet",
        "ref=v1",
        "--dry-run",
        "--plan-out",
        plan.to_str().unwrap(),
    ])
    .code(0)
    .stderr_has("nothing was executed");
    assert!(
        !Path::new(&site.roots[0].1).exists(),
        "a dry run created the deploy path"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    assert_eq!(doc["format"], 1);
    assert_eq!(doc["script"], "scripts/deploy.rhai");
    assert_eq!(doc["hosts"], serde_json::json!(["web1"]));
    let actions = doc["actions"].as_array().unwrap();
    let labels: Vec<String> = actions
        .iter()
        .map(|a| {
            a["label"]
                .as_str()
                .or(a["message"].as_str())
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let position = |needle: &str| {
        labels
            .iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in {labels:#?}"))
    };
    // The seed's order, every effect recorded.
    let order = [
        position("lock free: it would be taken"),
        position("release: fetch v1"),
        position("release: link shared paths"),
        position("release: switch current to"),
        position("release: clean up"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{labels:#?}");
    let artisan: Vec<&serde_json::Value> = actions
        .iter()
        .filter(|a| a["argv"][1] == "artisan")
        .collect();
    let verbs: Vec<&str> = artisan
        .iter()
        .map(|a| a["argv"][2].as_str().unwrap())
        .collect();
    assert_eq!(verbs, ["migrate", "optimize", "queue:restart"]);
    assert!(
        actions
            .iter()
            .all(|a| a["kind"] != "command" || a["synthetic_result"] == true)
    );
    // What it read, it read for real (a first deploy: nothing live yet).
    let reads: Vec<&str> = actions
        .iter()
        .filter(|a| a["kind"] == "read")
        .filter_map(|a| a["label"].as_str())
        .collect();
    assert!(reads.contains(&"release: list"), "{reads:?}");
    assert!(
        actions
            .iter()
            .all(|a| a["kind"] != "read" || a["synthetic_result"] == false)
    );
    assert!(
        actions
            .iter()
            .all(|a| a["n"].as_u64().is_some() && a["host"] == "web1" || a["kind"] != "command")
    );
}

#[test]
fn the_monthly_dr_test_restores_the_newest_backup_privately_and_health_checks_it() {
    let Some(site) = site(1) else { return };
    site.run(&["run", "deploy", "-e", "fleet", "ref=v1", "-q"])
        .code(0);
    let live = site.current(0);
    site.project()
        .file("scripts/b.rhai", "backup::create(host(\"web1\"), #{});")
        .args(&["run", "b", "-e", "fleet", "-q"])
        .run()
        .code(0);
    let dr = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/maintenance/dr-test.rhai"
    ))
    .unwrap();
    let out = site
        .project()
        .file("scripts/maintenance/dr-test.rhai", &dr)
        .args(&[
            "run",
            "maintenance/dr-test",
            "-e",
            "fleet",
            "host=web1",
            "-q",
        ])
        .run();
    out.code(0)
        .stdout_has("DR test passed: backup-")
        .stdout_has("on web1, release ");
    // The live site never moved, and the scratch layout is gone again.
    assert_eq!(site.current(0), live);
    assert_eq!(site.served("web1").1, Some(live.clone()));
    assert!(!Path::new(&site.roots[0].1).join(".runbook/dr").exists());
}

//! Backups on the local transport: round trip, database, safety, pruning, a full disk.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::harness::Test;
use crate::support::mariadb::MariaDb;

fn project() -> Test {
    Test::bare().file(
        "runbook.toml",
        "[app]\nname = \"t\"\ndeploy_path = \"deploy\"\nshared_files = [\".env\"]\n[env.dev]\ntransport = \"local\"\nbackup_dir = \"backups\"\nhosts = { a = \"localhost\" }\nroles = { web = [\"a\"] }\n",
    )
}

/// A deployed release with modes, links, an empty dir and old mtimes.
fn deploy(t: &Test) -> String {
    let root = t.path().join("deploy");
    let rel = root.join("releases/20260101T000000Z");
    std::fs::create_dir_all(rel.join("public/empty")).unwrap();
    std::fs::create_dir_all(rel.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("shared/storage")).unwrap();
    std::fs::write(rel.join("public/index.php"), "<?php echo 'v1';\n").unwrap();
    std::fs::write(rel.join("bin/tool"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(rel.join("bin/tool"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::write(root.join("shared/.env"), "APP_KEY=base64:abc\n").unwrap();
    std::os::unix::fs::symlink(root.join("shared/storage"), rel.join("storage")).unwrap();
    std::os::unix::fs::symlink("bin/tool", rel.join("tool-link")).unwrap();
    std::os::unix::fs::symlink("nowhere", rel.join("dangling")).unwrap();
    for (p, t) in [
        ("public/index.php", 1_700_000_000),
        ("public/empty", 1_650_000_000),
        ("public", 1_600_000_000),
    ] {
        filetime::set_file_mtime(rel.join(p), filetime::FileTime::from_unix_time(t, 0)).unwrap();
    }
    std::os::unix::fs::symlink("releases/20260101T000000Z", root.join("current")).unwrap();
    "20260101T000000Z".into()
}

/// (relative path, kind, mode, size, mtime, link target, content) of one entry.
type Snap = (String, String, u32, u64, i64, String, Vec<u8>);

/// Every entry of a tree, for comparing trees exactly.
fn snapshot(dir: &Path) -> Vec<Snap> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .flatten()
    {
        let rel = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let (kind, target, content) = if m.file_type().is_symlink() {
            (
                "link",
                std::fs::read_link(e.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                vec![],
            )
        } else if m.is_dir() {
            ("dir", String::new(), vec![])
        } else {
            ("file", String::new(), std::fs::read(e.path()).unwrap())
        };
        let mtime = if kind == "link" { 0 } else { m.mtime() };
        out.push((
            rel,
            kind.to_owned(),
            m.mode() & 0o7777,
            if kind == "file" { m.len() } else { 0 },
            mtime,
            target,
            content,
        ));
    }
    out
}

#[test]
fn create_verify_restore_gives_back_an_identical_tree_in_a_new_release() {
    let t = project();
    let old = deploy(&t);
    let t = t.file(
        "scripts/b.rhai",
        "let b = backup::create(host(\"a\"), #{});\nprint(`name=${b.name}`);\nbackup::verify(b.name);\nlet r = backup::restore(host(\"a\"), b.name, #{});\nprint(`restored=${r}`);\nprint(`listed=${backup::list().len()}`);\n",
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = t.run_with(&["run", "b", "-e", "dev", "-q"]);
    out.code(0).stdout_has("listed=1");
    let restored = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("restored="))
        .unwrap()
        .to_owned();
    assert_ne!(restored, old);
    let root = t.path().join("deploy");
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap(),
        Path::new(&format!("releases/{restored}"))
    );
    assert_eq!(
        snapshot(&root.join("releases").join(&restored)),
        snapshot(&root.join("releases").join(&old)),
        "the restored release differs from the original"
    );
    let name = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("name="))
        .unwrap()
        .to_owned();
    assert!(name.starts_with("backup-") && name.ends_with(".tar.gz"));
    // GNU tar reads the archive too.
    let ok = Command::new("tar")
        .arg("-tzf")
        .arg(t.path().join("backups").join(&name))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ok.stdout).contains("release/public/index.php"));
}

#[test]
fn a_damaged_archive_fails_verification_and_restore_touches_nothing() {
    let t = project();
    deploy(&t);
    let t = t.file(
        "scripts/b.rhai",
        "print(backup::create(host(\"a\"), #{}).name);",
    );
    let out = t.run_with(&["run", "b", "-e", "dev", "-q"]);
    out.code(0);
    let name = out.stdout.trim().to_owned();
    let path = t.path().join("backups").join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let before = std::fs::read_dir(t.path().join("deploy/releases"))
        .unwrap()
        .count();
    std::fs::write(
        t.path().join("scripts/r.rhai"),
        format!("backup::restore(host(\"a\"), \"{name}\", #{{}});"),
    )
    .unwrap();
    let mut cmd = t.command();
    let out = cmd.args(["run", "r", "-e", "dev", "-q"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("damaged") || stderr.contains("does not match"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(t.path().join("deploy/releases"))
            .unwrap()
            .count(),
        before,
        "a release was created"
    );
    assert_eq!(
        std::fs::read_link(t.path().join("deploy/current")).unwrap(),
        Path::new("releases/20260101T000000Z")
    );
}

#[test]
fn the_sqlite_database_comes_back_exactly() {
    if Command::new("sqlite3").arg("-version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "sqlite3 is missing under CI");
        eprintln!("SKIPPED: sqlite3 not installed");
        return;
    }
    let t = project();
    deploy(&t);
    let db = t.path().join("deploy/shared/storage/database.sqlite");
    let sql = |q: &str| {
        let out = Command::new("sqlite3").arg(&db).arg(q).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    sql(
        "create table orders(id integer primary key, total text); insert into orders(total) values ('9.99'), ('O''Brien ✓');",
    );
    let opts = format!(
        "#{{ database: #{{ driver: \"sqlite\", path: \"{}\" }} }}",
        db.display()
    );
    let t = t.file(
        "scripts/b.rhai",
        &format!("let b = backup::create(host(\"a\"), {opts});\nprint(b.name);"),
    );
    let out = t.run_with(&["run", "b", "-e", "dev", "-q"]);
    out.code(0);
    let name = out.stdout.trim().to_owned();
    sql(
        "delete from orders where id = 1; update orders set total = 'x'; drop table if exists scratch;",
    );
    std::fs::write(
        t.path().join("scripts/r.rhai"),
        format!("backup::restore(host(\"a\"), \"{name}\", {opts});"),
    )
    .unwrap();
    let out = t
        .command()
        .args(["run", "r", "-e", "dev", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sql("select id, total from orders order by id;"),
        "1|9.99\n2|O'Brien ✓\n"
    );
}

#[test]
fn prune_keeps_the_newest_verified_backup_and_ignores_archives_being_written() {
    let t = project();
    deploy(&t);
    let dir = t.path().join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    let t = t.file(
        "scripts/b.rhai",
        "print(backup::create(host(\"a\"), #{}).name);",
    );
    let mut names = Vec::new();
    for _ in 0..3 {
        let out = t.run_with(&["run", "b", "-e", "dev", "-q"]);
        out.code(0);
        names.push(out.stdout.trim().to_owned());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // The newest backup is damaged: the newest *verified* one must survive.
    let newest = dir.join(&names[2]);
    let mut bytes = std::fs::read(&newest).unwrap();
    let n = bytes.len();
    bytes.truncate(n / 2);
    std::fs::write(&newest, bytes).unwrap();
    std::fs::write(
        dir.join(".backup-20990101-000000.tar.gz.tmp-1"),
        "being written",
    )
    .unwrap();
    std::fs::write(
        t.path().join("scripts/p.rhai"),
        "print(backup::prune(#{ keep: 1 }));",
    )
    .unwrap();
    let out = t
        .command()
        .args(["run", "p", "-e", "dev", "-q"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.join(&names[0]).exists());
    assert!(
        dir.join(&names[1]).exists(),
        "the newest verified backup was pruned"
    );
    assert!(dir.join(&names[2]).exists(), "keep = 1 keeps the newest");
    assert!(dir.join(".backup-20990101-000000.tar.gz.tmp-1").exists());
}

#[test]
fn a_full_disk_leaves_no_archive_with_a_final_name_and_older_backups_intact() {
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("SKIPPED: mounting a small filesystem needs root");
        return;
    }
    let t = project();
    deploy(&t);
    // Incompressible content, bigger than the small filesystem.
    let rel = t.path().join("deploy/releases/20260101T000000Z");
    let mut noise = vec![0u8; 3 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x.to_le_bytes()[0];
    }
    let dir = t.path().join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    let t = t.file(
        "scripts/b.rhai",
        "print(backup::create(host(\"a\"), #{}).name);",
    );
    let first = t.run_with(&["run", "b", "-e", "dev", "-q"]);
    first.code(0);
    let first_name = first.stdout.trim().to_owned();
    let keep = std::fs::read(dir.join(&first_name)).unwrap();
    // Move the existing backups onto a 1 MiB tmpfs, then back up 3 MiB of noise.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir)
        .status()
        .unwrap()
        .success();
    assert!(mounted, "mount tmpfs");
    std::fs::write(dir.join(&first_name), &keep).unwrap();
    std::fs::write(rel.join("noise.bin"), &noise).unwrap();
    let out = t
        .command()
        .args(["run", "b", "-e", "dev", "-q"])
        .output()
        .unwrap();
    let listing: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let old_intact = std::fs::read(dir.join(&first_name)).unwrap() == keep;
    let _ = Command::new("umount").arg(&dir).status();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.to_lowercase().contains("no space"), "{stderr}");
    assert_eq!(
        listing.iter().filter(|n| n.ends_with(".tar.gz")).count(),
        1,
        "{listing:?}"
    );
    assert!(
        !listing.iter().any(|n| n.contains(".tmp")),
        "a temporary was left: {listing:?}"
    );
    assert!(old_intact, "the older backup was damaged");
}

#[test]
fn a_mariadb_database_comes_back_exactly() {
    let Some(db) = MariaDb::start() else { return };
    db.sql(
        "create database shop character set utf8mb4; create table shop.orders (id int primary key auto_increment, total decimal(8,2), note text) engine=InnoDB; \
         insert into shop.orders (total, note) values (9.99, 'O''Brien ✓'), (120.50, 'tab\there'), (0.01, NULL);",
    );
    let before = db.sql("select id, total, note from shop.orders order by id");
    let t = project();
    deploy(&t);
    let opts = format!(
        "#{{ database: #{{ driver: \"mysql\", name: \"shop\", user: \"root\", socket: \"{}\" }} }}",
        db.socket()
    );
    let t = t.file(
        "scripts/b.rhai",
        &format!("print(backup::create(host(\"a\"), {opts}).name);"),
    );
    let out = t.run_with(&["run", "b", "-e", "dev", "-q"]);
    out.code(0);
    let name = out.stdout.trim().to_owned();
    db.sql("delete from shop.orders where id = 1; update shop.orders set note = 'changed'; drop table shop.orders;");
    assert!(
        db.try_sql("select count(*) from shop.orders").is_none(),
        "the table is gone"
    );
    std::fs::write(
        t.path().join("scripts/r.rhai"),
        format!("backup::restore(host(\"a\"), \"{name}\", {opts});"),
    )
    .unwrap();
    let out = t.run_with(&["run", "r", "-e", "dev", "-q"]);
    out.code(0);
    assert_eq!(
        db.sql("select id, total, note from shop.orders order by id"),
        before
    );
}

#[path = "backup_on_host.rs"]
mod on_host;

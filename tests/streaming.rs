//! Transfers and output with bounded memory: an artifact is prepared once and sent to
//! every host at once; a command that prints without end costs a bounded capture.

use std::path::Path;

use crate::fleet::Fleet;
use crate::harness::Test;

/// The runner's own peak resident size, read by a command it started (`$PPID` of the
/// shell is runbook): kB.
const PEAK: &str = "local::shell(\"grep VmHWM /proc/$PPID/status\", #{ quiet: true }).stdout";

fn kib(line: &str) -> u64 {
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in `{line}`"))
}

/// 300 MB on stdout in one line without a newline, then a last line: the captured
/// stdout keeps the tail, and the runner's peak memory stays far below the output
/// (before: the whole line was read into memory, twice).
#[test]
fn a_command_printing_far_more_than_the_cap_keeps_a_bounded_tail() {
    let t = Test::new()
        .file(
            "scripts/flood.rhai",
            &format!(
                "let r = local::shell(\"head -c 300000000 /dev/zero | tr '\\\\0' x; printf '\\\\nthe last line\\\\n'\", #{{ quiet: true }});\n\
                 print(`kept=${{r.stdout.len()}}`);\n\
                 print(`tail=${{r.stdout.ends_with(\"x\\nthe last line\\n\")}}`);\n\
                 print(`peak=${{{PEAK}}}`);\n"
            ),
        )
        .args(&["run", "flood", "-e", "dev", "-q"]);
    let out = t.run();
    out.code(0);
    let value = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in {}", out.stdout))
            .to_owned()
    };
    let kept: usize = value("kept").parse().unwrap();
    assert!(
        (4 * 1024 * 1024..=8 * 1024 * 1024).contains(&kept),
        "kept {kept} bytes of stdout"
    );
    assert_eq!(value("tail"), "true", "the tail of stdout was lost");
    let peak = kib(&value("peak"));
    assert!(
        peak < 120 * 1024,
        "the runner peaked at {peak} kB for 300 MB of output"
    );
}

/// An inventory for `fleet` whose hosts each have their own deploy path (they share
/// this machine's filesystem); `extra` goes into `[ssh]`.
fn inventory(fleet: &Fleet, roots: &[(String, String)], extra: &str) -> String {
    crate::fleet::per_host_inventory(
        fleet,
        roots,
        "",
        &format!("connect_timeout = \"5s\"\n{extra}"),
        "",
    )
}

/// A script that prepares `artifact` on the web hosts and switches them to it.
fn deploy_script(artifact: &str) -> String {
    format!(
        "let n = release::prepare(hosts(\"web\"), #{{ artifact: \"{artifact}\" }});\nrelease::activate(hosts(\"web\"), n);\n"
    )
}

/// `app.tar.gz` of the test's `src/`, beside it.
fn pack_tarball(t: &Test) {
    let tar = std::process::Command::new("tar")
        .args(["-czf", "app.tar.gz", "-C", "src", "."])
        .current_dir(t.path())
        .status()
        .unwrap();
    assert!(tar.success());
}

/// Removes the hosts' deploy roots (each under a directory of its own).
fn remove_roots(roots: &[(String, String)]) {
    for (_, root) in roots {
        let _ = std::fs::remove_dir_all(Path::new(root).parent().unwrap_or(Path::new(root)));
    }
}

fn is_upload(e: &serde_json::Value) -> bool {
    e["argv"][0] == "upload"
}

/// `(started, finished)` indexes of the upload events in `events`, per host.
fn upload_spans(events: &[serde_json::Value]) -> Vec<(String, usize, usize)> {
    let mut spans = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e["event"] == "command_started" && is_upload(e) {
            let host = e["host"].as_str().unwrap_or_default().to_owned();
            let end = finish_of(events, i, &host);
            spans.push((host, i, end));
        }
    }
    spans
}

/// A directory artifact to three hosts: packed once on the runner (one "packed once"
/// note, one temporary file), and every host receives it at the same time — every
/// upload starts before the first one ends. Before: packed again for each host and
/// sent to one host after the other.
#[test]
fn an_artifact_deploy_packs_once_and_sends_to_every_host_at_once() {
    let Some(fleet) = Fleet::start(3) else { return };
    let roots = fleet.deploy_roots("stream");
    let t = Test::bare()
        .file("runbook.toml", &inventory(&fleet, &roots, ""))
        .file("build/index.html", "v1\n")
        .file("build/.env", "APP_ENV=test\n")
        .file("build/bin/tool", &"0123456789abcdef".repeat(64 * 1024))
        .file("scripts/d.rhai", &deploy_script("build"));
    let out = t.run_with(&["run", "d", "-e", "fleet", "--json", "-v"]);
    out.code(0);
    let events = out.events();
    let spans = upload_spans(&events);
    assert_eq!(spans.len(), 3, "one upload per host: {spans:?}");
    let first_end = spans.iter().map(|s| s.2).min().unwrap_or(0);
    for (host, start, _) in &spans {
        assert!(
            *start < first_end,
            "the upload to {host} started only after another had finished: {spans:?}"
        );
    }
    let packed = events
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("upload: ") && m.contains("packed once"))
        })
        .count();
    assert_eq!(packed, 1, "the artifact was not packed exactly once");
    for (host, root) in &roots {
        let current = Path::new(root).join("current");
        assert_eq!(
            std::fs::read_to_string(current.join("index.html")).unwrap_or_default(),
            "v1\n",
            "{host} does not serve the artifact"
        );
        assert_eq!(
            std::fs::metadata(current.join("bin/tool")).map_or(0, |m| m.len()),
            1024 * 1024,
            "{host}: bin/tool arrived incomplete"
        );
    }
    remove_roots(&roots);
}

/// A `.tar.gz` artifact travels as it is (not packed again) to every host at once, and
/// `max_concurrency` bounds how many receive at the same time.
#[test]
fn a_tarball_artifact_is_sent_as_it_is_within_max_concurrency() {
    let Some(fleet) = Fleet::start(3) else { return };
    let roots = fleet.deploy_roots("stream-tgz");
    let t = Test::bare()
        .file(
            "runbook.toml",
            &inventory(&fleet, &roots, "max_concurrency = 2\n"),
        )
        .file("src/index.html", "v2\n")
        .file("src/.env", "APP_ENV=test\n")
        .file("scripts/d.rhai", &deploy_script("app.tar.gz"));
    pack_tarball(&t);
    let out = t.run_with(&["run", "d", "-e", "fleet", "--json", "-v"]);
    out.code(0);
    let events = out.events();
    let spans = upload_spans(&events);
    assert_eq!(spans.len(), 3, "{spans:?}");
    // At most two in flight: the third starts after one of the first two ended.
    let mut starts: Vec<usize> = spans.iter().map(|s| s.1).collect();
    starts.sort_unstable();
    let first_end = spans.iter().map(|s| s.2).min().unwrap_or(0);
    assert!(
        starts[1] < first_end,
        "the first two were not sent at once: {spans:?}"
    );
    assert!(
        starts[2] > first_end,
        "more than max_concurrency at once: {spans:?}"
    );
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("upload: ") && m.contains("sent as it is"))),
        "the tarball was packed again"
    );
    for (host, root) in &roots {
        assert_eq!(
            std::fs::read_to_string(Path::new(root).join("current/index.html")).unwrap_or_default(),
            "v2\n",
            "{host} does not serve the tarball"
        );
    }
    remove_roots(&roots);
}

/// A TCP proxy on `addr`, port chosen here, to `to`, that passes the client's bytes on at
/// about `rate` bytes a second (a host behind a slow link); the answers go back at once.
/// At most `max` connections.
fn slow_link(addr: &str, to: (String, u16), rate: u32, max: usize) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    const CHUNK: usize = 4096; // bytes per pause
    let pause = std::time::Duration::from_secs(4096) / rate;
    let listener = TcpListener::bind((addr, 0)).expect("bind the slow link");
    let port = listener.local_addr().map_or(0, |a| a.port());
    std::thread::spawn(move || {
        for client in listener.incoming().take(max).flatten() {
            let Ok(server) = TcpStream::connect((to.0.as_str(), to.1)) else {
                continue;
            };
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            let (mut client, mut server) = (client, server);
            std::thread::spawn(move || {
                let mut buf = [0u8; CHUNK];
                while let Ok(n @ 1..) = client.read(&mut buf) {
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    std::thread::sleep(pause);
                }
                let _ = server.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// The index of the `command_finished` event of the first command on `host` whose
/// `command_started` satisfies `is`.
fn finished(
    events: &[serde_json::Value],
    host: &str,
    is: impl Fn(&serde_json::Value) -> bool,
) -> usize {
    let start = events
        .iter()
        .position(|e| e["event"] == "command_started" && e["host"] == host && is(e))
        .unwrap_or_else(|| panic!("no such command on {host}"));
    finish_of(events, start, host)
}

/// The index of the first `command_finished` event on `host` from `start` on.
fn finish_of(events: &[serde_json::Value], start: usize, host: &str) -> usize {
    events[start..]
        .iter()
        .position(|e| e["event"] == "command_finished" && e["host"] == host)
        .map_or_else(
            || panic!("a command on {host} never finished"),
            |p| p + start,
        )
}

/// Each host goes from its upload to unpacking it on its own: web3 sits behind a slow
/// link (about 96 KiB/s towards it) and receives a 384 KiB tarball for seconds, while web1
/// and web2 have theirs unpacked before web3's upload is even done. Before, every host's
/// unpacking waited for the slowest host's upload. A whole release on every host at the end.
#[test]
fn a_slow_host_holds_up_no_other_hosts_next_step() {
    let Some(mut fleet) = Fleet::start(3) else {
        return;
    };
    let slow = &fleet.hosts[2];
    let port = slow_link(&slow.addr, (slow.addr.clone(), slow.port), 96 * 1024, 8);
    let line = crate::fleet::known_hosts_line(&slow.addr, port, &slow.host_key_pub);
    let mut known = std::fs::read_to_string(&fleet.known_hosts).unwrap_or_default();
    known.push_str(&line);
    std::fs::write(&fleet.known_hosts, known).unwrap();
    fleet.hosts[2].port = port;
    let roots = fleet.deploy_roots("stream-slow");
    let toml =
        crate::fleet::per_host_inventory(&fleet, &roots, "", "connect_timeout = \"30s\"", "");
    // Random bytes: the tarball is as big as its content.
    let noise: String = {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..384 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x % 90) as u8)
            })
            .collect()
    };
    let t = Test::bare()
        .file("runbook.toml", &toml)
        .file("src/index.html", "v3\n")
        .file("src/.env", "APP_ENV=test\n")
        .file("src/noise.txt", &noise)
        .file("scripts/d.rhai", &deploy_script("app.tar.gz"));
    pack_tarball(&t);
    let out = t.run_with(&["run", "d", "-e", "fleet", "--json", "-v"]);
    out.code(0);
    let events = out.events();
    let slow_name = fleet.hosts[2].name.as_str();
    let slow_sent = finished(&events, slow_name, is_upload);
    for h in &fleet.hosts[..2] {
        let unpacked = finished(&events, &h.name, |e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("release: unpack the artifact"))
        });
        assert!(
            unpacked < slow_sent,
            "{} unpacked its artifact only after {slow_name}'s upload was done",
            h.name
        );
        // The release is finished on the host right after its own upload, too.
        let linked = finished(&events, &h.name, |e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("release: link shared paths"))
        });
        assert!(
            linked < slow_sent,
            "{}'s release was finished only after {slow_name}'s upload was done",
            h.name
        );
    }
    for (host, root) in &roots {
        let current = Path::new(root).join("current");
        assert_eq!(
            std::fs::read_to_string(current.join("index.html")).unwrap_or_default(),
            "v3\n",
            "{host} does not serve the artifact"
        );
        assert_eq!(
            std::fs::read_to_string(current.join("noise.txt")).unwrap_or_default(),
            noise,
            "{host}: noise.txt arrived incomplete"
        );
    }
    remove_roots(&roots);
}

/// The first artifact deploy of a Laravel app that brings no `.env`, to hosts that have
/// none in `shared/`: refused on every host with the sentence that says what to put
/// where, after the upload (the check is part of finishing the release), and nothing is
/// left: no release, no metadata, no `current`.
#[test]
fn a_first_artifact_without_the_apps_settings_is_refused_and_leaves_nothing() {
    let Some(fleet) = Fleet::start(2) else { return };
    let roots = fleet.deploy_roots("stream-noenv");
    let t = Test::bare()
        .file("runbook.toml", &inventory(&fleet, &roots, ""))
        .file("build/index.html", "v1\n")
        .file("scripts/d.rhai", &deploy_script("build"));
    let out = t.run_with(&["run", "d", "-e", "fleet"]);
    out.code(1).stderr_has(
        "the first deploy needs the app's settings, but shared/.env is missing or empty",
    );
    for (host, root) in &roots {
        out.stderr_has(&format!("{host}: {root}/shared/.env"));
        let root = Path::new(root);
        assert!(!root.join("current").exists(), "{host} was switched");
        let left: Vec<_> = std::fs::read_dir(root.join("releases"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{host} kept a release: {left:?}");
        let meta: Vec<_> = std::fs::read_dir(root.join(".runbook/releases"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(meta.is_empty(), "{host} kept release metadata: {meta:?}");
    }
    // With the settings in place on each host, the same deploy goes through.
    for (_, root) in &roots {
        std::fs::write(Path::new(root).join("shared/.env"), "APP_ENV=test\n").unwrap();
    }
    t.run_with(&["run", "d", "-e", "fleet", "-q"]).code(0);
    for (host, root) in &roots {
        assert_eq!(
            std::fs::read_to_string(Path::new(root).join("current/index.html")).unwrap_or_default(),
            "v1\n",
            "{host} does not serve the artifact"
        );
    }
    remove_roots(&roots);
}

//! The backup archive format: a tar stream compressed as independent gzip members (1 MiB
//! chunks, compressed in parallel — any gzip reader, GNU tar included, reads it as one
//! stream), ending with `.runbook-manifest.json`: every entry's path, kind, size, mode,
//! mtime, link target and sha256.
//!
//! Writing goes to a temporary name that is fsynced and renamed only when complete, so a
//! half-written archive never carries a final name. Reading verifies every checksum
//! against the manifest and refuses unsafe entries before anything is written.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// The manifest's name inside the archive (always the last entry).
pub const MANIFEST: &str = ".runbook-manifest.json";
const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub size: u64,
    pub mtime: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created_at: String,
    pub release: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub runbook: String,
    pub entries: Vec<Entry>,
}

/// A tree to put in the archive under `name/`.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub path: PathBuf,
    /// Relative paths (or prefixes) under `path` to leave out.
    pub exclude: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("refusing to archive {path}: {why}")]
    Unsupported { path: String, why: String },
    #[error("the archive is damaged: {0}")]
    Corrupt(String),
    #[error("the archive does not match its manifest: {0}")]
    Mismatch(String),
    #[error("unsafe entry `{path}`: {why} — nothing was written")]
    Unsafe { path: String, why: String },
}

/// Compresses a byte stream as independent gzip members on worker threads, in order.
struct ParallelGz {
    buf: Vec<u8>,
    next: u64,
    jobs: Option<mpsc::SyncSender<(u64, Vec<u8>)>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    writer: Option<std::thread::JoinHandle<io::Result<File>>>,
}

impl ParallelGz {
    fn new(file: File, level: u32, threads: usize) -> ParallelGz {
        let threads = threads.max(1);
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(threads * 2);
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::sync_channel::<(u64, io::Result<Vec<u8>>)>(threads * 4);
        let workers = (0..threads)
            .map(|_| {
                let rx = job_rx.clone();
                let tx = done_tx.clone();
                std::thread::spawn(move || {
                    loop {
                        let job = rx.lock().map(|r| r.recv());
                        let Ok(Ok((seq, data))) = job else { break };
                        let mut enc = GzEncoder::new(
                            Vec::with_capacity(data.len() / 3),
                            Compression::new(level),
                        );
                        let out = enc.write_all(&data).and_then(|()| enc.finish());
                        if tx.send((seq, out)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop(done_tx);
        let writer = std::thread::spawn(move || -> io::Result<File> {
            let mut out = BufWriter::with_capacity(CHUNK, file);
            let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut want = 0;
            for (seq, data) in done_rx {
                pending.insert(seq, data?);
                while let Some(d) = pending.remove(&want) {
                    out.write_all(&d)?;
                    want += 1;
                }
            }
            out.into_inner().map_err(|e| e.into_error())
        });
        ParallelGz {
            buf: Vec::with_capacity(CHUNK),
            next: 0,
            jobs: Some(job_tx),
            workers,
            writer: Some(writer),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let seq = self.next;
        self.next += 1;
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("compressor closed"))?
            .send((seq, data))
            .map_err(|_| io::Error::other("a compression thread stopped (disk full?)"))
    }

    fn finish(mut self) -> io::Result<File> {
        self.send()?;
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.writer
            .take()
            .ok_or_else(|| io::Error::other("writer gone"))?
            .join()
            .map_err(|_| io::Error::other("the archive writer panicked"))?
    }
}

impl Write for ParallelGz {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that hashes what passes through.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn mtime_of(meta: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime()
}

fn excluded(rel: &str, exclude: &[String]) -> bool {
    exclude
        .iter()
        .any(|e| rel == e || rel.starts_with(&format!("{}/", e.trim_end_matches('/'))))
}

/// Writes the archive to `dest` (via a temporary name), returning its manifest.
pub fn create(
    dest: &Path,
    sources: &[Source],
    mut meta: Manifest,
    level: u32,
    threads: usize,
) -> Result<Manifest, ArchiveError> {
    use std::os::unix::fs::PermissionsExt;
    let file_name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("backup");
    let tmp = dest.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> Result<Manifest, ArchiveError> {
        let file = File::create(&tmp)?;
        let gz = ParallelGz::new(file, level, threads);
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        let mut entries = Vec::new();
        for source in sources {
            let walker = walkdir::WalkDir::new(&source.path)
                .follow_links(false)
                .sort_by_file_name();
            for item in walker {
                let item = item.map_err(|e| io::Error::other(e.to_string()))?;
                let rel = item
                    .path()
                    .strip_prefix(&source.path)
                    .unwrap_or(item.path());
                let rel_str = rel.to_string_lossy().into_owned();
                if !rel_str.is_empty() && excluded(&rel_str, &source.exclude) {
                    continue;
                }
                let name = if rel_str.is_empty() {
                    source.name.clone()
                } else {
                    format!("{}/{rel_str}", source.name)
                };
                let meta_fs = std::fs::symlink_metadata(item.path())?;
                let ft = meta_fs.file_type();
                let mode = meta_fs.permissions().mode() & 0o7777;
                let mtime = mtime_of(&meta_fs);
                let mut header = tar::Header::new_gnu();
                header.set_mode(mode);
                header.set_mtime(u64::try_from(mtime).unwrap_or(0));
                if ft.is_dir() {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    tar.append_data(&mut header, &name, io::empty())?;
                    entries.push(Entry {
                        path: name,
                        kind: Kind::Dir,
                        mode,
                        size: 0,
                        mtime,
                        sha256: None,
                        target: None,
                    });
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(item.path())?;
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    tar.append_link(&mut header, &name, &target)?;
                    entries.push(Entry {
                        path: name,
                        kind: Kind::Symlink,
                        mode,
                        size: 0,
                        mtime,
                        sha256: None,
                        target: Some(target.to_string_lossy().into_owned()),
                    });
                } else if ft.is_file() {
                    let size = meta_fs.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    let mut reader = Hashing {
                        inner: File::open(item.path())?.take(size),
                        hash: Sha256::new(),
                    };
                    tar.append_data(&mut header, &name, &mut reader)?;
                    entries.push(Entry {
                        path: name,
                        kind: Kind::File,
                        mode,
                        size,
                        mtime,
                        sha256: Some(hex::encode(reader.hash.finalize())),
                        target: None,
                    });
                } else {
                    return Err(ArchiveError::Unsupported {
                        path: item.path().display().to_string(),
                        why: "devices, sockets and FIFOs are not backed up".into(),
                    });
                }
            }
        }
        meta.format = 1;
        meta.entries = entries;
        let json = serde_json::to_vec_pretty(&meta).map_err(io::Error::other)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(json.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0));
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, MANIFEST, json.as_slice())?;
        let gz = tar.into_inner()?;
        let file = gz.finish()?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, dest)?;
        if let Some(dir) = dest.parent() {
            File::open(dir).and_then(|d| d.sync_all()).ok();
        }
        Ok(meta)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Refuses paths that could write outside the target.
fn check_path(path: &str) -> Result<(), ArchiveError> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(ArchiveError::Unsafe {
            path: path.into(),
            why: "absolute path".into(),
        });
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(ArchiveError::Unsafe {
            path: path.into(),
            why: "`..` in the path".into(),
        });
    }
    Ok(())
}

/// A relative link target that climbs out of the archive's root.
fn link_escapes(path: &str, target: &str) -> bool {
    if Path::new(target).is_absolute() {
        return false; // kept as a link, never followed by the restore
    }
    let mut depth: i64 = Path::new(path).components().count() as i64 - 1;
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Reads the whole archive: every checksum against the manifest, every entry checked
/// for safety. Extracts nothing. Returns the manifest.
pub fn verify(reader: impl Read) -> Result<Manifest, ArchiveError> {
    check_entries(reader, None, restore_limit())
}

/// How many bytes an archive may expand to (`RUNBOOK_RESTORE_LIMIT`, e.g. "500G";
/// default 64 GiB): a tiny archive that expands past it (a gzip bomb) is refused at the
/// first entry that would cross the line, before that entry is written.
pub fn restore_limit() -> u64 {
    std::env::var("RUNBOOK_RESTORE_LIMIT")
        .ok()
        .and_then(|v| parse_size(&v))
        .unwrap_or(64 << 30)
}

fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n.parse().ok()?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// Verifies and extracts in ONE pass into `dest`, a new directory that nobody serves:
/// every entry is checked for safety before it is written and hashed as it is written;
/// if anything is wrong — an unsafe entry, a checksum, a truncation — `dest` is removed
/// and the error returned, so the live tree is never touched. Directory mtimes are
/// applied last, deepest first.
pub fn verify_into(reader: impl Read, dest: &Path) -> Result<Manifest, ArchiveError> {
    if dest.exists() {
        return Err(ArchiveError::Unsafe {
            path: dest.display().to_string(),
            why: "the restore target already exists".into(),
        });
    }
    std::fs::create_dir_all(dest)?;
    let result = check_entries(reader, Some(dest), restore_limit());
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

/// Walks every entry: safety first, then (with a `dest`) writes it while hashing, or only
/// hashes it; finally compares everything with the manifest.
fn check_entries(
    reader: impl Read,
    dest: Option<&Path>,
    limit: u64,
) -> Result<Manifest, ArchiveError> {
    use std::os::unix::fs::PermissionsExt;
    let mut archive = tar::Archive::new(MultiGzDecoder::new(reader));
    let mut seen: Vec<Entry> = Vec::new();
    let mut manifest: Option<Manifest> = None;
    let mut links: Vec<String> = Vec::new();
    let mut expanded = 0u64;
    let corrupt = |e: io::Error| ArchiveError::Corrupt(e.to_string());
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry
            .path()
            .map_err(corrupt)?
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        check_path(&path)?;
        if links.iter().any(|l| path.starts_with(&format!("{l}/"))) {
            return Err(ArchiveError::Unsafe {
                path,
                why: "it would be written through a symlink".into(),
            });
        }
        let header = entry.header().clone();
        expanded = expanded.saturating_add(header.size().map_err(corrupt)?);
        if expanded > limit {
            return Err(ArchiveError::Unsafe {
                path,
                why: format!(
                    "the archive expands past the restore limit of {limit} bytes (RUNBOOK_RESTORE_LIMIT): refusing what looks like a decompression bomb"
                ),
            });
        }
        let mode = header.mode().map_err(corrupt)? & 0o7777;
        let mtime = i64::try_from(header.mtime().map_err(corrupt)?).unwrap_or(0);
        let out = dest.map(|d| d.join(&path));
        match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if path == MANIFEST {
                    let mut json = Vec::new();
                    entry.read_to_end(&mut json).map_err(corrupt)?;
                    manifest =
                        Some(serde_json::from_slice(&json).map_err(|e| {
                            ArchiveError::Corrupt(format!("unreadable manifest: {e}"))
                        })?);
                    continue;
                }
                let mut file = match &out {
                    Some(out) => {
                        if let Some(parent) = out.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        Some(io::BufWriter::with_capacity(256 * 1024, File::create(out)?))
                    }
                    None => None,
                };
                let mut hash = Sha256::new();
                let mut size = 0u64;
                loop {
                    let n = entry.read(&mut buf).map_err(corrupt)?;
                    if n == 0 {
                        break;
                    }
                    size += n as u64;
                    hash.update(&buf[..n]);
                    if let Some(f) = file.as_mut() {
                        f.write_all(&buf[..n])?;
                    }
                }
                if let (Some(mut f), Some(out)) = (file, &out) {
                    f.flush()?;
                    drop(f);
                    std::fs::set_permissions(out, std::fs::Permissions::from_mode(mode))?;
                    filetime::set_file_mtime(out, filetime::FileTime::from_unix_time(mtime, 0))?;
                }
                seen.push(Entry {
                    path,
                    kind: Kind::File,
                    mode,
                    size,
                    mtime,
                    sha256: Some(hex::encode(hash.finalize())),
                    target: None,
                });
            }
            tar::EntryType::Directory => {
                if let Some(out) = &out {
                    std::fs::create_dir_all(out)?;
                    std::fs::set_permissions(out, std::fs::Permissions::from_mode(mode))?;
                }
                seen.push(Entry {
                    path,
                    kind: Kind::Dir,
                    mode,
                    size: 0,
                    mtime,
                    sha256: None,
                    target: None,
                });
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(corrupt)?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if link_escapes(&path, &target) {
                    return Err(ArchiveError::Unsafe {
                        path,
                        why: format!("the symlink points outside the archive ({target})"),
                    });
                }
                if let Some(out) = &out {
                    if let Some(parent) = out.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::os::unix::fs::symlink(&target, out)?;
                    let t = filetime::FileTime::from_unix_time(mtime, 0);
                    let _ = filetime::set_symlink_file_times(out, t, t);
                }
                links.push(path.clone());
                seen.push(Entry {
                    path,
                    kind: Kind::Symlink,
                    mode,
                    size: 0,
                    mtime,
                    sha256: None,
                    target: Some(target),
                });
            }
            tar::EntryType::Link => {
                return Err(ArchiveError::Unsafe {
                    path,
                    why: "hard links are not accepted".into(),
                });
            }
            other => {
                return Err(ArchiveError::Unsafe {
                    path,
                    why: format!("entry type {other:?} (devices, FIFOs) is not accepted"),
                });
            }
        }
    }
    let manifest = manifest.ok_or_else(|| {
        ArchiveError::Corrupt(
            "no manifest: the archive is truncated or not a runbook backup".into(),
        )
    })?;
    compare(&manifest, &seen)?;
    let Some(dest) = dest else {
        return Ok(manifest);
    };
    let mut dirs: Vec<&Entry> = manifest
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .collect();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
    for d in dirs {
        filetime::set_file_mtime(
            dest.join(&d.path),
            filetime::FileTime::from_unix_time(d.mtime, 0),
        )?;
    }
    Ok(manifest)
}

fn compare(manifest: &Manifest, seen: &[Entry]) -> Result<(), ArchiveError> {
    let mut expected: BTreeMap<&str, &Entry> = manifest
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e))
        .collect();
    for got in seen {
        let Some(want) = expected.remove(got.path.as_str()) else {
            return Err(ArchiveError::Mismatch(format!(
                "`{}` is not in the manifest",
                got.path
            )));
        };
        if want.kind != got.kind
            || want.size != got.size
            || want.sha256 != got.sha256
            || want.target != got.target
            || want.mode != got.mode
        {
            return Err(ArchiveError::Mismatch(format!(
                "`{}` differs from the manifest (content, size, mode or link)",
                got.path
            )));
        }
    }
    if let Some(missing) = expected.keys().next() {
        return Err(ArchiveError::Mismatch(format!(
            "`{missing}` is in the manifest but not in the archive"
        )));
    }
    Ok(())
}

/// Extracts a verified archive into `dest` (which must not exist yet), then applies the
/// manifest's directory mtimes — deepest first, after every file is written.
pub fn unpack(reader: impl Read, dest: &Path, manifest: &Manifest) -> Result<(), ArchiveError> {
    if dest.exists() {
        return Err(ArchiveError::Unsafe {
            path: dest.display().to_string(),
            why: "the restore target already exists".into(),
        });
    }
    std::fs::create_dir_all(dest)?;
    let mut archive = tar::Archive::new(MultiGzDecoder::new(reader));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(false);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        if path == MANIFEST {
            continue;
        }
        check_path(&path)?;
        entry.unpack_in(dest)?;
    }
    let mut dirs: Vec<&Entry> = manifest
        .entries
        .iter()
        .filter(|e| e.kind == Kind::Dir)
        .collect();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
    for d in dirs {
        let t = filetime::FileTime::from_unix_time(d.mtime, 0);
        filetime::set_file_mtime(dest.join(&d.path), t)?;
    }
    for l in manifest.entries.iter().filter(|e| e.kind == Kind::Symlink) {
        let t = filetime::FileTime::from_unix_time(l.mtime, 0);
        let _ = filetime::set_symlink_file_times(dest.join(&l.path), t, t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("app/empty")).unwrap();
        std::fs::create_dir_all(root.join("app/bin")).unwrap();
        std::fs::write(root.join("app/bin/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            root.join("app/bin/run"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(root.join("app/.env"), "SECRET=1\n").unwrap();
        std::fs::set_permissions(
            root.join("app/.env"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(root.join("app/big"), vec![7u8; 3 * CHUNK + 17]).unwrap();
        std::os::unix::fs::symlink("bin/run", root.join("app/rel-link")).unwrap();
        std::os::unix::fs::symlink("/srv/shared/storage", root.join("app/abs-link")).unwrap();
        std::os::unix::fs::symlink("missing", root.join("app/dangling")).unwrap();
        for (p, t) in [
            ("app/bin/run", 1_700_000_000),
            ("app/bin", 1_600_000_000),
            ("app/empty", 1_500_000_000),
        ] {
            filetime::set_file_mtime(root.join(p), filetime::FileTime::from_unix_time(t, 0))
                .unwrap();
        }
    }

    #[test]
    fn a_round_trip_keeps_contents_modes_links_and_mtimes() {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("b.tar.gz");
        let sources = [Source {
            name: "release".into(),
            path: src.path().join("app"),
            exclude: vec![],
        }];
        let m = create(&archive, &sources, Manifest::default(), 6, 2).unwrap();
        assert!(
            m.entries
                .iter()
                .any(|e| e.path == "release/empty" && e.kind == Kind::Dir)
        );
        let verified = verify(File::open(&archive).unwrap()).unwrap();
        assert_eq!(verified.entries, m.entries);
        let dest = out.path().join("restored");
        unpack(File::open(&archive).unwrap(), &dest, &verified).unwrap();
        let r = dest.join("release");
        let meta = |p: &str| std::fs::symlink_metadata(r.join(p)).unwrap();
        assert_eq!(meta("bin/run").permissions().mode() & 0o777, 0o755);
        assert_eq!(meta(".env").permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(r.join("big")).unwrap().len(), 3 * CHUNK + 17);
        assert_eq!(
            std::fs::read_link(r.join("rel-link")).unwrap(),
            Path::new("bin/run")
        );
        assert_eq!(
            std::fs::read_link(r.join("abs-link")).unwrap(),
            Path::new("/srv/shared/storage")
        );
        assert_eq!(
            std::fs::read_link(r.join("dangling")).unwrap(),
            Path::new("missing")
        );
        assert_eq!(mtime_of(&meta("bin/run")), 1_700_000_000);
        assert_eq!(mtime_of(&meta("bin")), 1_600_000_000);
        assert_eq!(mtime_of(&meta("empty")), 1_500_000_000);
        // GNU tar reads the multi-member stream too.
        let gnu = out.path().join("gnu");
        std::fs::create_dir(&gnu).unwrap();
        let ok = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(&gnu)
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(
            std::fs::read(gnu.join("release/big")).unwrap().len(),
            3 * CHUNK + 17
        );
    }

    #[test]
    fn a_flipped_byte_or_a_truncation_fails_verification() {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("b.tar.gz");
        create(
            &archive,
            &[Source {
                name: "r".into(),
                path: src.path().join("app"),
                exclude: vec![],
            }],
            Manifest::default(),
            6,
            2,
        )
        .unwrap();
        let bytes = std::fs::read(&archive).unwrap();
        // A flip inside the first member's compressed data (past its 10-byte header).
        let mut flipped = bytes.clone();
        flipped[40] ^= 0x40;
        assert!(verify(flipped.as_slice()).is_err());
        assert!(verify(&bytes[..bytes.len() - 100]).is_err());
        assert!(verify(&bytes[..bytes.len() / 3]).is_err());
    }

    fn raw_archive(build: impl FnOnce(&mut tar::Builder<GzEncoder<Vec<u8>>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        build(&mut b);
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unsafe_entries_are_refused_before_anything_is_written() {
        let evil_link = raw_archive(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "release/etc", "../../../etc")
                .unwrap();
        });
        let r = verify(evil_link.as_slice());
        assert!(matches!(r, Err(ArchiveError::Unsafe { .. })), "{r:?}");
        let through = raw_archive(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, "release/up", "/etc").unwrap();
            let mut f = tar::Header::new_gnu();
            f.set_mode(0o644);
            f.set_size(1);
            f.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut f, "release/up/passwd", &b"x"[..])
                .unwrap();
        });
        assert!(matches!(
            verify(through.as_slice()),
            Err(ArchiveError::Unsafe { .. })
        ));
        let hard = raw_archive(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, "release/shadow", "/etc/shadow")
                .unwrap();
        });
        assert!(matches!(
            verify(hard.as_slice()),
            Err(ArchiveError::Unsafe { .. })
        ));
        let device = raw_archive(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Char);
            h.set_size(0);
            b.append_data(&mut h, "release/null", io::empty()).unwrap();
        });
        assert!(matches!(
            verify(device.as_slice()),
            Err(ArchiveError::Unsafe { .. })
        ));
        assert!(
            check_path("../x").is_err()
                && check_path("/etc/x").is_err()
                && check_path("a/b").is_ok()
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_the_entry_is_written() {
        // 8 MiB of zeros gzip to a few KiB; the limit is 1 MiB.
        let bomb = raw_archive(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(8 << 20);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, "release/zeros", io::repeat(0).take(8 << 20))
                .unwrap();
        });
        assert!(bomb.len() * 50 < 8 << 20, "{} bytes", bomb.len());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("restore");
        std::fs::create_dir_all(&dest).unwrap();
        let r = check_entries(bomb.as_slice(), Some(&dest), 1 << 20);
        assert!(
            matches!(&r, Err(ArchiveError::Unsafe { why, .. }) if why.contains("restore limit")),
            "{r:?}"
        );
        assert!(!dest.join("release/zeros").exists());
        assert_eq!(parse_size("500G"), Some(500 << 30));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("lots"), None);
    }
}

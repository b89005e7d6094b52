//! The backup archive format: a tar stream compressed as independent gzip members (1 MiB
//! chunks, compressed in parallel, each recording its length so that reading inflates in
//! parallel too: `crate::gzip`, `inflate` — any gzip reader, GNU tar included, reads it as
//! one stream), ending with `.runbook-manifest.json`: every entry's path, kind, size, mode,
//! mtime, link target and sha256.
//!
//! Writing goes to a temporary name that is fsynced and renamed only when complete, so a
//! half-written archive never carries a final name. Reading verifies every checksum
//! against the manifest and refuses unsafe entries before anything is written. An archive
//! is input (a host's backups are restored on the runner): a restore must never write,
//! chmod or touch anything outside its new directory, however an entry is spelled — so
//! paths are normalised before any check, no entry may reach a symlink, and everything is
//! created beneath an open handle without following links (`beneath`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

mod beneath;
mod inflate;

/// The manifest's name inside the archive (always the last entry).
pub(crate) const MANIFEST: &str = ".runbook-manifest.json";

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

impl Entry {
    /// An entry with no contents and no target: a directory, or the start of another kind.
    fn bare(path: String, kind: Kind, mode: u32, mtime: i64) -> Entry {
        Entry {
            path,
            kind,
            mode,
            size: 0,
            mtime,
            sha256: None,
            target: None,
        }
    }

    pub fn dir(path: String, mode: u32, mtime: i64) -> Entry {
        Entry::bare(path, Kind::Dir, mode, mtime)
    }

    /// A regular file of `size` bytes whose contents hash to `sha256` (hex).
    pub fn file(path: String, mode: u32, mtime: i64, size: u64, sha256: String) -> Entry {
        Entry {
            size,
            sha256: Some(sha256),
            ..Entry::bare(path, Kind::File, mode, mtime)
        }
    }

    pub fn symlink(path: String, mode: u32, mtime: i64, target: String) -> Entry {
        Entry {
            target: Some(target),
            ..Entry::bare(path, Kind::Symlink, mode, mtime)
        }
    }
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
pub(crate) struct Source {
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
pub(crate) fn create(
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
        let gz = crate::gzip::Parallel::new(file, level, threads, false);
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
                    entries.push(Entry::dir(name, mode, mtime));
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(item.path())?;
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    tar.append_link(&mut header, &name, &target)?;
                    let target = target.to_string_lossy().into_owned();
                    entries.push(Entry::symlink(name, mode, mtime, target));
                } else if ft.is_file() {
                    let size = meta_fs.len();
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(size);
                    let mut reader = Hashing {
                        inner: File::open(item.path())?.take(size),
                        hash: Sha256::new(),
                    };
                    tar.append_data(&mut header, &name, &mut reader)?;
                    let sha256 = hex::encode(reader.hash.finalize());
                    entries.push(Entry::file(name, mode, mtime, size, sha256));
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

/// An entry's path in its one spelling: `./`, empty (`//`) and `.` components and a
/// trailing `/` dropped, so that every check below compares like with like. Refuses an
/// absolute path, `..`, a name that is not UTF-8 and a name of the restore directory
/// itself.
fn normalise(raw: &[u8]) -> Result<String, ArchiveError> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    let refuse = |why: &str| ArchiveError::Unsafe {
        path: lossy(),
        why: why.into(),
    };
    let text = std::str::from_utf8(raw).map_err(|_| refuse("the name is not UTF-8"))?;
    if text.starts_with('/') {
        return Err(refuse("absolute path"));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(refuse("`..` in the path")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(refuse("it names the restore directory itself"));
    }
    Ok(parts.join("/"))
}

/// A relative link target that climbs out of the archive's root. (An absolute target
/// is kept as data — releases link their shared files by absolute path — and is never
/// followed: no entry may pass through a link, and links are made last.)
fn link_escapes(path: &str, target: &str) -> bool {
    if Path::new(target).is_absolute() {
        return false;
    }
    let mut depth = i64::try_from(Path::new(path).components().count()).unwrap_or(i64::MAX) - 1;
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

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::File => "a file",
        Kind::Dir => "a directory",
        Kind::Symlink => "a symlink",
    }
}

/// What the archive has put where so far, by normalised path: an entry is refused if it
/// repeats a path, passes through a symlink or a file, or would put a file or a link
/// where earlier entries already needed a directory.
#[derive(Default)]
struct Tree {
    kinds: BTreeMap<String, Kind>,
    implied: std::collections::BTreeSet<String>,
}

impl Tree {
    fn admit(&mut self, path: &str, kind: &Kind) -> Result<(), ArchiveError> {
        let refuse = |why: String| ArchiveError::Unsafe {
            path: path.into(),
            why,
        };
        if let Some(earlier) = self.kinds.get(path) {
            return Err(refuse(format!(
                "the path appears twice in the archive ({}, then {}): the second could replace the first or be written through it",
                kind_name(earlier),
                kind_name(kind)
            )));
        }
        let parents: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..i]).collect();
        for parent in &parents {
            match self.kinds.get(*parent) {
                Some(Kind::Symlink) => {
                    return Err(refuse(format!(
                        "it would be written through the symlink `{parent}`"
                    )));
                }
                Some(Kind::File) => {
                    return Err(refuse(format!("it passes through the file `{parent}`")));
                }
                Some(Kind::Dir) | None => {}
            }
        }
        if *kind != Kind::Dir && self.implied.contains(path) {
            return Err(refuse(format!(
                "the path already holds entries of the archive: {} cannot replace that directory",
                kind_name(kind)
            )));
        }
        for parent in parents {
            self.implied.insert(parent.to_owned());
        }
        self.kinds.insert(path.to_owned(), kind.clone());
        Ok(())
    }
}

/// An error from the disk while extracting `path`: something in the way (a symlink, a
/// file, a name already taken beneath the restore directory) is refused as unsafe.
fn on_disk(path: &str, e: io::Error) -> ArchiveError {
    if beneath::in_the_way(&e) {
        ArchiveError::Unsafe {
            path: path.into(),
            why: format!(
                "something on disk is in the way beneath the restore directory (a symlink, a file or an existing name: {e}); a restore never follows or replaces it"
            ),
        }
    } else {
        ArchiveError::Io(e)
    }
}

/// Reads the whole archive: every checksum against the manifest, every entry checked
/// for safety. Extracts nothing. Returns the manifest.
pub(crate) fn verify(reader: impl Read + Send) -> Result<Manifest, ArchiveError> {
    check_entries(reader, None, restore_limit())
}

/// How many bytes an archive may expand to (`RUNBOOK_RESTORE_LIMIT`, e.g. "500G";
/// default 64 GiB): a tiny archive that expands past it (a gzip bomb) is refused at the
/// first entry that would cross the line, before that entry is written.
pub(crate) fn restore_limit() -> u64 {
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

/// How large the manifest may be (`RUNBOOK_MANIFEST_LIMIT`, e.g. "256M"; default 64 MiB,
/// room for about 250,000 entries). It is read into memory, so a larger one is refused
/// before a byte of it is read.
pub(crate) fn manifest_limit() -> u64 {
    std::env::var("RUNBOOK_MANIFEST_LIMIT")
        .ok()
        .and_then(|v| parse_size(&v))
        .unwrap_or(64 << 20)
}

/// Verifies and extracts in ONE pass into `dest`, a new directory that nobody serves:
/// every entry is checked for safety before it is written and hashed as it is written;
/// if anything is wrong — an unsafe entry, a checksum, a truncation — `dest` is removed
/// and the error returned, so the live tree is never touched. Nothing is written through
/// a link: see [`beneath`]. Symlinks are made after every file and directory, then
/// directory modes and mtimes are applied, deepest first.
pub(crate) fn verify_into(reader: impl Read + Send, dest: &Path) -> Result<Manifest, ArchiveError> {
    let exists = || ArchiveError::Unsafe {
        path: dest.display().to_string(),
        why: "the restore target already exists".into(),
    };
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(exists());
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // `create_dir`, not `create_dir_all`: the restore directory must be new, not a
    // directory (or a link to one) that appeared since the check above.
    std::fs::create_dir(dest).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            exists()
        } else {
            ArchiveError::Io(e)
        }
    })?;
    let result = check_entries(reader, Some(dest), restore_limit());
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

/// Walks every entry: safety first, then (with a `dest`) writes it while hashing, or only
/// hashes it; finally compares everything with the manifest. The manifest that is
/// returned names only paths that passed [`normalise`] and [`Tree::admit`] exactly as
/// spelled (they must equal the entries seen), so callers may join them to `dest`.
fn check_entries(
    reader: impl Read + Send,
    dest: Option<&Path>,
    limit: u64,
) -> Result<Manifest, ArchiveError> {
    std::thread::scope(|s| check_inflated(inflate::beside(s, reader), dest, limit))
}

/// [`check_entries`] of the inflated tar stream.
fn check_inflated(
    plain: impl Read,
    dest: Option<&Path>,
    limit: u64,
) -> Result<Manifest, ArchiveError> {
    let out = dest
        .map(|d| beneath::Beneath::open(d).map_err(|e| on_disk(&d.display().to_string(), e)))
        .transpose()?;
    let mut archive = tar::Archive::new(plain);
    let mut seen: Vec<Entry> = Vec::new();
    let mut tree = Tree::default();
    let mut manifest: Option<Manifest> = None;
    let mut expanded = 0u64;
    let corrupt = |e: io::Error| ArchiveError::Corrupt(e.to_string());
    let mut buf = vec![0u8; 256 * 1024];
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = normalise(&entry.path_bytes())?;
        if manifest.is_some() {
            return Err(ArchiveError::Corrupt(format!(
                "`{path}` comes after the manifest, which must be the last entry"
            )));
        }
        let header = entry.header().clone();
        let size = header.size().map_err(corrupt)?;
        expanded = expanded.saturating_add(size);
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
        let comps: Vec<&str> = path.split('/').collect();
        let entry_type = header.entry_type();
        if path == MANIFEST {
            manifest = Some(read_manifest(&mut entry, path, entry_type, size)?);
            continue;
        }
        match entry_type {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                tree.admit(&path, &Kind::File)?;
                let file = match &out {
                    Some(b) => Some(b.create_file(&comps).map_err(|e| on_disk(&path, e))?),
                    None => None,
                };
                let (size, sha256) = copy_hashing(&mut entry, file, &mut buf, mode, mtime)?;
                seen.push(Entry::file(path, mode, mtime, size, sha256));
            }
            tar::EntryType::Directory => {
                tree.admit(&path, &Kind::Dir)?;
                if let Some(b) = &out {
                    b.create_dir(&comps).map_err(|e| on_disk(&path, e))?;
                }
                seen.push(Entry::dir(path, mode, mtime));
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                if let Some(why) = link_refused(&path, &target) {
                    return Err(ArchiveError::Unsafe { path, why });
                }
                tree.admit(&path, &Kind::Symlink)?;
                // Made only after every file and directory (below).
                seen.push(Entry::symlink(path, mode, mtime, target));
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
    if let Some(out) = out {
        make_links_and_dirs(&out, &seen)?;
    }
    Ok(manifest)
}

/// After every file: the symlinks, then each directory's mode and mtime, deepest first
/// (writing into a directory changes its mtime).
fn make_links_and_dirs(out: &beneath::Beneath, seen: &[Entry]) -> Result<(), ArchiveError> {
    for l in seen.iter().filter(|e| e.kind == Kind::Symlink) {
        let comps: Vec<&str> = l.path.split('/').collect();
        out.symlink(&comps, l.target.as_deref().unwrap_or_default())
            .map_err(|e| on_disk(&l.path, e))?;
        // Not every filesystem keeps a link's own mtime; the link is what matters.
        let _ = out.finish_symlink(&comps, l.mtime);
    }
    let mut dirs: Vec<&Entry> = seen.iter().filter(|e| e.kind == Kind::Dir).collect();
    dirs.sort_by_key(|e| std::cmp::Reverse(e.path.matches('/').count()));
    for d in dirs {
        let comps: Vec<&str> = d.path.split('/').collect();
        out.finish_dir(&comps, d.mode, d.mtime)
            .map_err(|e| on_disk(&d.path, e))?;
    }
    Ok(())
}

/// The manifest entry, read into memory up to [`manifest_limit`].
fn read_manifest(
    entry: &mut impl Read,
    path: String,
    entry_type: tar::EntryType,
    size: u64,
) -> Result<Manifest, ArchiveError> {
    if !matches!(
        entry_type,
        tar::EntryType::Regular | tar::EntryType::Continuous
    ) {
        return Err(ArchiveError::Unsafe {
            path,
            why: "the manifest must be a regular file".into(),
        });
    }
    let max = manifest_limit();
    if size > max {
        return Err(ArchiveError::Corrupt(format!(
            "the manifest is {size} bytes, more than the limit of {max} bytes (RUNBOOK_MANIFEST_LIMIT): refusing to read it into memory; if this archive really lists that many files, raise RUNBOOK_MANIFEST_LIMIT"
        )));
    }
    let mut json = Vec::new();
    entry
        .take(max)
        .read_to_end(&mut json)
        .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    serde_json::from_slice(&json)
        .map_err(|e| ArchiveError::Corrupt(format!("unreadable manifest: {e}")))
}

/// Reads a file entry through `buf` while hashing it, writing it to `file` when there is
/// one (then given its mode and mtime); its size and SHA-256.
fn copy_hashing(
    entry: &mut impl Read,
    file: Option<File>,
    buf: &mut [u8],
    mode: u32,
    mtime: i64,
) -> Result<(u64, String), ArchiveError> {
    let mut file = file.map(|f| io::BufWriter::with_capacity(256 * 1024, f));
    let mut hash = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = entry
            .read(buf)
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hash.update(&buf[..n]);
        if let Some(f) = file.as_mut() {
            f.write_all(&buf[..n])?;
        }
    }
    if let Some(f) = file {
        let f = f.into_inner().map_err(io::IntoInnerError::into_error)?;
        beneath::finish_file(&f, mode, mtime)?;
    }
    Ok((size, hex::encode(hash.finalize())))
}

/// Why a symlink entry with this target is refused, if it is.
fn link_refused(path: &str, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("a symlink without a target".into());
    }
    if link_escapes(path, target) {
        return Some(format!("the symlink points outside the archive ({target})"));
    }
    None
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

#[cfg(test)]
/// Extracts an archive already verified as `manifest` into `dest` (which must not exist
/// yet), with every check of [`verify_into`]; refused if the archive is no longer the one
/// that was verified.
pub(crate) fn unpack(
    reader: impl Read + Send,
    dest: &Path,
    manifest: &Manifest,
) -> Result<(), ArchiveError> {
    let got = verify_into(reader, dest)?;
    if got.entries != manifest.entries {
        let _ = std::fs::remove_dir_all(dest);
        return Err(ArchiveError::Mismatch(
            "the archive changed since it was verified".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gzip::PIECE as CHUNK;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::fs::Permissions;
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

    /// [`tree`] archived under `name/` as `b.tar.gz` in a new directory: the directory,
    /// the archive and its manifest.
    fn archived(name: &str) -> (tempfile::TempDir, PathBuf, Manifest) {
        let src = tempfile::tempdir().unwrap();
        tree(src.path());
        let out = tempfile::tempdir().unwrap();
        let archive = out.path().join("b.tar.gz");
        let sources = [Source {
            name: name.into(),
            path: src.path().join("app"),
            exclude: vec![],
        }];
        let m = create(&archive, &sources, Manifest::default(), 6, 2).unwrap();
        (out, archive, m)
    }

    #[test]
    fn a_round_trip_keeps_contents_modes_links_and_mtimes() {
        let (out, archive, m) = archived("release");
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
        let (_out, archive, _) = archived("r");
        let bytes = std::fs::read(&archive).unwrap();
        // A flip inside the first member's compressed data (past its 10-byte header).
        let mut flipped = bytes.clone();
        flipped[40] ^= 0x40;
        assert!(verify(flipped.as_slice()).is_err());
        assert!(verify(&bytes[..bytes.len() - 100]).is_err());
        assert!(verify(&bytes[..bytes.len() / 3]).is_err());
    }

    /// A tar header of `kind` and `size` bytes, mode 0644.
    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_entry_type(kind);
        h.set_size(size);
        h
    }

    fn raw_archive(build: impl FnOnce(&mut tar::Builder<GzEncoder<Vec<u8>>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        build(&mut b);
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unsafe_entries_are_refused_before_anything_is_written() {
        let unsafe_entry = |bytes: Vec<u8>| {
            let r = verify(bytes.as_slice());
            assert!(matches!(r, Err(ArchiveError::Unsafe { .. })), "{r:?}");
        };
        // A symlink out of the archive, a hard link to a file outside.
        for (kind, path, target) in [
            (tar::EntryType::Symlink, "release/etc", "../../../etc"),
            (tar::EntryType::Link, "release/shadow", "/etc/shadow"),
        ] {
            unsafe_entry(raw_archive(|b| {
                b.append_link(&mut header(kind, 0), path, target).unwrap();
            }));
        }
        // A file written through a symlink in the archive.
        unsafe_entry(raw_archive(|b| {
            let mut h = header(tar::EntryType::Symlink, 0);
            b.append_link(&mut h, "release/up", "/etc").unwrap();
            let mut f = header(tar::EntryType::Regular, 1);
            b.append_data(&mut f, "release/up/passwd", &b"x"[..])
                .unwrap();
        }));
        // A device.
        unsafe_entry(raw_archive(|b| {
            let mut h = header(tar::EntryType::Char, 0);
            b.append_data(&mut h, "release/null", io::empty()).unwrap();
        }));
        assert!(
            normalise(b"../x").is_err()
                && normalise(b"/etc/x").is_err()
                && normalise(b"a/b").is_ok()
        );
        assert_eq!(normalise(b"./a//b/./c/").unwrap(), "a/b/c");
        assert!(normalise(b"./").is_err() && normalise(b"a/\xff").is_err());
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_the_entry_is_written() {
        // 8 MiB of zeros gzip to a few KiB; the limit is 1 MiB.
        let bomb = raw_archive(|b| {
            let mut h = header(tar::EntryType::Regular, 8 << 20);
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

    /// One entry of a hand-made archive, its name exactly as the tar header spells it
    /// (tar's own `set_path` would tidy `./` and `//` away).
    enum Raw {
        File(&'static str, &'static [u8], u32),
        Dir(&'static str, u32),
        Link(&'static str, String),
    }

    impl Raw {
        fn name(&self) -> &'static str {
            match self {
                Raw::File(name, ..) | Raw::Dir(name, _) | Raw::Link(name, _) => name,
            }
        }
    }

    /// An archive of `entries` whose manifest agrees with every entry as spelled, so
    /// that only the safety checks can refuse it.
    fn crafted(entries: &[Raw]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        let mut manifest = Manifest {
            format: 1,
            ..Manifest::default()
        };
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(1_600_000_000);
            // The manifest's path as the restore will read it.
            let path = |name: &str| name.trim_end_matches('/').to_owned();
            let (name, data, entry): (&str, &[u8], Entry) = match e {
                Raw::File(name, data, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    let sha = hex::encode(Sha256::digest(data));
                    let size = data.len() as u64;
                    let entry = Entry::file(path(name), *mode, 1_600_000_000, size, sha);
                    (name, data, entry)
                }
                Raw::Dir(name, mode) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    (name, &[][..], Entry::dir(path(name), *mode, 1_600_000_000))
                }
                Raw::Link(name, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_link_name(target).unwrap();
                    let entry = Entry::symlink(path(name), 0o777, 1_600_000_000, target.clone());
                    (name, &[][..], entry)
                }
            };
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
            manifest.entries.push(entry);
        }
        let json = serde_json::to_vec(&manifest).unwrap();
        let mut h = header(tar::EntryType::Regular, json.len() as u64);
        b.append_data(&mut h, MANIFEST, json.as_slice()).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    /// A directory around the restore target, with things worth attacking beside it:
    /// `outside/victim` (a file) and `outside/dir` (a directory).
    struct Sandbox {
        root: tempfile::TempDir,
    }

    impl Sandbox {
        fn new() -> Sandbox {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(root.path().join("outside/dir")).unwrap();
            std::fs::write(root.path().join("outside/victim"), "original").unwrap();
            for (p, m) in [("outside/victim", 0o644), ("outside/dir", 0o755)] {
                std::fs::set_permissions(root.path().join(p), Permissions::from_mode(m)).unwrap();
            }
            Sandbox { root }
        }

        fn dest(&self) -> PathBuf {
            self.root.path().join("restore")
        }

        /// The absolute path of something outside the restore target.
        fn outside(&self, rel: &str) -> String {
            self.root
                .path()
                .join("outside")
                .join(rel)
                .display()
                .to_string()
        }

        /// Every path outside the restore target with its kind, mode, size, times,
        /// contents and link target.
        fn snapshot(&self) -> BTreeMap<PathBuf, String> {
            use std::os::unix::fs::MetadataExt;
            let mut all = BTreeMap::new();
            for item in walkdir::WalkDir::new(self.root.path())
                .min_depth(1)
                .follow_links(false)
                .into_iter()
                .filter_entry(|e| e.path() != self.dest())
            {
                let item = item.unwrap();
                let m = std::fs::symlink_metadata(item.path()).unwrap();
                let detail = if m.is_file() {
                    format!("{:?}", std::fs::read(item.path()).unwrap())
                } else if m.is_symlink() {
                    format!("-> {:?}", std::fs::read_link(item.path()).unwrap())
                } else {
                    String::new()
                };
                all.insert(
                    item.path().to_path_buf(),
                    format!(
                        "{:?} mode {:o} size {} mtime {}.{} ctime {}.{} {detail}",
                        m.file_type(),
                        m.mode(),
                        m.len(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec()
                    ),
                );
            }
            all
        }
    }

    /// Restores the archive `build` makes (given the sandbox) and asserts that it was
    /// refused as unsafe, with nothing changed outside the restore directory and the
    /// restore directory removed; `verify` must refuse it too. Returns the reason.
    fn refused(build: impl FnOnce(&Sandbox) -> Vec<Raw>) -> String {
        let sb = Sandbox::new();
        let bytes = crafted(&build(&sb));
        let before = sb.snapshot();
        let r = verify_into(bytes.as_slice(), &sb.dest());
        let after = sb.snapshot();
        assert_eq!(before, after, "written outside the restore directory");
        assert!(!sb.dest().exists(), "the refused restore was left behind");
        assert!(
            matches!(verify(bytes.as_slice()), Err(ArchiveError::Unsafe { .. })),
            "verify accepted what a restore refuses"
        );
        match r {
            Err(ArchiveError::Unsafe { why, .. }) => why,
            other => panic!("expected an unsafe entry, got {other:?}"),
        }
    }

    /// Archives of one shape, spelt many ways: a directory `r`, a symlink in it to
    /// something beside the restore target ([`Sandbox::outside`]), then an entry that
    /// would reach through the link. Each is refused, saying why.
    #[test]
    fn no_entry_is_written_through_an_earlier_symlink() {
        // (the link, what it points at, the entry after it, what the refusal says)
        #[rustfmt::skip]
        let cases = [
            // A file at the path of an earlier symlink.
            ("r/l", "victim", Raw::File("r/l", b"pwned", 0o644), "twice"),
            // A leading `./` or a double slash does not hide a symlink.
            ("r/l", "dir", Raw::File("./r/l/x", b"pwned", 0o644), "symlink `r/l`"),
            ("r/l", "dir", Raw::File("r//l/x", b"pwned", 0o644), "symlink `r/l`"),
            ("r/l", "dir", Raw::File("r/l//x", b"pwned", 0o644), "symlink `r/l`"),
            // A directory entry over a symlink.
            ("r/l", "dir", Raw::Dir("r/l/", 0o777), "twice"),
            // No mode is applied through a symlink: a file entry at the link's path, spelt
            // `r/./l` (without the check a restore truncates the victim and makes it
            // setuid and world-writable).
            ("r/l", "victim", Raw::File("r/./l", b"", 0o4777), "twice"),
            // An absolute symlink target is never written through.
            ("r/abs", "", Raw::File("r/./abs/new", b"pwned", 0o644), "symlink `r/abs`"),
        ];
        for (link, outside, entry, says) in cases {
            let spelt = entry.name();
            let why = refused(|sb| {
                vec![
                    Raw::Dir("r", 0o755),
                    Raw::Link(link, sb.outside(outside)),
                    entry,
                ]
            });
            assert!(why.contains(says), "{spelt}: {why}");
        }
    }

    #[test]
    fn a_symlink_over_entries_already_written_is_refused() {
        let why = refused(|sb| {
            vec![
                Raw::Dir("r", 0o755),
                Raw::File("r/l/x", b"fine", 0o644),
                Raw::Link("r/l", sb.outside("dir")),
            ]
        });
        assert!(why.contains("already holds"), "{why}");
    }

    #[test]
    fn a_symlink_on_disk_beneath_the_destination_is_not_followed() {
        // Something planted `restore/r -> outside` (a racing process, or a reused
        // directory): the write must not go through it.
        let sb = Sandbox::new();
        std::fs::create_dir(sb.dest()).unwrap();
        std::os::unix::fs::symlink(sb.outside(""), sb.dest().join("r")).unwrap();
        let bytes = crafted(&[Raw::File("r/new", b"pwned", 0o644)]);
        let before = sb.snapshot();
        let r = check_entries(bytes.as_slice(), Some(&sb.dest()), 1 << 30);
        assert_eq!(
            before,
            sb.snapshot(),
            "written outside the restore directory"
        );
        assert!(
            matches!(&r, Err(ArchiveError::Unsafe { why, .. }) if why.contains("on disk")),
            "{r:?}"
        );
    }

    #[test]
    fn a_huge_manifest_is_refused_with_its_size() {
        // A manifest of 64 MiB and one byte (valid JSON: unknown fields are ignored) is
        // refused before it is read into memory. The archive is gzip members joined (as
        // our own archives are), one 1 MiB member of spaces repeated, so that building
        // it costs little.
        let limit: usize = 64 << 20;
        let head = br#"{"format":1,"created_at":"","release":"","ref":"","runbook":"","entries":[],"pad":""#;
        let tail = br#""}"#;
        let gz = |data: &[u8]| {
            let mut e = GzEncoder::new(Vec::new(), Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let mut h = header(tar::EntryType::Regular, limit as u64 + 1);
        h.set_path(MANIFEST).unwrap();
        h.set_cksum();
        let mut bytes = gz(&[h.as_bytes().as_slice(), head].concat());
        let spaces = limit + 1 - head.len() - tail.len();
        let mib = gz(&vec![b' '; 1 << 20]);
        for _ in 0..spaces >> 20 {
            bytes.extend_from_slice(&mib);
        }
        let mut rest = vec![b' '; spaces % (1 << 20)];
        rest.extend_from_slice(tail);
        rest.resize(rest.len() + (512 - (limit + 1) % 512) % 512 + 1024, 0);
        bytes.extend_from_slice(&gz(&rest));
        let r = verify(bytes.as_slice());
        assert!(
            matches!(&r, Err(ArchiveError::Corrupt(why)) if why.contains("67108865 bytes") && why.contains("RUNBOOK_MANIFEST_LIMIT")),
            "{r:?}"
        );
    }
}

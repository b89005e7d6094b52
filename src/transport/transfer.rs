//! Files and directories to and from hosts over the host's existing connection (no new
//! TCP connection per file), streamed through files on the runner: nothing of a transfer
//! is held in memory. A directory travels as a gzip'd tar stream (modes and symlinks
//! survive); a single file travels as it is (its mode kept), so an already-compressed
//! artifact is not compressed a second time.

use std::io::{BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[cfg(test)]
use flate2::Compression;
use flate2::read::MultiGzDecoder;
#[cfg(test)]
use flate2::write::GzEncoder;

use super::{CHUNK, CommandSpec, Program};
use crate::quote::NulByte;

#[cfg(test)]
/// Packs `src` (a file or a directory) as the single top-level entry `name`.
pub(crate) fn pack(src: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    pack_into(src, name, Vec::new())
}

/// [`pack`] into a temporary file on the runner (removed when dropped), compressed on
/// every core: the hosts wait for it before the first byte is sent. When compression
/// saves less than a tenth ([`WORTH_COMPRESSING`]: media, already-compressed files),
/// the directory is packed again as a plain tar, which each host then unpacks without
/// gunzip (whose checksum and copy would be the only work it does on such data).
/// Returns the file and whether it is compressed.
pub(crate) fn pack_to_file(
    src: &Path,
    name: &str,
) -> std::io::Result<(tempfile::NamedTempFile, bool)> {
    let file = tempfile::Builder::new()
        .prefix("runbook-upload-")
        .suffix(".tar.gz")
        .tempfile()?;
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let gz = crate::gzip::Parallel::new(file.as_file().try_clone()?, 1, threads, true);
    let counted = tar_into(
        src,
        name,
        Counted {
            inner: gz,
            bytes: 0,
        },
    )?;
    let raw = counted.bytes;
    counted.inner.finish()?;
    let packed = file.as_file().metadata()?.len();
    if packed.saturating_mul(WORTH_COMPRESSING.1) < raw.saturating_mul(WORTH_COMPRESSING.0) {
        return Ok((file, true));
    }
    Ok((tar_to_file(src, name)?, false))
}

/// `src` as the single entry `name` of a plain tar in a temporary file on the runner
/// (removed when dropped).
pub(crate) fn tar_to_file(src: &Path, name: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let plain = tempfile::Builder::new()
        .prefix("runbook-upload-")
        .suffix(".tar")
        .tempfile()?;
    let out = std::io::BufWriter::with_capacity(CHUNK, plain.as_file().try_clone()?);
    std::io::Write::flush(&mut tar_into(src, name, out)?)?;
    Ok(plain)
}

/// Compressed size / tar size below which an upload travels compressed (9/10).
const WORTH_COMPRESSING: (u64, u64) = (9, 10);

/// A writer that counts what passes through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: std::io::Write> std::io::Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
fn pack_into<W: std::io::Write>(src: &Path, name: &str, out: W) -> std::io::Result<W> {
    tar_into(src, name, GzEncoder::new(out, Compression::fast()))?.finish()
}

/// `src` as the single top-level entry `name` of a tar stream written into `out`.
fn tar_into<W: std::io::Write>(src: &Path, name: &str, out: W) -> std::io::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let meta = std::fs::symlink_metadata(src)?;
    if meta.is_dir() {
        builder.append_dir_all(name, src)?;
    } else {
        builder.append_path_with_name(src, name)?;
    }
    builder.into_inner()
}

/// Unpacks an archive made by [`pack`] or [`pack_to_file`] (several gzip members) or by
/// `tar -cz` into `dir`, keeping modes.
pub(crate) fn unpack(archive: impl Read, dir: &Path) -> std::io::Result<()> {
    extract(MultiGzDecoder::new(archive), dir)
}

/// Unpacks a tar stream into `dir`, keeping modes.
fn extract(tar: impl Read, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(tar);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    // tar's error says which file; its cause (e.g. "No space left on device") is the
    // part an engineer needs, so both go into the message.
    archive.unpack(dir).map_err(|e| {
        // The innermost cause is the one that says what to do.
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        std::io::Error::new(e.kind(), format!("{e}: {cause}"))
    })
}

/// [`unpack`] of an archive file, read through a bounded buffer; a plain tar (no gzip
/// magic) is unpacked as it is.
pub(crate) fn unpack_file(archive: &Path, dir: &Path) -> std::io::Result<()> {
    use std::io::BufRead;
    let mut file = BufReader::with_capacity(CHUNK, std::fs::File::open(archive)?);
    if file.fill_buf()?.starts_with(&[0x1f, 0x8b]) {
        unpack(file, dir)
    } else {
        extract(file, dir)
    }
}

/// Receives a file as it is on stdin: written beside the destination, given its mode
/// (and modification time), then renamed into place, so a reader never sees half of it.
const RECEIVE_FILE: &str = r#"set -eu
parent=$1 name=$2 mode=$3 mtime=$4
mkdir -p -- "$parent"
dest=$parent/$name part=$parent/.$name.runbook-$$
if [ -d "$dest" ]; then echo "$dest is a directory: the file was not copied over it" >&2; exit 1; fi
trap 'rm -f -- "$part"' EXIT
cat > "$part"
chmod "$mode" "$part"
touch -m -d "@$mtime" "$part" 2>/dev/null || true
mv -f -- "$part" "$dest"
trap - EXIT
"#;

/// Receives a directory packed by [`pack`] on stdin into its parent.
const RECEIVE_TAR: &str = r#"mkdir -p -- "$1" && tar -xzpf - -C "$1""#;
/// [`RECEIVE_TAR`] of a plain tar ([`pack_to_file`] when compression did not pay).
const RECEIVE_PLAIN_TAR: &str = r#"mkdir -p -- "$1" && tar -xpf - -C "$1""#;

/// An upload prepared once for every host it goes to: the bytes to send are one file on
/// the runner — the source itself when it is a single file, else the directory packed
/// once into a temporary file — which each host reads on its own, through its own
/// bounded buffer, at its own pace.
#[derive(Debug)]
pub(crate) struct Upload {
    file: PathBuf,
    /// The packed directory (removed when the upload is dropped).
    packed: Option<tempfile::NamedTempFile>,
    /// The packed directory is gzip'd (else a plain tar).
    compressed: bool,
    mode: u32,
    mtime: i64,
    len: u64,
}

impl Upload {
    /// Prepares `local` to be received as `name` (the last component of every remote
    /// path it goes to). A directory is packed here, once.
    pub(crate) fn prepare(local: &Path, name: &str) -> std::io::Result<Upload> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(local)?;
        if meta.is_dir() {
            let (packed, compressed) = pack_to_file(local, name)?;
            let len = packed.as_file().metadata()?.len();
            return Ok(Upload {
                file: packed.path().to_owned(),
                packed: Some(packed),
                compressed,
                mode: 0,
                mtime: 0,
                len,
            });
        }
        Ok(Upload {
            file: local.to_owned(),
            packed: None,
            compressed: false,
            mode: meta.permissions().mode() & 0o7777,
            mtime: meta.mtime(),
            len: meta.len(),
        })
    }

    /// Whether the packed directory is gzip'd (compression saved a tenth or more).
    pub(crate) fn compressed(&self) -> bool {
        self.compressed
    }

    /// Whether a directory was packed (else the file travels as it is).
    pub(crate) fn packed(&self) -> bool {
        self.packed.is_some()
    }

    /// The bytes that travel.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The command that receives this upload as `parent/name` on a host, its standard
    /// input streamed from the prepared file.
    pub(crate) fn command(&self, parent: &str, name: &str) -> CommandSpec {
        let argv: Vec<String> = if self.packed() {
            let receive = if self.compressed {
                RECEIVE_TAR
            } else {
                RECEIVE_PLAIN_TAR
            };
            ["sh", "-c", receive, "sh", parent]
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            vec![
                "sh".into(),
                "-c".into(),
                RECEIVE_FILE.into(),
                "sh".into(),
                parent.to_owned(),
                name.to_owned(),
                format!("{:o}", self.mode),
                self.mtime.to_string(),
            ]
        };
        let mut spec = CommandSpec::new(Program::Argv(argv));
        spec.stdin_file = Some(self.file.clone());
        spec.quiet = true;
        spec
    }

    /// Receives the upload on this machine (the local transport), in-process.
    pub(crate) fn receive_here(&self, parent: &Path, name: &str) -> std::io::Result<()> {
        if self.packed() {
            return unpack_file(&self.file, parent);
        }
        std::fs::create_dir_all(parent)?;
        let dest = parent.join(name);
        if dest.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is a directory: the file was not copied over it",
                dest.display()
            )));
        }
        let part = tempfile::Builder::new()
            .prefix(&format!(".{name}.runbook-"))
            .tempfile_in(parent)?;
        let mut from = std::fs::File::open(&self.file)?;
        std::io::copy(&mut from, &mut part.as_file())?;
        part.as_file()
            .set_permissions(std::fs::Permissions::from_mode(self.mode))?;
        let mtime = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(self.mtime).unwrap_or(0));
        part.as_file().set_modified(mtime)?;
        part.persist(&dest).map_err(|e| e.error)?;
        Ok(())
    }
}

/// The command that packs `parent/name` on a host to stdout, written to `archive` here.
pub(crate) fn download_command(
    parent: &str,
    name: &str,
    archive: &Path,
) -> Result<CommandSpec, NulByte> {
    let mut spec = CommandSpec::new(Program::Shell(remote_pack(parent, name)?));
    spec.stdout_file = Some(archive.to_owned());
    spec.quiet = true;
    Ok(spec)
}

/// A remote path with no last component to copy (`/`, `.`, `a/..`). One variant on
/// purpose: no caller branches on it, it tells the person which path to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{path}` does not name a file or directory")]
pub(crate) struct NoName {
    pub path: String,
}

/// Splits a remote path into (parent directory, last component).
pub(crate) fn split(path: &str) -> Result<(String, String), NoName> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/".to_owned(), name.to_owned()),
        Some((parent, name)) => (parent.to_owned(), name.to_owned()),
        None => (".".to_owned(), trimmed.to_owned()),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(NoName {
            path: path.to_owned(),
        });
    }
    Ok((parent, name))
}

/// The shell line that packs `parent/name` to stdout on a host.
pub(crate) fn remote_pack(parent: &str, name: &str) -> Result<String, NulByte> {
    let p = crate::quote::command_line(&[parent.to_owned()])?;
    let n = crate::quote::command_line(&[name.to_owned()])?;
    Ok(format!("tar -czf - -C {p} -- {n}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_packed_on_every_core_unpacks_whole() {
        // Larger than one gzip member: a reader that stops at the first member loses the rest.
        let src = tempfile::tempdir().unwrap();
        let len = u32::try_from(3 * crate::gzip::PIECE + 4_321).expect("a test size");
        let big: Vec<u8> = (0..len)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11).to_le_bytes()[0])
            .collect();
        std::fs::write(src.path().join("big"), &big).unwrap();
        std::fs::write(src.path().join("small"), "after the big one").unwrap();
        let (packed, compressed) = pack_to_file(src.path(), "r1").unwrap();
        assert!(compressed, "the bytes repeat: compression pays");
        let dest = tempfile::tempdir().unwrap();
        unpack_file(packed.path(), dest.path()).unwrap();
        assert!(std::fs::read(dest.path().join("r1/big")).unwrap() == big);
        assert_eq!(
            std::fs::read_to_string(dest.path().join("r1/small")).unwrap(),
            "after the big one"
        );
        // and GNU tar reads it the same way
        let gnu = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("tar")
            .arg("-xzf")
            .arg(packed.path())
            .arg("-C")
            .arg(gnu.path())
            .status()
            .unwrap();
        assert!(ok.success());
        assert!(std::fs::read(gnu.path().join("r1/big")).unwrap() == big);
    }

    /// Data compression cannot shrink travels as a plain tar, which this machine's
    /// unpacking and GNU tar's `RECEIVE_PLAIN_TAR` both read; the upload says which.
    #[test]
    fn an_incompressible_directory_travels_as_a_plain_tar() {
        use std::io::Read as _;
        let src = tempfile::tempdir().unwrap();
        let mut noise = vec![0u8; 3 * crate::gzip::PIECE];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut noise)
            .unwrap();
        std::fs::write(src.path().join("media.bin"), &noise).unwrap();
        std::fs::write(src.path().join(".env"), "APP_ENV=x\n").unwrap();
        let up = Upload::prepare(src.path(), "r1").unwrap();
        assert!(up.packed() && !up.compressed);
        let raw = noise.len() as u64;
        assert!(up.len() > raw && up.len() < raw + 64 * 1024, "{}", up.len());
        let here = tempfile::tempdir().unwrap();
        up.receive_here(here.path(), "r1").unwrap();
        assert!(std::fs::read(here.path().join("r1/media.bin")).unwrap() == noise);
        let spec = up.command(&here.path().join("gnu").to_string_lossy(), "r1");
        let Program::Argv(argv) = &spec.program else {
            panic!("an argv")
        };
        assert_eq!(argv[2], RECEIVE_PLAIN_TAR);
        let ok = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(std::fs::File::open(&up.file).unwrap())
            .status()
            .unwrap();
        assert!(ok.success());
        assert!(std::fs::read(here.path().join("gnu/r1/media.bin")).unwrap() == noise);
    }

    #[test]
    fn a_directory_round_trips_with_modes_and_symlinks() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("bin")).unwrap();
        std::fs::write(src.path().join("bin/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            src.path().join("bin/run"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::fs::write(src.path().join("secret"), "x").unwrap();
        std::fs::set_permissions(
            src.path().join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink("bin/run", src.path().join("link")).unwrap();
        let bytes = pack(src.path(), "app").unwrap();
        let dst = tempfile::tempdir().unwrap();
        unpack(&bytes[..], dst.path()).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dst.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("app/bin/run"), 0o750);
        assert_eq!(mode("app/secret"), 0o600);
        assert_eq!(
            std::fs::read_link(dst.path().join("app/link")).unwrap(),
            Path::new("bin/run")
        );
    }

    #[test]
    fn remote_paths_split_into_parent_and_name() {
        assert_eq!(split("/srv/app/").unwrap(), ("/srv".into(), "app".into()));
        assert_eq!(split("/x").unwrap(), ("/".into(), "x".into()));
        assert_eq!(split("rel").unwrap(), (".".into(), "rel".into()));
        assert_eq!(
            split("/").unwrap_err().to_string(),
            "`/` does not name a file or directory"
        );
    }
}

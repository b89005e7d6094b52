//! Writing a restored tree beneath one directory without ever following a link.
//!
//! Every path is walked one component at a time from an open handle on the restore
//! directory: each directory is opened with `O_DIRECTORY | O_NOFOLLOW`, a file is created
//! with `O_CREAT | O_EXCL | O_NOFOLLOW`, modes and times are set on the open handle
//! (`fchmod`, `futimens`), never through a path, and a link is made with `symlinkat` in
//! a parent opened the same way. A symlink or a file in the way — put there by the
//! archive or by anything else while the restore runs — is an error (`ELOOP`, `ENOTDIR`,
//! `EEXIST`), never a detour. This is the portable form of `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: it needs no particular kernel and works on
//! macOS too.
//!
//! It must never be handed `..`, `.` or an absolute path: callers pass the normal
//! components of a path that `archive::normalise` accepted.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;

const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// An open restore directory; everything is created beneath it.
pub(super) struct Beneath {
    root: OwnedFd,
}

impl Beneath {
    /// Holds the existing directory `dest` open (refused if `dest` is a symlink).
    pub(super) fn open(dest: &Path) -> io::Result<Beneath> {
        let root = rustix::fs::openat(rustix::fs::CWD, dest, DIR, Mode::empty())?;
        Ok(Beneath { root })
    }

    /// The directory at `comps` (none: the restore directory), each component opened
    /// without following a link; missing ones are made (mode 0700) when `create`.
    fn dir(&self, comps: &[&str], create: bool) -> io::Result<OwnedFd> {
        let mut cur = rustix::io::dup(&self.root)?;
        for c in comps {
            let next = match rustix::fs::openat(&cur, *c, DIR, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, *c, Mode::RWXU) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    rustix::fs::openat(&cur, *c, DIR, Mode::empty())?
                }
                other => other?,
            };
            cur = next;
        }
        Ok(cur)
    }

    /// The parent of `comps` (made if missing) and the last component.
    fn parent<'a>(&self, comps: &[&'a str]) -> io::Result<(OwnedFd, &'a str)> {
        let Some((last, parents)) = comps.split_last() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an entry must name something inside the restore directory",
            ));
        };
        Ok((self.dir(parents, true)?, last))
    }

    /// Makes the directory `comps` (and its parents) if it is not there yet.
    pub(super) fn create_dir(&self, comps: &[&str]) -> io::Result<()> {
        self.dir(comps, true).map(drop)
    }

    /// Creates the new file `comps` (mode 0600 until [`finish_file`]); an existing
    /// name — a file, a directory or a symlink — is an error.
    pub(super) fn create_file(&self, comps: &[&str]) -> io::Result<File> {
        let (parent, name) = self.parent(comps)?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&parent, name, flags, Mode::RUSR | Mode::WUSR)?;
        Ok(File::from(fd))
    }

    /// Makes the symlink `comps` pointing at `target`. The link is created, never
    /// followed: `target` is stored as it is.
    pub(super) fn symlink(&self, comps: &[&str], target: &str) -> io::Result<()> {
        let (parent, name) = self.parent(comps)?;
        Ok(rustix::fs::symlinkat(target, &parent, name)?)
    }

    /// Applies a directory's mode and mtime through its own handle.
    pub(super) fn finish_dir(&self, comps: &[&str], mode: u32, mtime: i64) -> io::Result<()> {
        let dir = self.dir(comps, false)?;
        set_mode_and_mtime(dir.as_fd(), mode, mtime)
    }

    /// Sets a symlink's own mtime (never its target's).
    pub(super) fn finish_symlink(&self, comps: &[&str], mtime: i64) -> io::Result<()> {
        let (parent, name) = self.parent(comps)?;
        Ok(rustix::fs::utimensat(
            &parent,
            name,
            &times(mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }
}

/// Applies a file's mode and mtime through its open handle.
pub(super) fn finish_file(file: &File, mode: u32, mtime: i64) -> io::Result<()> {
    set_mode_and_mtime(file.as_fd(), mode, mtime)
}

fn set_mode_and_mtime(fd: BorrowedFd<'_>, mode: u32, mtime: i64) -> io::Result<()> {
    // `RawMode` is `u32` on Linux and `u16` on macOS.
    #[allow(clippy::unnecessary_cast)]
    let mode = Mode::from_bits_truncate(mode as rustix::fs::RawMode);
    rustix::fs::fchmod(fd, mode)?;
    Ok(rustix::fs::futimens(fd, &times(mtime))?)
}

/// The access time left alone, the modification time set.
fn times(mtime: i64) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    }
}

/// Whether an error means something was in the way on disk: a symlink where a
/// directory was expected (`ELOOP`), a file there (`ENOTDIR`), or a name taken (`EEXIST`).
pub(super) fn in_the_way(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::LOOP | Errno::NOTDIR | Errno::EXIST)
    )
}

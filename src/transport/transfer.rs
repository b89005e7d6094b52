//! Files and directories to and from hosts, as a gzip'd tar stream over the host's
//! existing connection (no new TCP connection per file). Modes and symlinks survive.

use std::path::Path;

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// Packs `src` (a file or a directory) as the single top-level entry `name`.
pub fn pack(src: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    let meta = std::fs::symlink_metadata(src)?;
    if meta.is_dir() {
        builder.append_dir_all(name, src)?;
    } else {
        builder.append_path_with_name(src, name)?;
    }
    builder.into_inner()?.finish()
}

/// Unpacks an archive made by [`pack`] (or `tar -cz`) into `dir`, keeping modes.
pub fn unpack(bytes: &[u8], dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
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

/// Splits a remote path into (parent directory, last component).
pub fn split(path: &str) -> Result<(String, String), String> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some(("", name)) => ("/".to_owned(), name.to_owned()),
        Some((parent, name)) => (parent.to_owned(), name.to_owned()),
        None => (".".to_owned(), trimmed.to_owned()),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("`{path}` does not name a file or directory"));
    }
    Ok((parent, name))
}

/// The shell line that unpacks stdin into `parent` on a host.
pub fn remote_unpack(parent: &str) -> Result<String, String> {
    let p = crate::quote::command_line(&[parent.to_owned()])?;
    Ok(format!("mkdir -p -- {p} && tar -xzpf - -C {p}"))
}

/// The shell line that packs `parent/name` to stdout on a host.
pub fn remote_pack(parent: &str, name: &str) -> Result<String, String> {
    let p = crate::quote::command_line(&[parent.to_owned()])?;
    let n = crate::quote::command_line(&[name.to_owned()])?;
    Ok(format!("tar -czf - -C {p} -- {n}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
        unpack(&bytes, dst.path()).unwrap();
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
        assert!(split("/").is_err());
    }
}

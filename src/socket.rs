//! Unix socket files, shared by both sides: the host's spawner and the
//! extension's server.
//!
//! Before binding (the extension) or before spawning the process that will
//! bind (the host), a socket file left behind by an earlier run is removed,
//! but only if it is ours and dead: a socket some live process still
//! listens on, a socket of another user, or any other kind of file, is an
//! error and stays. Removing a socket later (at stop) goes by inode: only
//! the file this host's extension bound is removed, never one that another
//! host has since bound at the same path.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Removes a stale socket of ours at `path`; a socket a live process
/// listens on, a socket of another user, or any other kind of file, is an
/// error and stays.
pub(crate) fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta)
            if meta.file_type().is_socket() && meta.uid() != nix::unistd::geteuid().as_raw() =>
        {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is a socket owned by uid {}, not by us; refusing to replace it",
                    path.display(),
                    meta.uid()
                ),
            ))
        }
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use: a live process listens on it; refusing to replace it",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The inode of the socket file at `path`, if there is one.
pub(crate) fn inode(path: &Path) -> Option<u64> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type().is_socket().then(|| meta.ino())
}

/// Removes the socket file at `path` if it is still the one with inode
/// `ino` (the one our extension bound); leaves any other alone.
pub(crate) fn remove_if_same(path: &Path, ino: Option<u64>) {
    if ino.is_some() && inode(path) == ino {
        let _ = std::fs::remove_file(path);
    }
}

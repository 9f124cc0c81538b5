//! Unix socket files, shared by both sides: the host's spawner and the
//! extension's server.
//!
//! Before binding (the extension) or before spawning the process that will
//! bind (the host), a socket file left behind by an earlier run is removed,
//! but only if it is ours: a socket of another user, or any other kind of
//! file, is an error and stays.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Removes a stale socket of ours at `path`; a socket of another user, or
/// any other kind of file, is an error and stays.
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
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

use std::io;
use std::path::PathBuf;

/// Why a conformance run could not take place at all.
///
/// Anything the extension does wrong is a check's outcome in the
/// [`Report`](super::Report), not an error; a program that cannot be
/// started fails the `socket` check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The private folder for the extension's socket and log could not be
    /// created.
    #[error("cannot create a private folder under {}: {source}", .parent.display())]
    TempDir {
        /// The folder it was to be created in (the system's temporary
        /// folder, `$TMPDIR`).
        parent: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket path would be longer than the OS accepts.
    #[error(
        "socket path {} is {len} bytes, over the OS limit of {max}; set TMPDIR to a shorter folder",
        .path.display()
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

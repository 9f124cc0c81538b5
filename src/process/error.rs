//! Why a process could not be spawned: [`SpawnError`].

use std::path::PathBuf;

use crate::config::ConfigError;

/// Why a service's process could not be spawned.
///
/// The [`connector`](crate::connector) wraps it in
/// [`StartError::Spawn`](crate::connector::StartError::Spawn), with the same
/// message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// The service's configuration is invalid.
    #[error(transparent)]
    Config(ConfigError),
    /// No binary was found.
    #[error("service `{service}`: binary not found; looked in {}", display_paths(.looked))]
    BinaryNotFound {
        /// The service.
        service: String,
        /// Every place looked, in order.
        looked: Vec<PathBuf>,
    },
    /// The binary exists but is not executable.
    #[error("service `{service}`: {path} is not executable")]
    NotExecutable {
        /// The service.
        service: String,
        /// The binary.
        path: PathBuf,
    },
    /// The socket path is longer than the OS accepts.
    #[error(
        "socket path {path} is {len} bytes, over the OS limit of {max}; use a shorter services_dir"
    )]
    SocketPathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A file-system step failed.
    #[error("service `{service}`: cannot {what}: {source}")]
    Io {
        /// The service.
        service: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The host is out of descriptors or memory (`EMFILE`, `ENFILE`,
    /// `ENOMEM`, `ENOBUFS`): reported at once, never retried.
    #[error("service `{service}`: out of resources: cannot {what}: {source} (raise the hard descriptor limit, `ulimit -Hn`, or run fewer extensions)")]
    Resources {
        /// The service.
        service: String,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The binary's SHA-256 is not the one `sha256` pins: nothing was
    /// spawned.
    #[error("service `{service}`: {binary} has sha256 {actual}, but `sha256` pins {expected}; not starting it")]
    HashMismatch {
        /// The service.
        service: String,
        /// The binary.
        binary: PathBuf,
        /// The hash the configuration pins.
        expected: String,
        /// The binary's hash.
        actual: String,
    },
    /// `sha256` pins a `#!` script, which cannot be pinned: the
    /// interpreter would open the script again by its path.
    #[error("service `{service}`: {binary} is a `#!` script, and `sha256` pins only binaries (the interpreter opens a script again by path); pin the interpreter and run the script from a path only you can write, or remove `sha256`")]
    PinnedScript {
        /// The service.
        service: String,
        /// The script.
        binary: PathBuf,
    },
    /// The Landlock sandbox is `required` and cannot be enforced, or
    /// cannot be built.
    #[error("service `{service}`: sandbox {problem}")]
    Sandbox {
        /// The service.
        service: String,
        /// What is wrong.
        problem: String,
    },
    /// The operating system could not start the binary.
    #[error("service `{service}`: cannot spawn {binary}: {source}")]
    Exec {
        /// The service.
        service: String,
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl SpawnError {
    /// Whether the host ran out of descriptors or memory.
    pub fn is_resource_exhausted(&self) -> bool {
        matches!(self, SpawnError::Resources { .. })
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere (no HOME, no PATH)".to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

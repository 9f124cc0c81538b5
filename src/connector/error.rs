//! Why an extension could not be started: [`StartError`].

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::config::ConfigError;
use crate::handshake::HandshakeError;

/// Why an extension could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
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
    /// The process could not be spawned.
    #[error("service `{service}`: cannot spawn {binary}: {source}")]
    Spawn {
        /// The service.
        service: String,
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The process exited before it was ready.
    #[error(
        "service `{service}` exited before it was ready ({status}); last log lines:\n{log_tail}"
    )]
    ExitedEarly {
        /// The service.
        service: String,
        /// How it exited.
        status: ExitStatus,
        /// The end of its log file.
        log_tail: String,
    },
    /// The process did not accept a connection in time.
    #[error(
        "service `{service}` did not open its socket within {after:?}; last log lines:\n{log_tail}"
    )]
    Timeout {
        /// The service.
        service: String,
        /// The time allowed.
        after: Duration,
        /// The end of its log file.
        log_tail: String,
    },
    /// Something other than the spawned process answered on its socket.
    #[error("service `{service}`: the socket is served by pid {peer_pid:?} (uid {peer_uid}), not by the extension we spawned; refusing it")]
    Impostor {
        /// The service.
        service: String,
        /// The peer's process id, if the OS reported one.
        peer_pid: Option<u32>,
        /// The peer's user id.
        peer_uid: u32,
    },
    /// The handshake failed.
    #[error("service `{service}`: handshake failed: {source}")]
    Handshake {
        /// The service.
        service: String,
        /// The cause.
        #[source]
        source: HandshakeError,
    },
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

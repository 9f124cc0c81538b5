//! Why an extension could not be started: [`StartError`].

use std::process::ExitStatus;
use std::time::Duration;

use crate::handshake::HandshakeError;
use crate::process::SpawnError;

/// Why an extension could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The process could not be spawned.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
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
    /// The host is out of descriptors or memory (`EMFILE`, `ENFILE`,
    /// `ENOMEM`, `ENOBUFS`) while connecting: reported at once, never
    /// retried until a timeout.
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
    /// Reading the peer's credentials, or connecting, failed.
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
    /// The MCP session could not be opened or its tools listed (or not
    /// within `handshake_timeout`).
    #[cfg(feature = "mcp")]
    #[error("service `{service}`: {source}{}", tail(log_tail))]
    Mcp {
        /// The service.
        service: String,
        /// The cause.
        #[source]
        source: Box<crate::mcp::McpError>,
        /// The end of its log file (stdio servers), else empty.
        log_tail: String,
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

/// `; last log lines:` and the lines, if there are any.
#[cfg(feature = "mcp")]
fn tail(log_tail: &str) -> String {
    if log_tail.trim().is_empty() {
        String::new()
    } else {
        format!("; last log lines:\n{log_tail}")
    }
}

impl StartError {
    /// Whether the host ran out of descriptors or memory, spawning or
    /// connecting.
    pub fn is_resource_exhausted(&self) -> bool {
        match self {
            StartError::Resources { .. } => true,
            StartError::Spawn(e) => e.is_resource_exhausted(),
            _ => false,
        }
    }
}

//! Errors at the public boundary: starting extensions.

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

/// Why a tool call, query or schema request failed.
///
/// Match on it instead of parsing strings; [`CallError::kind`] gives the
/// stable snake_case name (`unknown_tool`, `timeout`, …) that the `exthost`
/// command prints.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No ready or known extension offers this tool.
    #[error("unknown tool: {tool}")]
    UnknownTool {
        /// The tool asked for.
        tool: String,
    },
    /// No such service, or it does not answer this kind of request.
    #[error("unknown service: {service}{}", if *.exists { " (it does not answer service queries)" } else { "" })]
    UnknownService {
        /// The service asked for.
        service: String,
        /// Whether the service exists but lacks the query capability.
        exists: bool,
    },
    /// The call did not complete in time.
    #[error("service timeout: {service} ({after:?})")]
    Timeout {
        /// The service called.
        service: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The extension is not running, crashed, or is restarting.
    #[error("service unavailable: {service} ({reason})")]
    Unavailable {
        /// The service.
        service: String,
        /// Why.
        reason: String,
        /// Whether the request may have reached the extension before it
        /// went away (and so may have had effects).
        delivered: bool,
    },
    /// The extension answered with an `error` response.
    #[error("service error: {message}")]
    Extension {
        /// The service.
        service: String,
        /// The extension's message.
        message: String,
    },
    /// The extension broke the protocol; its connection was reset.
    #[error("protocol violation by {service}: {reason}")]
    Protocol {
        /// The service.
        service: String,
        /// What it did.
        reason: String,
    },
}

impl CallError {
    /// The error's stable name: `unknown_tool`, `unknown_service`,
    /// `timeout`, `unavailable`, `extension` or `protocol`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::UnknownTool { .. } => "unknown_tool",
            CallError::UnknownService { .. } => "unknown_service",
            CallError::Timeout { .. } => "timeout",
            CallError::Unavailable { .. } => "unavailable",
            CallError::Extension { .. } => "extension",
            CallError::Protocol { .. } => "protocol",
        }
    }

    /// Whether retrying cannot repeat an effect: the request certainly
    /// never reached an extension.
    pub fn is_retry_safe(&self) -> bool {
        matches!(
            self,
            CallError::Unavailable {
                delivered: false,
                ..
            }
        )
    }

    /// Maps an error from a per-extension stack.
    pub(crate) fn from_stack(service: &str, timeout: Duration, e: tower::BoxError) -> Self {
        use crate::client::ConnectionError;
        if e.is::<tower::timeout::error::Elapsed>() {
            return CallError::Timeout {
                service: service.to_owned(),
                after: timeout,
            };
        }
        match e.downcast::<ConnectionError>() {
            Ok(conn) if conn.is_protocol_violation() => CallError::Protocol {
                service: service.to_owned(),
                reason: conn.to_string(),
            },
            Ok(conn) => CallError::Unavailable {
                service: service.to_owned(),
                reason: conn.to_string(),
                delivered: true,
            },
            Err(other) => CallError::Unavailable {
                service: service.to_owned(),
                reason: other.to_string(),
                delivered: true,
            },
        }
    }
}

//! Where a service is in its life, and why it went down.
//!
//! The [`ServiceManager`](crate::manager::ServiceManager) publishes a
//! [`ServiceStatus`] per service; the [`Router`](crate::router::Router)
//! quotes the state and the [`DownReason`] when a call finds a service
//! unavailable. Both are typed: match on them instead of parsing text.
//!
//! # Example
//!
//! ```
//! use exthost::status::{DownReason, ServiceState, ServiceStatus};
//! use std::os::unix::process::ExitStatusExt;
//!
//! let status = ServiceStatus {
//!     state: ServiceState::Restarting,
//!     pid: None,
//!     restarts: 1,
//!     error: Some(DownReason::Exited(std::process::ExitStatus::from_raw(3 << 8))),
//!     tools_left_out: Vec::new(),
//!     tools_hidden: 0,
//!     restrictions: Vec::new(),
//! };
//! assert_eq!(status.state.as_str(), "restarting");
//! assert_eq!(status.error.unwrap().to_string(), "exited: exit status: 3");
//! ```

use std::fmt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::client::ConnectionError;
use crate::connector::StartError;

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Being started for the first time.
    Starting,
    /// Handshaken and taking calls.
    Ready,
    /// Down, and being started again.
    Restarting,
    /// Down for good (policy, crash loop, or a start that failed).
    Failed,
    /// Stopped by the host, or exited cleanly with no restart due.
    Stopped,
}

impl ServiceState {
    /// The state's name: `starting`, `ready`, `restarting`, `failed` or
    /// `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Ready => "ready",
            ServiceState::Restarting => "restarting",
            ServiceState::Failed => "failed",
            ServiceState::Stopped => "stopped",
        }
    }
}

impl ServiceState {
    /// Whether the service stays down until an operator (or the breaker's
    /// cooldown) starts it: `failed` or `stopped`. Its tools are not
    /// advertised meanwhile.
    pub fn is_terminal(self) -> bool {
        matches!(self, ServiceState::Failed | ServiceState::Stopped)
    }
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a service's incarnation ended or never began.
///
/// Cheap to clone; its `Display` is the text the `exthost` command prints
/// (`exited: exit status: 3`, `connection lost: …`, `start failed: …`,
/// `crash loop: …`), and [`source`](std::error::Error::source) gives the
/// typed cause.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DownReason {
    /// The process exited (or was killed by a signal).
    #[error("exited: {0}")]
    Exited(ExitStatus),
    /// The connection failed while the process lived; the process was
    /// stopped.
    #[error("connection lost: {0}")]
    ConnectionLost(#[source] ConnectionError),
    /// Starting it failed.
    #[error("start failed: {0}")]
    StartFailed(#[source] Arc<StartError>),
    /// The crash-loop breaker tripped.
    #[error("crash loop: {restarts} restarts within {window:?}; last: {last}")]
    CrashLoop {
        /// Restarts counted in the window.
        restarts: usize,
        /// The breaker's window.
        window: Duration,
        /// Why it went down the last time.
        #[source]
        last: Box<DownReason>,
    },
}

impl DownReason {
    /// Whether this counts as a failure for the `on_failure` restart
    /// policy: anything but a clean exit.
    pub fn is_failure(&self) -> bool {
        match self {
            DownReason::Exited(status) => !status.success(),
            _ => true,
        }
    }
}

impl Serialize for DownReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A service's status, as callers and the `exthost` command see it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Where it is in its life.
    pub state: ServiceState,
    /// The current process id, while one runs.
    pub pid: Option<u32>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Why it is failed, restarting or stopped, if it went down; serialized
    /// as its text.
    pub error: Option<DownReason>,
    /// Tools it declared that are not advertised, each with why (see
    /// [`ToolNames`](crate::registry::ToolNames)); left out of the JSON
    /// when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools_left_out: Vec<crate::registry::LeftOut>,
    /// How many of its tools its `tools` filter hides; left out of the
    /// JSON when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub tools_hidden: usize,
    /// Every restriction in force on it, described (`sha256 …`, `env:
    /// minimal`, `limit memory 512MiB`, `sandbox (Landlock ABI 7): …`,
    /// `tools allow […]`), as of its last start; left out of the JSON
    /// when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restrictions: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

//! Keeps one service alive per its restart policy.

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::slot::{ServiceState, Slot};
use super::Shared;
use crate::client::ConnectionError;
use crate::config::RestartPolicy;
use crate::connector::{Started, Target};
use crate::stack::ExtensionService;

/// How restarts are paced and when they stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartLimits {
    /// The delay before the first restart; each further restart within
    /// `window` doubles it (default 100 ms).
    pub backoff_base: Duration,
    /// The longest delay between restarts (default 30 s).
    pub backoff_cap: Duration,
    /// Restarts allowed within `window` before the service is declared
    /// failed: the crash-loop breaker (default 5).
    pub max_restarts: usize,
    /// The breaker's window (default 60 s).
    pub window: Duration,
}

impl Default for RestartLimits {
    fn default() -> Self {
        RestartLimits {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(30),
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

impl RestartLimits {
    /// The delay before a restart, given how many happened in the window.
    pub fn backoff(&self, recent: usize) -> Duration {
        let factor = 1u32.checked_shl(recent.min(31) as u32).unwrap_or(u32::MAX);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_cap)
    }
}

/// Why an incarnation ended.
enum Down {
    Exited(ExitStatus),
    ConnectionLost(ConnectionError),
    StartFailed(String),
}

impl Down {
    fn is_failure(&self) -> bool {
        match self {
            Down::Exited(status) => !status.success(),
            Down::ConnectionLost(_) | Down::StartFailed(_) => true,
        }
    }

    fn reason(&self) -> String {
        match self {
            Down::Exited(status) => format!("exited: {status}"),
            Down::ConnectionLost(e) => format!("connection lost: {e}"),
            Down::StartFailed(e) => format!("start failed: {e}"),
        }
    }
}

/// Waits for the current incarnation to end.
async fn incarnation_ends(started: &Started) -> Down {
    let lost = async {
        match &started.extension {
            Some(ext) => ext.service.get_ref().get_ref().broken().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        status = started.process.exited() => Down::Exited(status),
        e = lost => Down::ConnectionLost(e),
    }
}

/// Settles why an incarnation ended, and makes sure its process is gone.
async fn settle(started: &Started, cause: Down) -> Down {
    let Down::ConnectionLost(lost) = cause else {
        return cause;
    };
    // A crash closes the socket a moment before its exit is reaped: prefer
    // the exit status when it follows. A protocol violation is the cause
    // whatever the exit after we reset the connection.
    if !lost.is_protocol_violation() {
        let exit = started
            .process
            .exited_within(crate::process::EXIT_AFTER_CLOSE)
            .await;
        if let Some(status) = exit {
            return Down::Exited(status);
        }
    }
    // Alive with a broken connection: stop it before starting another.
    started
        .process
        .stop(None::<ExtensionService>, Duration::ZERO)
        .await;
    Down::ConnectionLost(lost)
}

pub(crate) async fn supervise(shared: Arc<Shared>, slot: Arc<Slot>, first: Option<String>) {
    let limits = shared.limits;
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut down = first.map(Down::StartFailed);
    loop {
        let cause = match down.take() {
            Some(cause) => cause,
            None => {
                let Some(started) = slot.started() else {
                    return;
                };
                let cause = tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    cause = incarnation_ends(&started) => cause,
                };
                // Calls fail at once from here on.
                slot.take();
                settle(&started, cause).await
            }
        };
        if shared.shutdown.is_cancelled() {
            return;
        }
        let restart = match slot.config.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => cause.is_failure(),
            RestartPolicy::Always => true,
        };
        let reason = cause.reason();
        tracing::warn!(service = %slot.name, %reason, restart, "service went down");
        if !restart {
            let state = if cause.is_failure() {
                ServiceState::Failed
            } else {
                ServiceState::Stopped
            };
            slot.set_status(|s| {
                s.state = state;
                s.pid = None;
                s.error = Some(reason);
            });
            return;
        }
        let now = Instant::now();
        while recent.front().is_some_and(|t| now - *t > limits.window) {
            recent.pop_front();
        }
        if recent.len() >= limits.max_restarts {
            slot.set_status(|s| {
                s.state = ServiceState::Failed;
                s.pid = None;
                s.error = Some(format!(
                    "crash loop: {} restarts within {:?}; last: {reason}",
                    recent.len(),
                    limits.window
                ));
            });
            return;
        }
        let delay = limits.backoff(recent.len());
        slot.set_status(|s| {
            s.state = ServiceState::Restarting;
            s.pid = None;
            s.error = Some(reason);
        });
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        recent.push_back(Instant::now());
        slot.set_status(|s| s.restarts += 1);
        let generation = slot.next_generation();
        let target = Target::new(slot.name.clone(), slot.config.clone());
        // A start is not cancelled half-way (that would orphan its process);
        // if shutdown began meanwhile, the new incarnation is stopped here,
        // and `shutdown_all` waits for this task.
        match shared.connector.start(target).await {
            Ok(started) if shared.shutdown.is_cancelled() => {
                let svc = started.extension.map(|e| e.service);
                started
                    .process
                    .stop(svc, slot.config.shutdown_grace())
                    .await;
                return;
            }
            Ok(started) => shared.install(&slot, generation, started),
            Err(e) => down = Some(Down::StartFailed(e.to_string())),
        }
    }
}

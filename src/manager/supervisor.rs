//! Keeps one service alive per its restart policy.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::slot::Slot;
use super::Services;
use crate::config::RestartPolicy;
use crate::connector::{Started, Target};
use crate::status::{DownReason, ServiceState};

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

/// Waits for the current incarnation to end.
async fn incarnation_ends(started: &Started) -> DownReason {
    let lost = async {
        match &started.extension {
            Some(ext) => ext.connection.broken().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        status = started.process.exited() => DownReason::Exited(status),
        e = lost => DownReason::ConnectionLost(e),
    }
}

/// Settles why an incarnation ended, and makes sure its process is gone.
async fn settle(started: &Started, cause: DownReason) -> DownReason {
    let DownReason::ConnectionLost(lost) = cause else {
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
            return DownReason::Exited(status);
        }
    }
    // Alive with a broken connection: stop it before starting another.
    started.process.stop(None, Duration::ZERO).await;
    DownReason::ConnectionLost(lost)
}

pub(crate) async fn supervise(shared: Arc<Services>, slot: Arc<Slot>, first: Option<DownReason>) {
    let limits = shared.limits;
    let mut recent: VecDeque<Instant> = VecDeque::new();
    let mut down = first;
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
                slot.take(None);
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
        let reason = cause;
        tracing::warn!(service = %slot.name, %reason, restart, "service went down");
        if !restart {
            let state = if reason.is_failure() {
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
                s.error = Some(DownReason::CrashLoop {
                    restarts: recent.len(),
                    window: limits.window,
                    last: Box::new(reason),
                });
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
                let conn = started.extension.as_ref().map(|e| &e.connection);
                started
                    .process
                    .stop(conn, slot.config.shutdown_grace())
                    .await;
                return;
            }
            Ok(started) => shared.install(&slot, generation, started),
            Err(e) => down = Some(DownReason::StartFailed(Arc::new(e))),
        }
    }
}

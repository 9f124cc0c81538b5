//! Keeps one service alive per its restart policy.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::slot::Slot;
use super::Services;
use crate::config::RestartPolicy;
use crate::connector::{Spawned, StartError, Started, Target};
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
            Some(ext) => ext.link.broken().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        status = exited(started) => DownReason::Exited(status),
        e = lost => DownReason::ConnectionLost(e),
    }
}

/// For an MCP server: re-lists its tools each time it says its list
/// changed, and swaps its routes, for as long as this incarnation's
/// session lasts. Lists are taken one at a time, so a slow list never
/// overwrites a newer one; a list from an older incarnation is ignored.
fn follow_tool_list(shared: &Arc<Services>, slot: &Arc<Slot>, generation: u64, started: &Started) {
    #[cfg(feature = "mcp")]
    if let Some(crate::connector::Link::Mcp(mcp)) = started.extension.as_ref().map(|e| &e.link) {
        let (shared, slot, mcp) = (shared.clone(), slot.clone(), mcp.clone());
        // A change announced since the session opened is listed at once.
        let mut changed = mcp.tools_changed();
        let limit = slot.config.handshake_timeout();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = mcp.broken() => return,
                    _ = shared.shutdown.cancelled() => return,
                }
                changed.mark_unchanged();
                let listed = tokio::select! {
                    listed = tokio::time::timeout(limit, mcp.list_tools()) => listed,
                    // Stopping or gone: the list no longer matters.
                    _ = mcp.broken() => return,
                    _ = shared.shutdown.cancelled() => return,
                };
                match listed {
                    Ok(Ok(tools)) => {
                        tracing::info!(service = %slot.name, tools = tools.len(), "the server's tool list changed");
                        if slot.update_tools(generation, tools, mcp.take_rejected()) {
                            shared.rebuild_table();
                        }
                    }
                    // The session ended while listing: nothing to keep.
                    Ok(Err(_)) if mcp.is_closed() || shared.shutdown.is_cancelled() => return,
                    Ok(Err(error)) => {
                        tracing::warn!(service = %slot.name, %error, "could not list the changed tools; keeping the old list")
                    }
                    Err(_) => {
                        tracing::warn!(service = %slot.name, after = ?limit, "listing the changed tools timed out; keeping the old list")
                    }
                }
            }
        });
    }
    #[cfg(not(feature = "mcp"))]
    let _ = (shared, slot, generation, started);
}

/// Resolves when the incarnation's process exits (never, without one).
async fn exited(started: &Started) -> std::process::ExitStatus {
    match &started.process {
        Some(p) => p.exited().await,
        None => std::future::pending().await,
    }
}

/// Settles why an incarnation ended: a connection that closed is
/// reported by the process's exit status when the exit follows at once (a
/// crash closes the socket a moment before its exit is reaped). A protocol
/// violation is the cause whatever the exit after we reset the connection.
async fn settle(started: &Started, cause: DownReason) -> DownReason {
    match cause {
        DownReason::ConnectionLost(lost) if !lost.is_protocol_violation() => {
            let exited = match &started.process {
                Some(p) => p.exited_within(crate::process::EXIT_AFTER_CLOSE).await,
                None => None,
            };
            match exited {
                Some(status) => DownReason::Exited(status),
                None => DownReason::ConnectionLost(lost),
            }
        }
        cause => cause,
    }
}

/// Makes sure nothing of an ended incarnation is left: its process, if it
/// lives on without its connection (SIGTERM, the grace period, SIGKILL),
/// and whatever it forked into its process group. The grace is the
/// configured one whatever the cause: a process whose connection ended may
/// still be finishing work, and is given the same time to stop as at
/// shutdown.
async fn reap(started: Started, grace: Duration) {
    started.stop_ended(grace).await;
}

/// What an operator asks of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Start it if it is not running.
    Start,
    /// Stop it gracefully; it stays stopped until started.
    Stop,
    /// Stop it if it runs, then start it at once; clears the breaker.
    Restart,
}

/// A command and who waits for it to be carried out.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) command: Command,
    pub(crate) done: oneshot::Sender<()>,
}

/// The crash-loop breaker: restarts within the window.
struct Breaker {
    limits: RestartLimits,
    recent: VecDeque<Instant>,
}

impl Breaker {
    /// Forgets restarts older than the window; whether another is allowed.
    fn allows(&mut self) -> bool {
        let now = Instant::now();
        while self
            .recent
            .front()
            .is_some_and(|t| now - *t > self.limits.window)
        {
            self.recent.pop_front();
        }
        self.recent.len() < self.limits.max_restarts
    }
}

/// Where the supervisor goes next.
enum Next {
    /// Watch the running incarnation.
    Watch,
    /// It went down: apply the policy and the breaker.
    Decide(DownReason),
    /// Wait, then start.
    Backoff(Duration),
    /// Start now.
    Start,
    /// Down until an operator starts it (or, with a `cooldown`, until the
    /// breaker's cooldown ends).
    Idle { cooldown: Option<Duration> },
}

/// Stops a running incarnation at an operator's request.
async fn stop_running(shared: &Services, slot: &Slot, started: Started) {
    slot.take(None);
    started.stop(slot.config.shutdown_grace()).await;
    shared.set_status(slot, |s| {
        s.state = ServiceState::Stopped;
        s.pid = None;
        s.error = None;
    });
}

/// Waits for a spawned incarnation to be ready, unless the manager shuts
/// down first: then it is stopped (whatever its progress) and `None`
/// returned. `shutdown_all` waits for this, so nothing is left running.
async fn ready_unless_shutdown(
    shared: &Services,
    slot: &Slot,
    spawned: Spawned,
) -> Result<Option<Started>, StartError> {
    let process = spawned.process().cloned();
    let grace = slot.config.shutdown_grace();
    tokio::select! {
        biased;
        _ = shared.shutdown.cancelled() => {
            if let Some(process) = process {
                process.stop(None, grace).await;
            }
            Ok(None)
        }
        started = spawned.ready() => {
            let started = started?;
            if shared.shutdown.is_cancelled() {
                started.stop(grace).await;
                return Ok(None);
            }
            Ok(Some(started))
        }
    }
}

/// Keeps `slot` alive per its restart policy and carries out operators'
/// commands, until the manager shuts down.
pub(crate) async fn supervise(
    shared: Arc<Services>,
    slot: Arc<Slot>,
    spawned: Result<Spawned, StartError>,
    mut control: mpsc::UnboundedReceiver<Control>,
    settled: oneshot::Sender<Result<(), Arc<StartError>>>,
) {
    // The first start: its outcome goes to `handshake_all`'s report, and
    // the routing table stops settling once every service's has come.
    let generation = slot.next_generation();
    let result = match spawned {
        Ok(spawned) => ready_unless_shutdown(&shared, &slot, spawned).await,
        Err(e) => Err(e),
    };
    let mut next = match result {
        Ok(None) => {
            let _ = settled.send(Ok(()));
            shared.settle_one();
            return;
        }
        Ok(Some(started)) => {
            shared.install(&slot, generation, started.clone());
            follow_tool_list(&shared, &slot, generation, &started);
            let _ = settled.send(Ok(()));
            Next::Watch
        }
        Err(e) => {
            tracing::warn!(service = %slot.name, error = %e, "service did not start");
            let e = Arc::new(e);
            let _ = settled.send(Err(e.clone()));
            Next::Decide(DownReason::StartFailed(e))
        }
    };
    shared.settle_one();

    let mut breaker = Breaker {
        limits: shared.limits,
        recent: VecDeque::new(),
    };
    // Operators waiting for a start to settle.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    // An incarnation that ended, stopped once its status is published.
    let mut ended: Option<Started> = None;
    loop {
        next = match next {
            Next::Watch => {
                let Some(started) = slot.started() else {
                    // Not running (a gateway that was never started).
                    next = Next::Idle { cooldown: None };
                    continue;
                };
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    cause = incarnation_ends(&started) => {
                        // Calls fail at once from here on; the status
                        // changes before the process is given its grace.
                        slot.take(None);
                        let reason = settle(&started, cause).await;
                        ended = Some(started);
                        Next::Decide(reason)
                    }
                    Some(ctl) = control.recv() => match ctl.command {
                        Command::Start => {
                            let _ = ctl.done.send(());
                            Next::Watch
                        }
                        Command::Stop => {
                            stop_running(&shared, &slot, started).await;
                            let _ = ctl.done.send(());
                            Next::Idle { cooldown: None }
                        }
                        Command::Restart => {
                            stop_running(&shared, &slot, started).await;
                            breaker.recent.clear();
                            waiting.push(ctl.done);
                            Next::Start
                        }
                    },
                }
            }
            Next::Decide(reason) => {
                let grace = slot.config.shutdown_grace();
                if shared.shutdown.is_cancelled() {
                    if let Some(started) = ended.take() {
                        reap(started, grace).await;
                    }
                    return;
                }
                let restart = match slot.config.restart {
                    RestartPolicy::Never => false,
                    RestartPolicy::OnFailure => reason.is_failure(),
                    RestartPolicy::Always => true,
                };
                tracing::warn!(service = %slot.name, %reason, restart, "service went down");
                let next = if !restart {
                    let state = if reason.is_failure() {
                        ServiceState::Failed
                    } else {
                        ServiceState::Stopped
                    };
                    shared.set_status(&slot, |s| {
                        s.state = state;
                        s.pid = None;
                        s.error = Some(reason);
                    });
                    Next::Idle { cooldown: None }
                } else if !breaker.allows() {
                    let cooldown = slot.config.breaker_cooldown;
                    shared.set_status(&slot, |s| {
                        s.state = ServiceState::Failed;
                        s.pid = None;
                        s.error = Some(DownReason::CrashLoop {
                            restarts: breaker.recent.len(),
                            window: breaker.limits.window,
                            last: Box::new(reason),
                        });
                    });
                    Next::Idle { cooldown }
                } else {
                    let delay = breaker.limits.backoff(breaker.recent.len());
                    shared.set_status(&slot, |s| {
                        s.state = ServiceState::Restarting;
                        s.pid = None;
                        s.error = Some(reason);
                    });
                    Next::Backoff(delay)
                };
                // What is left of the incarnation goes before another starts.
                if let Some(started) = ended.take() {
                    reap(started, grace).await;
                }
                next
            }
            Next::Backoff(delay) => tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => Next::Start,
                Some(ctl) = control.recv() => match ctl.command {
                    Command::Stop => {
                        shared.set_status(&slot, |s| {
                            s.state = ServiceState::Stopped;
                            s.pid = None;
                        });
                        let _ = ctl.done.send(());
                        Next::Idle { cooldown: None }
                    }
                    Command::Start | Command::Restart => {
                        breaker.recent.clear();
                        waiting.push(ctl.done);
                        Next::Start
                    }
                },
            },
            Next::Idle { cooldown } => {
                let cooled = async {
                    match cooldown {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = cooled => {
                        tracing::info!(service = %slot.name, "breaker cooldown over; trying again");
                        breaker.recent.clear();
                        Next::Start
                    }
                    ctl = control.recv() => match ctl {
                        // Every handle is gone: nothing can start it again.
                        None => Next::Idle { cooldown },
                        // Stopped by the operator: it stays down, and the
                        // breaker's cooldown no longer brings it back.
                        Some(ctl) if ctl.command == Command::Stop => {
                            shared.set_status(&slot, |s| {
                                s.state = ServiceState::Stopped;
                                s.pid = None;
                            });
                            let _ = ctl.done.send(());
                            Next::Idle { cooldown: None }
                        }
                        Some(ctl) => {
                            breaker.recent.clear();
                            waiting.push(ctl.done);
                            Next::Start
                        }
                    },
                }
            }
            Next::Start => {
                breaker.recent.push_back(Instant::now());
                shared.set_status(&slot, |s| {
                    s.state = ServiceState::Restarting;
                    s.restarts += 1;
                });
                let generation = slot.next_generation();
                let target = Target::new(slot.name.clone(), slot.config.clone());
                let result = match shared.connector.spawn(target) {
                    Ok(spawned) => ready_unless_shutdown(&shared, &slot, spawned).await,
                    Err(e) => Err(e),
                };
                // Operators who asked for this start hear that it settled.
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
                match result {
                    Ok(None) => return,
                    Ok(Some(started)) => {
                        shared.install(&slot, generation, started.clone());
                        follow_tool_list(&shared, &slot, generation, &started);
                        Next::Watch
                    }
                    Err(e) => Next::Decide(DownReason::StartFailed(Arc::new(e))),
                }
            }
        };
    }
}

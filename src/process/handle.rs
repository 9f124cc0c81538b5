//! A spawned process: its handle, graceful stop, and log tail.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::client::Connection;

/// How long to wait for a process's exit after its connection closed, so
/// that a crash is reported by its exit status.
pub(crate) const EXIT_AFTER_CLOSE: Duration = Duration::from_millis(100);

/// A running (or exited) extension process.
///
/// Clones share the process. Dropping the last clone does not stop it;
/// dropping the host's runtime kills its whole process group.
#[derive(Debug, Clone)]
pub struct ProcessHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    pid: u32,
    socket: Option<PathBuf>,
    log: PathBuf,
    status: watch::Receiver<Option<ExitStatus>>,
    /// Set once nothing of the process group lives.
    group_ended: AtomicBool,
    /// The inode of the socket file the extension bound, once connected.
    socket_inode: OnceLock<u64>,
    /// Turns true once the process's output has ended and is in the log.
    drained: watch::Receiver<bool>,
    /// The restrictions in force, described.
    restrictions: Vec<String>,
}

/// How a process ended when it was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopOutcome {
    /// It had already exited.
    AlreadyExited(ExitStatus),
    /// It exited after `shutdown`.
    Graceful(ExitStatus),
    /// It exited after SIGTERM.
    Terminated(ExitStatus),
    /// It had to be SIGKILLed.
    Killed(ExitStatus),
}

impl StopOutcome {
    /// The exit status, whichever way it ended.
    pub fn status(&self) -> ExitStatus {
        match *self {
            StopOutcome::AlreadyExited(s)
            | StopOutcome::Graceful(s)
            | StopOutcome::Terminated(s)
            | StopOutcome::Killed(s) => s,
        }
    }
}

impl ProcessHandle {
    /// The handle of a just-spawned process, whose exit `status` a reaper
    /// task reports.
    pub(super) fn new(
        name: &str,
        pid: u32,
        socket: Option<PathBuf>,
        log: &Path,
        status: watch::Receiver<Option<ExitStatus>>,
        drained: watch::Receiver<bool>,
        restrictions: Vec<String>,
    ) -> Self {
        ProcessHandle {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                pid,
                socket,
                log: log.to_owned(),
                status,
                group_ended: AtomicBool::new(false),
                socket_inode: OnceLock::new(),
                drained,
                restrictions,
            }),
        }
    }

    /// Every restriction in force on the process (pinned hash, clean
    /// environment, resource limits, sandbox), as its status lists them;
    /// empty when it is not confined.
    pub fn restrictions(&self) -> &[String] {
        &self.inner.restrictions
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The socket path (extensions only).
    pub fn socket(&self) -> Option<&Path> {
        self.inner.socket.as_deref()
    }

    /// Records that the socket file now at [`socket`](Self::socket) is the
    /// one this extension bound (the connector does, once connected), so
    /// that only that file is ever removed.
    pub fn socket_bound(&self) {
        if let Some(path) = &self.inner.socket {
            if let Some(ino) = crate::socket::inode(path) {
                let _ = self.inner.socket_inode.set(ino);
            }
        }
    }

    /// Removes the socket file this extension bound, if it is still there;
    /// a file another process has since bound at the path stays.
    pub fn remove_socket(&self) {
        if let Some(path) = &self.inner.socket {
            crate::socket::remove_if_same(path, self.inner.socket_inode.get().copied());
        }
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.inner.log
    }

    /// The exit status, if the process has exited (and been reaped).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.inner.status.borrow()
    }

    /// Waits for the process to exit.
    pub async fn exited(&self) -> ExitStatus {
        let mut rx = self.inner.status.clone();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map(|s| s.expect("waited for Some"));
        match status {
            Ok(s) => s,
            // The reaper is gone only if the runtime is shutting down.
            Err(_) => std::future::pending().await,
        }
    }

    /// Waits up to `within` for the process to exit.
    pub async fn exited_within(&self, within: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(within, self.exited()).await.ok()
    }

    /// Sends `signal` to the process's group (itself and what it forked),
    /// while any member lives. Once [`stop`](Self::stop) has seen the whole
    /// group gone, nothing is sent: its id may belong to another by then.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if self.inner.group_ended.load(Ordering::SeqCst) {
            return Ok(());
        }
        match killpg(self.pgid(), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether any process of the group lives (the leader, or what it
    /// forked and left in the group).
    pub fn group_alive(&self) -> bool {
        killpg(self.pgid(), None).is_ok()
    }

    fn pgid(&self) -> Pid {
        Pid::from_raw(self.inner.pid as i32)
    }

    /// Waits up to `within` for every member of the group to be gone.
    async fn group_gone_within(&self, within: Duration) -> bool {
        // A group has no exit notification for non-children: poll, briefly.
        let deadline = tokio::time::Instant::now() + within;
        let mut delay = Duration::from_millis(1);
        while {
            self.reap_orphans();
            self.group_alive()
        } {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(20));
        }
        true
    }

    /// Reaps members of the group that became our children: when the host
    /// is PID 1 (a container without an init) or a subreaper, orphaned
    /// helpers are reparented to it and would stay zombies, which still
    /// count as members of the group. The leader itself is reaped by its
    /// own task before this runs.
    fn reap_orphans(&self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let group = Pid::from_raw(-(self.inner.pid as i32));
        while let Ok(status) = waitpid(group, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }

    /// After the leader has exited: SIGTERM to what is left of its group,
    /// `grace`, then SIGKILL, until nothing of it lives.
    async fn end_group(&self, grace: Duration) {
        if self.group_alive() {
            tracing::debug!(service = %self.name(), pgid = self.pid(), "stopping what the extension left in its process group");
            let _ = self.signal(Signal::SIGTERM);
            if !self.group_gone_within(grace).await {
                self.kill_group();
                self.group_gone_within(Duration::from_secs(5)).await;
            }
        }
        if !self.group_alive() {
            self.inner.group_ended.store(true, Ordering::SeqCst);
            super::watchdog::unwatch(self.inner.pid);
        }
    }

    /// SIGKILLs the whole group, now. The watchdog forgets it at once: it
    /// is dead or dying, and its id must not be killed again later, when
    /// it may belong to another process.
    pub fn kill_group(&self) {
        let _ = self.signal(Signal::SIGKILL);
        super::watchdog::unwatch(self.inner.pid);
    }

    /// Waits up to `within` until the process's output has ended (it and
    /// everything that inherited its stdout and stderr closed them) and is
    /// written to the log; whether it has.
    pub async fn output_closed(&self, within: Duration) -> bool {
        let mut drained = self.inner.drained.clone();
        let done = async move { drained.wait_for(|done| *done).await.is_ok() };
        tokio::time::timeout(within, done).await.unwrap_or(false)
    }

    /// The last `lines` lines of this run's part of the log file (from its
    /// `--- exthost: starting` line on), as written so far (see
    /// [`output_closed`](Self::output_closed)).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.inner.log, lines)
    }

    /// Stops the process gracefully: sends `shutdown` over `connection` (if
    /// given; it takes no in-flight slot), waits `grace`; then SIGTERM to
    /// its group, waits `grace`; then SIGKILL. Then, whatever happened
    /// (even if it had already exited), what is left of its process group
    /// gets SIGTERM, `grace`, SIGKILL, until none of it lives. Always reaps
    /// the child and removes its socket.
    pub async fn stop(&self, connection: Option<&Connection>, grace: Duration) -> StopOutcome {
        match connection {
            Some(connection) => {
                let ask = async {
                    let _ = connection.shutdown().await;
                };
                self.stop_asking(Some(ask), grace).await
            }
            None => {
                self.stop_asking(None::<std::future::Ready<()>>, grace)
                    .await
            }
        }
    }

    /// [`stop`](Self::stop) with any way of asking the process to exit:
    /// `ask` runs (bounded by `grace`), then the process gets the rest of
    /// `grace` to exit before SIGTERM. For an MCP server over stdio, `ask`
    /// closes its stdin.
    pub async fn stop_asking<F>(&self, ask: Option<F>, grace: Duration) -> StopOutcome
    where
        F: std::future::Future<Output = ()>,
    {
        let outcome = self.stop_inner(ask, grace).await;
        self.end_group(grace).await;
        self.remove_socket();
        tracing::info!(service = %self.name(), pid = self.pid(), ?outcome, "extension stopped");
        outcome
    }

    async fn stop_inner<F>(&self, ask: Option<F>, grace: Duration) -> StopOutcome
    where
        F: std::future::Future<Output = ()>,
    {
        if let Some(status) = self.exit_status() {
            return StopOutcome::AlreadyExited(status);
        }
        let deadline = tokio::time::Instant::now() + grace;
        let asked = ask.is_some();
        if let Some(ask) = ask {
            let _ = tokio::time::timeout_at(deadline, ask).await;
            let exited = tokio::time::timeout_at(deadline, self.exited()).await;
            if let Ok(status) = exited {
                return StopOutcome::Graceful(status);
            }
        }
        if let Err(error) = self.signal(Signal::SIGTERM) {
            tracing::debug!(service = %self.name(), %error, "SIGTERM failed");
        }
        if let Some(status) = self.exited_within(grace).await {
            return StopOutcome::Terminated(status);
        }
        // Only a process that was given time can be said to have ignored
        // what it was sent.
        if grace.is_zero() {
            tracing::debug!(service = %self.name(), pid = self.pid(), "killing the extension");
        } else if asked {
            tracing::warn!(service = %self.name(), pid = self.pid(), ?grace, "extension ignored shutdown and SIGTERM; killing it");
        } else {
            tracing::warn!(service = %self.name(), pid = self.pid(), ?grace, "extension ignored SIGTERM; killing it");
        }
        let _ = self.signal(Signal::SIGKILL);
        StopOutcome::Killed(self.exited().await)
    }
}

/// The last `lines` lines of a file, best effort.
fn log_tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 8 * 1024;
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    // Only this run's lines: from its `--- exthost: starting` header on.
    let from = all
        .iter()
        .rposition(|l| l.starts_with(super::log::HEADER_PREFIX))
        .unwrap_or(0);
    let run = &all[from..];
    run[run.len().saturating_sub(lines)..].join("\n")
}

//! Extension processes: binary resolution, spawning, socket security,
//! graceful shutdown, and no orphans.
//!
//! [`spawn`] starts one service's process the way the reference did
//! (`serve --socket <services_dir>/<name>.sock`, or `serve --daemon …
//! --config …` for gateways; env from the config; `RUST_LOG` forwarded
//! unless set; stdout and stderr appended to `<logs_dir>/<name>.log`; stale
//! socket removed) and more safely:
//!
//! - each child leads its own process group, so signals reach whatever it
//!   forks;
//! - on Linux each child gets SIGKILL when the host dies, even by SIGKILL;
//! - socket paths over the OS limit are refused up front, naming the path;
//! - [`ProcessHandle::stop`] is graceful: `shutdown`, then SIGTERM, then
//!   SIGKILL, each after the grace period, and the child is always reaped.
//!
//! The [`connector`](crate::connector) builds on this to wait for the socket,
//! check the peer and run the handshake.
//!
//! # Example
//!
//! ```
//! use exthost::process::{check_socket_path, Paths, MAX_SOCKET_PATH};
//!
//! let paths = Paths::under("/var/lib/agent", "/run/agent.sock");
//! assert_eq!(paths.socket("search"), std::path::Path::new("/var/lib/agent/services/search.sock"));
//! assert_eq!(paths.log("search"), std::path::Path::new("/var/lib/agent/logs/search.log"));
//! assert!(check_socket_path(&paths.socket("search")).is_ok());
//!
//! let deep = Paths::under("/tmp/".to_owned() + &"d".repeat(MAX_SOCKET_PATH), "/run/a.sock");
//! let err = check_socket_path(&deep.socket("search")).unwrap_err();
//! assert!(err.to_string().contains("over the OS limit of 107"));
//! ```

mod peer;
mod sys;

pub(crate) use peer::check_peer;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::client::Connection;
use crate::config::{ServiceConfig, ServiceKind};
use crate::connector::StartError;
use crate::socket::remove_stale_socket;

/// How long to wait for a process's exit after its connection closed, so
/// that a crash is reported by its exit status.
pub(crate) const EXIT_AFTER_CLOSE: Duration = Duration::from_millis(100);

/// The longest Unix socket path Linux accepts (`sun_path` is 108 bytes,
/// one of them the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Where sockets, logs and the daemon's socket are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Sockets go here, `<name>.sock`; created private (0700).
    pub services_dir: PathBuf,
    /// Log files go here, `<name>.log`.
    pub logs_dir: PathBuf,
    /// Passed to gateways as `--daemon`.
    pub daemon_socket: PathBuf,
}

impl Paths {
    /// Sockets in `<config_dir>/services`, logs in `<config_dir>/logs`, as
    /// the reference laid them out.
    pub fn under(config_dir: impl AsRef<Path>, daemon_socket: impl Into<PathBuf>) -> Self {
        let dir = config_dir.as_ref();
        Paths {
            services_dir: dir.join("services"),
            logs_dir: dir.join("logs"),
            daemon_socket: daemon_socket.into(),
        }
    }

    /// A private per-user runtime folder: `$XDG_RUNTIME_DIR/exthost` if set,
    /// else `/tmp/exthost-<uid>`.
    pub fn runtime_default() -> Self {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| PathBuf::from(d).join("exthost"))
            .unwrap_or_else(|| PathBuf::from(format!("/tmp/exthost-{}", nix::unistd::geteuid())));
        Paths {
            services_dir: base.join("services"),
            logs_dir: base.join("logs"),
            daemon_socket: base.join("daemon.sock"),
        }
    }

    /// The socket path of service `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.services_dir.join(format!("{name}.sock"))
    }

    /// The log file of service `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs_dir.join(format!("{name}.log"))
    }
}

/// Creates `dir` (and its parents) private to this user: mode 0700. An
/// existing folder with looser permissions is tightened, with a log line;
/// one owned by another user is an error.
pub fn prepare_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by us",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o777), "tightening services folder to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Finds the binary of `config`: `command` if given, else
/// `$HOME/.cargo/bin/<crate>`, else `<crate>` on `PATH`.
pub fn resolve_binary(name: &str, config: &ServiceConfig) -> Result<PathBuf, StartError> {
    let mut looked = Vec::new();
    let mut candidates = Vec::new();
    if let Some(cmd) = &config.command {
        candidates.push(cmd.clone());
    } else {
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(PathBuf::from(home).join(".cargo/bin").join(&config.krate));
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join(&config.krate)));
        }
    }
    for path in candidates {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.mode() & 0o111 != 0 => return Ok(path),
            Ok(meta) if meta.is_file() && config.command.is_some() => {
                return Err(StartError::NotExecutable {
                    service: name.to_owned(),
                    path,
                })
            }
            _ => looked.push(path),
        }
    }
    Err(StartError::BinaryNotFound {
        service: name.to_owned(),
        looked,
    })
}

/// Checks that a socket path fits the OS limit.
pub fn check_socket_path(path: &Path) -> Result<(), StartError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(StartError::SocketPathTooLong {
            path: path.to_owned(),
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    Ok(())
}

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
    /// unless it has exited.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        killpg(Pid::from_raw(self.inner.pid as i32), signal).map_err(io::Error::from)
    }

    /// The last `lines` lines of the log file.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.inner.log, lines)
    }

    /// Stops the process gracefully: sends `shutdown` over `connection` (if
    /// given; it takes no in-flight slot), waits `grace`; then SIGTERM to
    /// its group, waits `grace`; then SIGKILL. Always reaps the child and
    /// removes its socket.
    pub async fn stop(&self, connection: Option<&Connection>, grace: Duration) -> StopOutcome {
        let outcome = self.stop_inner(connection, grace).await;
        if let Some(socket) = &self.inner.socket {
            let _ = std::fs::remove_file(socket);
        }
        tracing::info!(service = %self.name(), pid = self.pid(), ?outcome, "extension stopped");
        outcome
    }

    async fn stop_inner(&self, connection: Option<&Connection>, grace: Duration) -> StopOutcome {
        if let Some(status) = self.exit_status() {
            return StopOutcome::AlreadyExited(status);
        }
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(connection) = connection {
            let send = connection.shutdown();
            let _ = tokio::time::timeout_at(deadline, send).await;
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
        tracing::warn!(service = %self.name(), pid = self.pid(), "extension ignored shutdown and SIGTERM; killing it");
        let _ = self.signal(Signal::SIGKILL);
        StopOutcome::Killed(self.exited().await)
    }
}

/// The last `lines` lines of a file, best effort.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
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
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Spawns the process of service `name`. Must be called inside a tokio
/// runtime, from a thread that lives as long as the host (see
/// [`ProcessHandle`]).
pub fn spawn(
    name: &str,
    config: &ServiceConfig,
    paths: &Paths,
) -> Result<ProcessHandle, StartError> {
    config.validate(name).map_err(StartError::Config)?;
    let binary = resolve_binary(name, config)?;
    let io_err = |what| io_error(name, what);
    prepare_private_dir(&paths.logs_dir).map_err(io_err("create the logs folder"))?;

    let mut cmd = tokio::process::Command::new(&binary);
    cmd.arg("serve");
    let socket = match config.kind {
        ServiceKind::Extension => {
            let socket = paths.socket(name);
            check_socket_path(&socket)?;
            prepare_private_dir(&paths.services_dir)
                .map_err(io_err("create the services folder"))?;
            remove_stale_socket(&socket).map_err(io_err("remove the stale socket"))?;
            cmd.arg("--socket").arg(&socket);
            Some(socket)
        }
        ServiceKind::Gateway => {
            let json = serde_json::to_string(&config.config).unwrap_or_else(|_| "{}".into());
            cmd.arg("--daemon")
                .arg(&paths.daemon_socket)
                .arg("--config")
                .arg(json);
            None
        }
    };
    cmd.args(&config.args);
    cmd.envs(&config.env);
    if !config.env.contains_key("RUST_LOG") {
        if let Some(level) = std::env::var_os("RUST_LOG") {
            cmd.env("RUST_LOG", level);
        }
    }
    spawn_command(name, cmd, socket, &paths.log(name))
}

/// Spawns a prepared command as extension `name`, with the same treatment
/// as [`spawn`]: stdout and stderr appended to `log`, its own process group,
/// killed with the host, reaped by a background task. `socket` is where it
/// will listen, if anywhere; it is removed when the process is stopped.
///
/// For tools that need the exact command line, such as `exthost check`,
/// which appends `serve --socket PATH` to a user's program and arguments.
pub fn spawn_command(
    name: &str,
    mut cmd: tokio::process::Command,
    socket: Option<PathBuf>,
    log: &Path,
) -> Result<ProcessHandle, StartError> {
    let io_err = |what| io_error(name, what);
    let program = PathBuf::from(cmd.as_std().get_program());
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err("open the log file"))?;
    let _ = writeln!(
        log_file,
        "--- exthost: starting {name}: {}",
        program.display()
    );
    let stderr = log_file.try_clone().map_err(io_err("open the log file"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(true);
    sys::kill_with_parent(&mut cmd);

    let mut child = cmd.spawn().map_err(|source| StartError::Spawn {
        service: name.to_owned(),
        binary: program.clone(),
        source,
    })?;
    let pid = child.id().expect("a just-spawned child has a pid");
    tracing::info!(service = %name, pid, binary = %program.display(), log = %log.display(), "spawned extension");

    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        // Kills the whole group if the host drops this task (runtime shut
        // down) before the child exited.
        let guard = KillGroupOnDrop(Some(pid));
        let status = child.wait().await;
        std::mem::forget(guard);
        if let Ok(status) = status {
            let _ = tx.send(Some(status));
        }
    });
    Ok(ProcessHandle {
        inner: Arc::new(Inner {
            name: name.to_owned(),
            pid,
            socket,
            log: log.to_owned(),
            status: rx,
        }),
    })
}

/// Wraps an i/o error of `service` while it did `what`.
fn io_error(service: &str, what: &'static str) -> impl FnOnce(io::Error) -> StartError {
    let service = service.to_owned();
    move |source| StartError::Io {
        service,
        what,
        source,
    }
}

struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

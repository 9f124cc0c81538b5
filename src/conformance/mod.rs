//! Conformance checks: does an extension follow the protocol?
//!
//! A [`Checker`] runs thirteen [`Check`]s against an extension, in order,
//! and returns a [`Report`] with each one's [`Outcome`]. They are the
//! checks `exthost check` prints, available to extension authors in their
//! own `cargo test`. The handshake checks use the host's own steps
//! ([`handshake::hello`](crate::handshake::hello) and the others), so an
//! extension that passes them handshakes with exthost.
//!
//! Each check has a [`Level`]. **Required** checks (`socket`, `hello`,
//! `version`, `configure`, `register_tools`, `tools_match`, `schemas`,
//! `tool_names`, `shutdown`) are what the host needs; an extension that
//! fails one does not conform. **Recommended** checks (`get_schema`,
//! `query`, `unknown_tool`, `correlation_ids`) are what exthost makes use
//! of but extensions written to the reference protocol may not do: the
//! reference's own extension answers a call of an unknown tool with a
//! `tool_result` text, and extensions written before correlation ids
//! existed echo none. The host works with them, so failing one is a
//! warning, unless checking is strict ([`Report::is_conformant`]).
//!
//! [`Checker::check_program`] starts a program the way the host does (with
//! `serve --socket PATH` appended, in a private temporary folder) and
//! leaves nothing behind: the process is stopped and the folder removed,
//! even when the check fails or is dropped half-way.
//! [`Checker::check_stream`] runs the checks over a byte stream that is
//! already connected, such as an in-process extension.
//!
//! # Example
//!
//! An in-process extension built with [`exthost::server`](crate::server),
//! over an in-memory pipe:
//!
//! ```
//! use exthost::conformance::{Check, Checker, Outcome};
//! use exthost::server::{Call, Extension};
//! use exthost::Tool;
//! use tower::service_fn;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let (host_io, ext_io) = tokio::io::duplex(64 * 1024);
//! let ext = Extension::new("demo")
//!     .tool(Tool::new("echo", "Returns its arguments", serde_json::json!({"type": "object"})));
//! tokio::spawn(ext.serve_connection(ext_io, service_fn(|call: Call| async move {
//!     match call {
//!         Call::Tool(t) => Ok::<_, std::convert::Infallible>(t.args),
//!         _ => Ok(String::new()),
//!     }
//! })));
//!
//! let report = Checker::new().check_stream(host_io).await;
//! assert!(report.is_conformant(true), "{report}");
//! assert_eq!(report.outcome(Check::UnknownTool), &Outcome::Pass);
//! assert_eq!(report.passed_required(), report.required_total());
//! # }
//! ```
//!
//! An extension binary, from a test of its own crate (where the path is
//! `env!("CARGO_BIN_EXE_<name>")`):
//!
//! ```no_run
//! use std::time::Duration;
//! use exthost::conformance::Checker;
//!
//! # async fn run() -> Result<(), exthost::conformance::CheckError> {
//! let report = Checker::new()
//!     .config(serde_json::json!({"greeting": "hi"}))
//!     .timeout(Duration::from_secs(5))
//!     .check_program("target/debug/my-extension", ["--verbose"])
//!     .await?;
//! assert!(report.is_conformant(false), "{report}");
//! # Ok(())
//! # }
//! ```

mod check;
mod error;
mod report;
mod run;

pub use check::{Check, Level};
pub use error::CheckError;
pub use report::{Outcome, Report};

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::Connection;
use crate::connector::wait_for_socket;
use crate::handshake::DEFAULT_HANDSHAKE_TIMEOUT;
use crate::process::{self, ProcessHandle, MAX_SOCKET_PATH};
use report::Recorder;

/// How many lines of the program's output a [`Report`] keeps.
const OUTPUT_LINES: usize = 10;

/// The service name the program is started under, in log lines and errors.
const NAME: &str = "check";

/// Runs the conformance checks, with the settings they share.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use exthost::conformance::Checker;
///
/// let checker = Checker::new()
///     .config(serde_json::json!({"api_key": "test"}))
///     .timeout(Duration::from_secs(2))
///     .env("RUST_LOG", "debug");
/// ```
#[derive(Debug, Clone)]
pub struct Checker {
    config: serde_json::Value,
    timeout: Duration,
    env: Vec<(OsString, OsString)>,
}

impl Default for Checker {
    fn default() -> Self {
        Checker {
            config: serde_json::Value::Object(serde_json::Map::new()),
            timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            env: Vec::new(),
        }
    }
}

impl Checker {
    /// A checker that sends `{}` in `configure` and allows 10 s for each
    /// step.
    pub fn new() -> Self {
        Self::default()
    }

    /// The configuration to send in `configure`.
    pub fn config(mut self, config: serde_json::Value) -> Self {
        self.config = config;
        self
    }

    /// The time allowed for start-up, for each request, and for the
    /// extension to go away after `shutdown` (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets an environment variable for programs started by
    /// [`check_program`](Self::check_program); they inherit the rest.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Runs `program args… serve --socket PATH` and checks it.
    ///
    /// `PATH` is in a private (0700) folder of its own under the system's
    /// temporary folder. The program's stdout and stderr go to a log there,
    /// whose last lines are kept in [`Report::output`]. When the checks are
    /// done the program is stopped if it is still running (SIGTERM, then
    /// SIGKILL, to its process group) and the folder is removed; if the
    /// returned future is dropped before then, the program's group is
    /// killed and the folder removed all the same.
    ///
    /// A program that cannot be started fails the `socket` check. Must be
    /// called inside a tokio runtime.
    pub async fn check_program<I, A>(
        &self,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> Result<Report, CheckError>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<OsStr>,
    {
        let dir = PrivateDir::create()?;
        let socket = dir.path().join("ext.sock");
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(CheckError::SocketPathTooLong {
                path: socket,
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .envs(self.env.iter().map(|(k, v)| (k, v)));

        let mut rec = Recorder::default();
        let log = dir.path().join("ext.log");
        let proc = match process::spawn_command(NAME, cmd, Some(socket.clone()), &log) {
            Ok(proc) => proc,
            Err(e) => {
                rec.record(Check::Socket, Err(e.to_string()));
                rec.skip_rest("the program did not start");
                return Ok(rec.finish(String::new()));
            }
        };
        let guard = KillOnDrop(&proc);
        self.program_checks(&mut rec, &proc).await;
        // Also when it exited by itself: what it left in its group goes too.
        proc.stop(None, Duration::ZERO).await;
        drop(guard);
        proc.output_closed(Duration::from_millis(500)).await;
        Ok(rec.finish(proc.log_tail(OUTPUT_LINES)))
    }

    async fn program_checks(&self, rec: &mut Recorder, proc: &ProcessHandle) {
        let stream = match wait_for_socket(NAME, proc, self.timeout).await {
            Ok(stream) => stream,
            Err(e) => {
                rec.record(Check::Socket, Err(e.to_string()));
                return rec.skip_rest("no connection");
            }
        };
        rec.record(Check::Socket, Ok(()));
        let conn = Connection::new(stream);
        if !run::protocol(rec, &conn, &self.config, self.timeout).await {
            return;
        }
        run::send_shutdown(&conn, self.timeout).await;
        // Exiting is what the host needs; a socket file left behind is
        // removed by the host before the next start, so it is no failure.
        let shutdown = match proc.exited_within(self.timeout).await {
            None => Err(format!("still running {:?} after shutdown", self.timeout)),
            Some(_) => Ok(()),
        };
        rec.record(Check::Shutdown, shutdown);
    }

    /// Runs the checks over `io`, a connection to an extension that is
    /// already made.
    ///
    /// `socket` passes (the connection is there); `shutdown` passes when the
    /// extension closes the connection within the timeout after
    /// `shutdown`. Must be called inside a tokio runtime.
    pub async fn check_stream<T>(&self, io: T) -> Report
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let mut rec = Recorder::default();
        rec.record(Check::Socket, Ok(()));
        let conn = Connection::new(io);
        if run::protocol(&mut rec, &conn, &self.config, self.timeout).await {
            run::send_shutdown(&conn, self.timeout).await;
            let closed = run::closed_after_shutdown(&conn, self.timeout).await;
            rec.record(Check::Shutdown, closed);
        }
        rec.finish(String::new())
    }
}

/// A private folder of its own under the system's temporary folder,
/// removed with everything in it on drop.
#[derive(Debug)]
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> Result<Self, CheckError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let parent = std::env::temp_dir();
        let mut attempts = 0;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!("exthost-check-{}-{n}", std::process::id()));
            // Not recursive: an existing folder (anyone's) is never reused.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 100 => {
                    attempts += 1;
                }
                Err(source) => return Err(CheckError::TempDir { parent, source }),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the process's group if the check ends before stopping it (the
/// check's future was dropped); a no-op once it has exited.
#[derive(Debug)]
struct KillOnDrop<'a>(&'a ProcessHandle);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        self.0.kill_group();
    }
}

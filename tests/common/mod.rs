//! Helpers shared by the integration tests: the mock extension binary, a
//! private temp dir, processes that are killed and reaped on drop, waits on
//! real signals (a process's exit, a status change, a call reaching the
//! mock), fake extensions, and managers of mock extensions.

#![allow(dead_code, unreachable_pub)]

mod pidfd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use exthost::codec::ServerCodec;
use exthost::config::ServiceConfig;
use exthost::manager::{RestartLimits, ServiceManager, ServiceStatus};
use exthost::process::Paths;
use exthost::proto::ExtRequest;
use exthost::router::ToolCall;
use exthost::CallError;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tower::ServiceExt;

/// The upper bound on any wait: reached only when something hangs, so
/// that the test fails instead of blocking forever.
pub const WAIT: Duration = Duration::from_secs(20);

/// The path of an example binary, building it if `cargo test` has not.
pub fn example_bin(name: &str) -> PathBuf {
    static LOCK: OnceLock<std::sync::Mutex<()>> = OnceLock::new();
    let _guard = LOCK.get_or_init(Default::default).lock().unwrap();
    // target/<profile>/deps/<test-binary> → target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("examples").join(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        build.args(["build", "--example", name]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    bin
}

/// The mock extension binary (examples/mock_extension.rs).
pub fn mock_bin() -> PathBuf {
    example_bin("mock_extension")
}

/// A temp dir removed on drop, short enough for socket paths.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("exthost-test-")
        .tempdir_in("/tmp")
        .expect("create temp dir")
}

/// A child process that is killed and reaped when dropped, even if the test
/// fails.
pub struct Proc {
    pub child: Child,
    reaped: bool,
}

impl Proc {
    pub fn new(child: Child) -> Self {
        Proc {
            child,
            reaped: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, up to `within`; its exit code, or
    /// the signal that killed it as `-signal`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        use nix::sys::wait::{waitpid, WaitStatus};
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        let waited = tokio::time::timeout(
            within,
            tokio::task::spawn_blocking(move || waitpid(pid, None)),
        )
        .await
        .ok()?;
        self.reaped = true;
        match waited.expect("waitpid thread") {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(-(sig as i32)),
            other => panic!("unexpected wait status {other:?}"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the mock extension on `socket` with extra environment, and
/// returns once it listens (it says so on stdout).
pub async fn spawn_mock(socket: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(mock_bin());
    cmd.arg("serve")
        .arg("--socket")
        .arg(socket)
        .env("MOCK_READY_STDOUT", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::new(cmd.spawn().expect("spawn mock extension"));
    let stdout = proc.child.stdout.take().expect("piped stdout");
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout.into()).expect("a pipe");
    let mut line = String::new();
    tokio::time::timeout(WAIT, BufReader::new(stdout).read_line(&mut line))
        .await
        .expect("the mock extension never said it was listening")
        .expect("read the mock extension's stdout");
    assert_eq!(
        line, "listening\n",
        "the mock extension ended before listening"
    );
    proc
}

/// Connects to a socket that is listening.
pub async fn connect(socket: &Path) -> UnixStream {
    UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()))
}

/// The extension's end of an in-memory connection, driven by the test.
pub type FakeExt = Framed<tokio::io::DuplexStream, ServerCodec>;

/// A host-side stream and a fake extension the test answers by hand.
pub fn fake_pair() -> (tokio::io::DuplexStream, FakeExt) {
    let (host, ext) = tokio::io::duplex(64 * 1024);
    (host, Framed::new(ext, ServerCodec::new()))
}

/// The next request the fake extension receives.
pub async fn recv(ext: &mut FakeExt) -> ExtRequest {
    ext.next().await.expect("host closed").expect("bad frame")
}

/// Awaits a spawned task (bounded) and returns its output; a panic in the
/// task is raised again here, with its own message.
pub async fn join<T>(task: JoinHandle<T>) -> T {
    match tokio::time::timeout(WAIT, task).await {
        Err(_) => panic!("a spawned task did not finish"),
        Ok(Ok(output)) => output,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("a spawned task was cancelled: {e}"),
    }
}

/// Aborts a spawned task and awaits it; a panic it had before is raised
/// here.
pub async fn abort<T>(task: JoinHandle<T>) {
    task.abort();
    if let Err(e) = task.await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
    }
}

/// Waits (bounded) until `pid` has exited; true if it did. As for
/// [`alive`], a zombie has exited. Works for any process, not only our
/// children: it waits for its pidfd to become readable.
pub async fn gone_within(pid: u32, within: Duration) -> bool {
    let Some(process) = pidfd::PidFd::open(pid) else {
        return true;
    };
    tokio::time::timeout(within, process.exited()).await.is_ok()
}

/// The purpose-built misbehaving extension (examples/hostile_extension.rs).
pub fn hostile_bin() -> PathBuf {
    example_bin("hostile_extension")
}

/// A socket the test controls, given to the mock as `MOCK_NOTIFY_SOCKET`:
/// its `wait` tool holds each call here until the test releases it, and
/// in `hang` mode it reports each connection it accepts.
pub struct Gate {
    path: PathBuf,
    listener: UnixListener,
}

/// A call of the mock's `wait` tool, held in the extension until this is
/// released or dropped.
pub struct Held {
    args: String,
    _conn: BufReader<UnixStream>,
}

impl Gate {
    /// A gate at `dir/gate.sock`.
    pub fn bind(dir: &Path) -> Self {
        Self::bind_at(dir, "gate")
    }

    /// A gate at `dir/<name>.sock`, for a second one.
    pub fn bind_at(dir: &Path, name: &str) -> Self {
        let path = dir.join(format!("{name}.sock"));
        let listener = UnixListener::bind(&path).expect("bind the gate socket");
        Gate { path, listener }
    }

    /// Its path, for `MOCK_NOTIFY_SOCKET`.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp path")
    }

    async fn accept(&self, what: &str) -> UnixStream {
        tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .unwrap_or_else(|_| panic!("{what} never came"))
            .expect("accept at the gate")
            .0
    }

    /// Waits (bounded) for the next call of `wait` to reach the mock, and
    /// holds it there.
    pub async fn arrival(&self) -> Held {
        let mut conn = BufReader::new(self.accept("a `wait` call").await);
        let mut args = String::new();
        conn.read_line(&mut args).await.expect("read at the gate");
        let args = args
            .strip_suffix('\n')
            .expect("a `wait` call says its arguments")
            .to_owned();
        Held { args, _conn: conn }
    }

    /// Whether no connection is waiting to be accepted. Call it once
    /// whatever could connect is gone: a connection made before then is
    /// queued, and seen here.
    pub async fn nothing_arrived(&self) -> bool {
        tokio::time::timeout(Duration::ZERO, self.listener.accept())
            .await
            .is_err()
    }

    /// Waits (bounded) for a mock in `hang` mode to accept a connection;
    /// its pid.
    pub async fn hung(&self) -> u32 {
        let mut conn = self.accept("a connection to a hanging mock").await;
        let mut pid = String::new();
        conn.read_to_string(&mut pid)
            .await
            .expect("read at the gate");
        pid.parse().unwrap_or_else(|_| panic!("not a pid: {pid:?}"))
    }
}

impl Held {
    /// The arguments of the held call.
    pub fn args(&self) -> &str {
        &self.args
    }

    /// Lets the call answer.
    pub fn release(self) {}
}

/// The mock extension as a configured service, its tools prefixed.
pub fn mock(prefix: &str) -> ServiceConfig {
    ServiceConfig::command(mock_bin()).with_env("MOCK_PREFIX", prefix)
}

/// Services and logs under `dir`.
pub fn paths(dir: &Path) -> Paths {
    Paths::under(dir, dir.join("d.sock"))
}

/// The default restart limits, but with a 10 ms first backoff.
pub fn quick_restarts() -> RestartLimits {
    RestartLimits {
        backoff_base: Duration::from_millis(10),
        ..RestartLimits::default()
    }
}

/// A manager of `services` under `dir`, restarting quickly; a mock learns
/// its service name (`MOCK_SERVICE`).
pub fn manager(dir: &Path, services: Vec<(&str, ServiceConfig)>) -> ServiceManager {
    manager_with(dir, services, quick_restarts())
}

/// A manager of `services` under `dir` with the given restart limits.
pub fn manager_with(
    dir: &Path,
    services: Vec<(&str, ServiceConfig)>,
    limits: RestartLimits,
) -> ServiceManager {
    let configs: BTreeMap<_, _> = services
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c.with_env("MOCK_SERVICE", n)))
        .collect();
    ServiceManager::with_limits(&configs, paths(dir), limits)
}

/// Waits (bounded) for a status of `service` that satisfies `pred`.
pub async fn wait_until(
    m: &ServiceManager,
    service: &str,
    pred: impl FnMut(&ServiceStatus) -> bool,
) -> ServiceStatus {
    tokio::time::timeout(WAIT, m.wait_for(service, pred))
        .await
        .unwrap_or_else(|_| panic!("{service}: status never came; now {:?}", m.status(service)))
        .expect("a known service")
}

/// Calls `tool` through the manager's router (bounded).
pub async fn call(m: &ServiceManager, tool: &str, args: &str) -> Result<String, CallError> {
    tokio::time::timeout(WAIT, m.router().oneshot(ToolCall::new(tool, args)))
        .await
        .unwrap_or_else(|_| panic!("a call of {tool} hung"))
        .map(::exthost::ToolOutput::into_text)
}

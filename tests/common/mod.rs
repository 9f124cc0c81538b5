//! Helpers shared by the integration tests: the mock extension binary, a
//! private temp dir, and processes that are killed and reaped on drop.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use exthost::codec::ServerCodec;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

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

/// Starts the mock extension on `socket` with extra environment.
pub fn spawn_mock(socket: &Path, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(mock_bin());
    cmd.arg("serve")
        .arg("--socket")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::new(cmd.spawn().expect("spawn mock extension"))
}

/// Connects to `socket`, retrying while the extension starts (bounded).
pub async fn connect(socket: &Path) -> UnixStream {
    let mut delay = Duration::from_millis(1);
    for _ in 0..200 {
        match UnixStream::connect(socket).await {
            Ok(s) => return s,
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(50));
            }
        }
    }
    panic!("could not connect to {}", socket.display());
}

/// The extension's end of an in-memory connection, driven by the test.
pub type FakeExt = Framed<tokio::io::DuplexStream, ServerCodec>;

/// A host-side stream and a fake extension the test answers by hand.
pub fn fake_pair() -> (tokio::io::DuplexStream, FakeExt) {
    let (host, ext) = tokio::io::duplex(64 * 1024);
    (host, Framed::new(ext, ServerCodec::new()))
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

/// Waits (bounded) until `pid` is gone; true if it went.
pub async fn gone_within(pid: u32, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// The purpose-built misbehaving extension (examples/hostile_extension.rs).
pub fn hostile_bin() -> PathBuf {
    example_bin("hostile_extension")
}

//! The `exthost` binary and a running `exthost run` with its pipes, shared
//! by the tests of the command (`cli.rs`, `lifecycle.rs`). Not part of
//! `common/mod.rs`: only test targets that require the `cli` feature have
//! the binary.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::common::WAIT;

/// The `exthost` binary, killed if the test drops it, without the host's
/// `RUST_LOG`.
pub fn exthost() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_exthost"));
    cmd.kill_on_drop(true).env_remove("RUST_LOG");
    cmd
}

/// A running `exthost run` with its pipes.
pub struct Run {
    pub child: tokio::process::Child,
    pub stdin: Option<tokio::process::ChildStdin>,
    pub lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Its logs, when piped ([`Run::start_logged`]); the few lines a test
    /// leaves unread fit in the pipe. Otherwise they go to the test's
    /// stderr.
    logs: Option<tokio::io::Lines<BufReader<tokio::process::ChildStderr>>>,
}

impl Run {
    /// `exthost run --config CFG`, its logs on the test's stderr.
    pub fn start(cfg: &Path) -> Self {
        Self::spawn(cfg, &[], false)
    }

    /// The same with extra arguments.
    pub fn start_with(cfg: &Path, extra: &[&str]) -> Self {
        Self::spawn(cfg, extra, false)
    }

    /// The same with its logs piped, for [`Run::logged`].
    pub fn start_logged(cfg: &Path) -> Self {
        Self::spawn(cfg, &[], true)
    }

    fn spawn(cfg: &Path, extra: &[&str], logged: bool) -> Self {
        let mut cmd = exthost();
        cmd.args(["run", "--config"])
            .arg(cfg)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if logged {
            cmd.stderr(Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let logs = child.stderr.take().map(|e| BufReader::new(e).lines());
        Run {
            child,
            stdin,
            lines,
            logs,
        }
    }

    /// Reads its logs (bounded) up to the first line with every one of
    /// `words`.
    pub async fn logged(&mut self, words: &[&str]) -> String {
        let logs = self.logs.as_mut().expect("started with start_logged");
        let mut seen = String::new();
        loop {
            let line = tokio::time::timeout(WAIT, logs.next_line())
                .await
                .unwrap_or_else(|_| panic!("not logged: {words:?}; logs so far:\n{seen}"))
                .unwrap()
                .unwrap_or_else(|| panic!("logs ended before {words:?}:\n{seen}"));
            if words.iter().all(|w| line.contains(w)) {
                return line;
            }
            seen += &line;
            seen += "\n";
        }
    }

    /// Writes `line` and a newline.
    pub async fn send(&mut self, line: &str) {
        self.send_bytes(line.as_bytes()).await;
    }

    /// Writes `line` (any bytes) and a newline.
    pub async fn send_bytes(&mut self, line: &[u8]) {
        self.send_raw(line).await;
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"\n").await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// Writes `bytes` as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).await.unwrap();
    }

    /// The next answer (bounded wait), or `None` once stdout is closed.
    pub async fn next(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("no answer")
            .unwrap()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
    }

    /// The next answer (bounded wait).
    pub async fn recv(&mut self) -> Value {
        self.next().await.expect("stdout closed")
    }

    /// Writes `line`, then reads the next answer.
    pub async fn ask(&mut self, line: &str) -> Value {
        self.send(line).await;
        self.recv().await
    }

    /// Sends `signal` to exthost.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Its exit code (bounded wait).
    pub async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("exthost did not exit")
            .unwrap()
            .code()
    }

    /// Closes stdin and expects exthost to finish with exit 0.
    pub async fn finish(mut self) {
        drop(self.stdin.take());
        assert_eq!(self.exit_code().await, Some(0));
    }
}

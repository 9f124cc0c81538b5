//! A reader that goes away ends the session, cleanly: no panic, no request
//! taken after it, the extensions stopped gracefully (`shutdown`), one log
//! line, and exit code 7.

mod common;
#[path = "common/run.rs"]
mod run;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{mock_bin, temp_dir, Gate, WAIT};
use run::exthost;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The exit code of a session whose output was closed.
const CLOSED_OUTPUT: i32 = 7;

/// A config of one mock, `m`, that writes how it was stopped to
/// `dir/stopped` and holds its `wait` calls at `gate`; and, with `hung`,
/// a second mock that never finishes its handshake and reports its pid at
/// `hung` when the host connects.
fn config(dir: &Path, gate: &Gate, hung: Option<&Gate>) -> PathBuf {
    let mut text = format!(
        "services_dir = \"{0}/services\"\nlogs_dir = \"{0}/logs\"\n\
         [services.m]\ncommand = \"{1}\"\n\
         env = {{ MOCK_SHUTDOWN_FILE = \"{0}/stopped\", MOCK_NOTIFY_SOCKET = \"{2}\" }}\n",
        dir.display(),
        mock_bin().display(),
        gate.path(),
    );
    if let Some(hung) = hung {
        text += &format!(
            "[services.slow]\ncommand = \"{}\"\nhandshake_timeout = \"60s\"\n\
             env = {{ MOCK_MODE = \"hang\", MOCK_NOTIFY_SOCKET = \"{}\" }}\n",
            mock_bin().display(),
            hung.path()
        );
    }
    let path = dir.join("exthost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A pipe for exthost's stdout: the end it writes to, and ours (which no
/// child inherits, so that dropping it leaves no reader).
fn pipe() -> (OwnedFd, OwnedFd) {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (write, read)
}

/// Held while a child is spawned: between its fork and its exec a child
/// holds a copy of every descriptor of this process, our pipe ends
/// included (the tests of this file run in parallel).
static SPAWNING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Spawns `cmd` under [`SPAWNING`].
fn spawn(cmd: &mut tokio::process::Command) -> tokio::process::Child {
    let _spawning = SPAWNING.lock().unwrap_or_else(|e| e.into_inner());
    cmd.spawn().unwrap()
}

/// Drops our end of a pipe, and returns once no child being spawned
/// holds a copy of it: from then on the pipe has no reader.
fn leave<T>(read: T) {
    drop(read);
    drop(SPAWNING.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Reads exthost's stderr to its end.
async fn all_of(stderr: tokio::process::ChildStderr) -> String {
    let mut text = String::new();
    tokio::time::timeout(WAIT, BufReader::new(stderr).read_to_string(&mut text))
        .await
        .expect("stderr never ended")
        .unwrap();
    text
}

/// What every closed session shows: exit 7, no panic, one line about the
/// output, the extension stopped by `shutdown`.
async fn ended_cleanly(mut child: tokio::process::Child, dir: &Path) {
    let stderr = all_of(child.stderr.take().unwrap()).await;
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exthost did not exit")
        .unwrap();
    assert_eq!(status.code(), Some(CLOSED_OUTPUT), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let told: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("standard output"))
        .collect();
    assert_eq!(told.len(), 1, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("stopped")).unwrap(),
        "shutdown",
        "the extension was not stopped gracefully; {stderr}"
    );
}

#[tokio::test]
async fn tools_whose_reader_left_during_start_up_ends_cleanly_with_exit_7() {
    let dir = temp_dir();
    let (gate, hung) = (Gate::bind(dir.path()), Gate::bind_at(dir.path(), "hung"));
    let cfg = config(dir.path(), &gate, Some(&hung));
    let (write, read) = pipe();
    let child = spawn(
        exthost()
            .args(["tools", "--json", "--config"])
            .arg(&cfg)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped()),
    );
    // While `slow` hangs in its handshake, the reader goes; then `slow`
    // fails, start-up ends, and the table is written to nobody.
    let pid = hung.hung().await;
    leave(read);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    ended_cleanly(child, dir.path()).await;
}

#[tokio::test]
async fn call_whose_reader_left_during_the_call_ends_cleanly_with_exit_7() {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    let cfg = config(dir.path(), &gate, None);
    let (write, read) = pipe();
    let child = spawn(
        exthost()
            .args(["call", "--config"])
            .arg(&cfg)
            .args(["wait", "held"])
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped()),
    );
    let held = gate.arrival().await;
    leave(read);
    held.release();
    ended_cleanly(child, dir.path()).await;
}

#[tokio::test]
async fn call_whose_output_is_closed_from_the_start_is_never_made() {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    let cfg = config(dir.path(), &gate, None);
    let (write, read) = pipe();
    leave(read);
    // Not `output()`: tokio's would pipe stdout itself.
    let child = spawn(
        exthost()
            .args(["call", "--config"])
            .arg(&cfg)
            .args(["wait", "never"])
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped()),
    );
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("exthost did not finish")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(CLOSED_OUTPUT), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(gate.nothing_arrived().await, "the call was made for nobody");
}

#[tokio::test]
async fn run_whose_reader_left_takes_no_further_request_and_ends_cleanly_with_exit_7() {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    let cfg = config(dir.path(), &gate, None);
    let mut child = spawn(
        exthost()
            .args(["run", "--config"])
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut logs = BufReader::new(child.stderr.take().unwrap()).lines();
    stdin
        .write_all(b"{\"id\": 1, \"tool\": \"wait\", \"args\": \"first\"}\n")
        .await
        .unwrap();
    let held = gate.arrival().await;
    assert_eq!(held.args(), "first");
    // The reader goes while stdin stays open and nothing is being written.
    leave(stdout);
    let mut seen = String::new();
    loop {
        let line = tokio::time::timeout(WAIT, logs.next_line())
            .await
            .unwrap_or_else(|_| panic!("the closed output was never noticed:\n{seen}"))
            .unwrap()
            .unwrap_or_else(|| panic!("logs ended first:\n{seen}"));
        assert!(!line.contains("panicked"), "{line}");
        if line.contains("standard output") {
            break;
        }
        seen += &line;
        seen += "\n";
    }
    // A request after that is never executed (exthost may have stopped
    // reading already: a failed write here is fine).
    let _ = stdin
        .write_all(b"{\"id\": 2, \"tool\": \"wait\", \"args\": \"second\"}\n")
        .await;
    let _ = stdin.flush().await;
    // The call in flight is handled as at shutdown.
    held.release();
    let mut rest = String::new();
    while let Some(line) = tokio::time::timeout(WAIT, logs.next_line())
        .await
        .expect("stderr never ended")
        .unwrap()
    {
        rest += &line;
        rest += "\n";
    }
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exthost did not exit")
        .unwrap();
    assert_eq!(status.code(), Some(CLOSED_OUTPUT), "{seen}{rest}");
    assert!(!rest.contains("panicked"), "{rest}");
    assert!(!rest.contains("standard output"), "told twice: {rest}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stopped")).unwrap(),
        "shutdown",
        "{rest}"
    );
    assert!(
        gate.nothing_arrived().await,
        "a request was executed after the output closed"
    );
}

/// Adds a service that fails at start (its process exits at once), so that
/// the host logs a warning.
fn with_failing_service(cfg: &Path) {
    let mut text = std::fs::read_to_string(cfg).unwrap();
    text += &format!(
        "[services.broken]\ncommand = \"{}\"\nenv = {{ MOCK_MODE = \"exit\" }}\n",
        mock_bin().display()
    );
    std::fs::write(cfg, text).unwrap();
}

/// Stderr is not the session's output: with its reader gone, logs are
/// dropped, and `tools` still prints the table and exits 1 for the failed
/// service, with the extensions stopped gracefully.
#[tokio::test]
async fn tools_whose_stderr_reader_left_drops_logs_and_still_reports() {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    let cfg = config(dir.path(), &gate, None);
    with_failing_service(&cfg);
    let (write, read) = pipe();
    leave(read);
    let child = spawn(
        exthost()
            .args(["tools", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(write)),
    );
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("exthost did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("wait"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stopped")).unwrap(),
        "shutdown"
    );
}

/// `run` with its stderr's reader gone serves on stdout as ever, and
/// stops its extensions gracefully at the end of stdin.
#[tokio::test]
async fn run_whose_stderr_reader_left_keeps_serving() {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    let cfg = config(dir.path(), &gate, None);
    with_failing_service(&cfg);
    let (write, read) = pipe();
    leave(read);
    let mut child = spawn(
        exthost()
            .args(["run", "--config"])
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(write)),
    );
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for id in 1..=2 {
        stdin
            .write_all(
                format!("{{\"id\": {id}, \"tool\": \"echo\", \"args\": \"hi\"}}\n").as_bytes(),
            )
            .await
            .unwrap();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("no answer")
            .unwrap()
            .expect("stdout ended");
        assert_eq!(line, format!("{{\"id\":{id},\"ok\":\"hi\"}}"));
    }
    drop(stdin);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exthost did not exit")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("stopped")).unwrap(),
        "shutdown"
    );
}

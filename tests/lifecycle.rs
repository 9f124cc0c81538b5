//! `exthost` from start-up to shutdown: requests are served from the first
//! instant, signals are handled from the first instant, and every accepted
//! request gets exactly one answer.

mod common;
#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{alive, mock_bin, temp_dir, WAIT};
use run::{exthost, Run};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A fast `alpha` (a_ tools, `max_in_flight` 8) and a `beta` (b_ tools)
/// that cannot bind its socket until a line is written to `gate`, a FIFO.
fn fast_and_gated(dir: &Path) -> (PathBuf, PathBuf) {
    let gate = dir.join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    nix::unistd::mkfifo(&dir.join("started"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let script = dir.join("gated.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ > {dir}/started\nread line < {gate}\nexec {mock} \"$@\"\n",
            dir = dir.display(),
            gate = gate.display(),
            mock = mock_bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        r#"services_dir = "{d}/services"
logs_dir = "{d}/logs"
[services.alpha]
command = "{mock}"
max_in_flight = 8
env = {{ MOCK_PREFIX = "a_", MOCK_SERVICE = "alpha" }}
[services.beta]
command = "{script}"
handshake_timeout = "60s"
env = {{ MOCK_PREFIX = "b_", MOCK_SERVICE = "beta" }}
"#,
        d = dir.display(),
        mock = mock_bin().display(),
        script = script.display()
    );
    let cfg = dir.join("exthost.toml");
    std::fs::write(&cfg, text).unwrap();
    (cfg, gate)
}

/// Lets the gated service go on. The FIFO is opened read-write, so the
/// line waits in it until the service reads it; keep the sender until then.
async fn open_gate(gate: &Path) -> tokio::net::unix::pipe::Sender {
    let mut tx = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(gate)
        .unwrap();
    tx.write_all(b"go\n").await.unwrap();
    tx
}

/// Where gated scripts report their pids (a FIFO held open read-write, so
/// their writes never wait); open it before starting exthost.
struct Started(BufReader<tokio::net::unix::pipe::Receiver>);

impl Started {
    fn open(dir: &Path) -> Self {
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(dir.join("started"))
            .unwrap();
        Started(BufReader::new(rx))
    }

    /// The next gated script's pid, once it runs.
    async fn pid(&mut self) -> u32 {
        let mut line = String::new();
        tokio::time::timeout(WAIT, self.0.read_line(&mut line))
            .await
            .expect("the gated service never started")
            .unwrap();
        line.trim().parse().unwrap()
    }
}

#[tokio::test]
async fn run_answers_while_another_service_is_still_starting() {
    let dir = temp_dir();
    let (cfg, gate) = fast_and_gated(dir.path());
    let _started = Started::open(dir.path());
    let mut run = Run::start(&cfg);
    // beta cannot be ready until the gate opens; alpha answers meanwhile.
    let echo = run
        .ask(r#"{"id": 1, "tool": "a_echo", "args": "now"}"#)
        .await;
    assert_eq!(echo["ok"], "now", "{echo}");
    let status = run.ask(r#"{"id": 2, "op": "status"}"#).await;
    assert_eq!(status["ok"]["alpha"]["state"], "ready", "{status}");
    assert_eq!(status["ok"]["beta"]["state"], "starting", "{status}");
    // A call to a tool not known yet waits for the start to settle...
    run.send(r#"{"id": 3, "tool": "b_echo", "args": "later"}"#)
        .await;
    let _gate = open_gate(&gate).await;
    // ...and is answered once beta is ready.
    let later = run.recv().await;
    assert_eq!(later["id"], 3);
    assert_eq!(later["ok"], "later", "{later}");
    run.finish().await;
}

#[tokio::test]
async fn call_returns_as_soon_as_its_tools_owner_is_ready() {
    let dir = temp_dir();
    let (cfg, _gate) = fast_and_gated(dir.path());
    // alpha's call is held until beta has surely started (and is held at
    // its own gate, which is never opened: beta never becomes ready).
    let held = common::Gate::bind(dir.path());
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        r#"MOCK_SERVICE = "alpha" }"#,
        &format!(
            r#"MOCK_SERVICE = "alpha", MOCK_NOTIFY_SOCKET = "{}" }}"#,
            held.path()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut started = Started::open(dir.path());
    let call = exthost()
        .args(["call", "--config"])
        .arg(&cfg)
        .args(["a_wait", "hi"])
        .output();
    let call = tokio::spawn(tokio::time::timeout(WAIT, call));
    let gated = started.pid().await;
    held.arrival().await.release();
    let out = call
        .await
        .unwrap()
        .expect("call waited for the service that cannot start")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "released hi\n");
    assert!(!alive(gated), "the service still starting was stopped");
}

#[tokio::test]
async fn sigterm_during_start_up_stops_what_started_and_exits_0() {
    let dir = temp_dir();
    let (cfg, _gate) = fast_and_gated(dir.path());
    let mut started = Started::open(dir.path());
    let mut run = Run::start(&cfg);
    let gated = started.pid().await;
    let pid = run.ask(r#"{"id": 1, "tool": "a_pid"}"#).await;
    let alpha: u32 = pid["ok"].as_str().unwrap().parse().unwrap();
    // beta is still starting (held at the gate).
    run.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(run.exit_code().await, Some(0));
    assert!(!alive(alpha));
    assert!(!alive(gated));
}

#[tokio::test]
async fn every_call_in_flight_is_answered_once_when_run_is_terminated() {
    let dir = temp_dir();
    let (cfg, gate) = fast_and_gated(dir.path());
    let _started = Started::open(dir.path());
    let mut run = Run::start(&cfg);
    let _gate = open_gate(&gate).await;
    assert_eq!(
        run.ask(r#"{"id": 0, "tool": "b_echo", "args": "up"}"#)
            .await["ok"],
        "up"
    );
    for id in 1..=5 {
        run.send(&format!(
            r#"{{"id": {id}, "tool": "a_sleep", "args": {{"ms": 300}}}}"#
        ))
        .await;
    }
    // Lines are read in order: this answer means all five were accepted.
    let status = run.ask(r#"{"id": 6, "op": "status"}"#).await;
    assert_eq!(
        status["id"], 6,
        "a sleep cannot have finished yet: {status}"
    );
    run.signal(nix::sys::signal::Signal::SIGTERM);
    let mut ids = Vec::new();
    while let Some(answer) = run.next().await {
        let ok = answer["ok"] == "slept 300 ms";
        let unavailable = answer["error"]["kind"] == "unavailable";
        assert!(ok || unavailable, "{answer}");
        ids.push(answer["id"].as_u64().unwrap());
    }
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4, 5], "each call answered exactly once");
    assert_eq!(run.exit_code().await, Some(0));
}

#[tokio::test]
async fn two_hosts_on_one_configuration_both_answer_every_call() {
    let dir = temp_dir();
    let (cfg, gate) = fast_and_gated(dir.path());
    let _started = Started::open(dir.path());
    let _gate = open_gate(&gate).await;
    let (mut one, mut two) = (Run::start(&cfg), Run::start(&cfg));
    for id in 0..10 {
        let line = format!(r#"{{"id": {id}, "tool": "a_echo", "args": "{id}"}}"#);
        one.send(&line).await;
        two.send(&line).await;
    }
    for run in [&mut one, &mut two] {
        let mut ok = 0;
        for _ in 0..10 {
            let answer = run.recv().await;
            assert_eq!(answer["ok"], answer["id"].to_string(), "{answer}");
            ok += 1;
        }
        assert_eq!(ok, 10);
    }
    two.finish().await;
    // The second host's shutdown left the first one's sockets alone.
    let answer = one
        .ask(r#"{"id": 99, "tool": "a_echo", "args": "still"}"#)
        .await;
    assert_eq!(answer["ok"], "still");
    one.finish().await;
}

#[tokio::test]
async fn run_restarts_stops_and_starts_a_service_on_request() {
    let dir = temp_dir();
    let (cfg, gate) = fast_and_gated(dir.path());
    let _started = Started::open(dir.path());
    let _gate = open_gate(&gate).await;
    let mut run = Run::start(&cfg);
    let first: u32 = run.ask(r#"{"id": 1, "tool": "a_pid"}"#).await["ok"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let restarted = run
        .ask(r#"{"id": 2, "op": "restart", "service": "alpha"}"#)
        .await;
    assert_eq!(restarted["id"], 2);
    assert_eq!(restarted["ok"]["state"], "ready", "{restarted}");
    let second = restarted["ok"]["pid"].as_u64().unwrap() as u32;
    assert_ne!(second, first);
    assert!(!alive(first));
    let stopped = run
        .ask(r#"{"id": 3, "op": "stop", "service": "alpha"}"#)
        .await;
    assert_eq!(stopped["ok"]["state"], "stopped", "{stopped}");
    let down = run.ask(r#"{"id": 4, "tool": "a_echo", "args": "x"}"#).await;
    assert_eq!(down["error"]["kind"], "unavailable", "{down}");
    let started = run
        .ask(r#"{"id": 5, "op": "start", "service": "alpha"}"#)
        .await;
    assert_eq!(started["ok"]["state"], "ready", "{started}");
    assert_eq!(
        run.ask(r#"{"id": 6, "tool": "a_echo", "args": "y"}"#).await["ok"],
        "y"
    );
    let unknown = run
        .ask(r#"{"id": 7, "op": "restart", "service": "nope"}"#)
        .await;
    assert_eq!(unknown["error"]["kind"], "unknown_service", "{unknown}");
    let missing = run.ask(r#"{"id": 8, "op": "restart"}"#).await;
    assert_eq!(missing["error"]["kind"], "bad_request", "{missing}");
    run.finish().await;
}

/// One service, `alpha`, whose `a_wait` calls are held at `gate` until
/// released, stopped with a short grace period.
fn held(dir: &Path, gate: &common::Gate) -> PathBuf {
    let text = format!(
        r#"services_dir = "{d}/services"
logs_dir = "{d}/logs"
[services.alpha]
command = "{mock}"
shutdown_grace = "200ms"
max_in_flight = 4
env = {{ MOCK_PREFIX = "a_", MOCK_NOTIFY_SOCKET = "{gate}" }}
"#,
        d = dir.display(),
        mock = mock_bin().display(),
        gate = gate.path()
    );
    let cfg = dir.join("held.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

#[tokio::test]
async fn a_signal_after_end_of_input_still_shuts_down_at_once() {
    let dir = temp_dir();
    let gate = common::Gate::bind(dir.path());
    let mut run = Run::start(&held(dir.path(), &gate));
    run.send(r#"{"id": 1, "tool": "a_wait"}"#).await;
    let _held = gate.arrival().await;
    // End of input: run waits for the call in flight, which never ends...
    drop(run.stdin.take());
    // ...until a signal begins the shutdown.
    run.signal(nix::sys::signal::Signal::SIGTERM);
    let answer = run.recv().await;
    assert_eq!(answer["id"], 1);
    assert_eq!(answer["error"]["kind"], "unavailable", "{answer}");
    assert_eq!(run.exit_code().await, Some(0));
}

#[tokio::test]
async fn a_signal_during_call_answers_the_call_and_stops_everything() {
    let dir = temp_dir();
    let gate = common::Gate::bind(dir.path());
    let child = exthost()
        .args(["call", "--config"])
        .arg(held(dir.path(), &gate))
        .arg("a_wait")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _held = gate.arrival().await;
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("exthost call did not stop")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("unavailable error"), "{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[tokio::test]
async fn a_line_that_is_not_utf8_gets_bad_request_and_the_session_goes_on() {
    let dir = temp_dir();
    let gate = common::Gate::bind(dir.path());
    let mut run = Run::start(&held(dir.path(), &gate));
    run.send_bytes(b"{\"id\": 7, \"tool\": \"a_echo\", \"args\": \"caf\xE9\"}")
        .await;
    let bad = run.recv().await;
    assert_eq!(bad["id"], 7, "{bad}");
    assert_eq!(bad["error"]["kind"], "bad_request", "{bad}");
    let next = run
        .ask(r#"{"id": 8, "tool": "a_echo", "args": "still here"}"#)
        .await;
    assert_eq!(next["ok"], "still here", "{next}");
    run.finish().await;
}

#[tokio::test]
async fn call_errors_say_whether_a_retry_is_safe() {
    let dir = temp_dir();
    let gate = common::Gate::bind(dir.path());
    let mut run = Run::start(&held(dir.path(), &gate));
    let unknown = run.ask(r#"{"id": 1, "tool": "nope"}"#).await;
    assert_eq!(unknown["error"]["kind"], "unknown_tool", "{unknown}");
    assert_eq!(unknown["error"]["retry_safe"], true, "{unknown}");
    let crashed = run.ask(r#"{"id": 2, "tool": "a_crash"}"#).await;
    assert_eq!(crashed["error"]["kind"], "unavailable", "{crashed}");
    assert_eq!(
        crashed["error"]["retry_safe"], false,
        "it reached the extension: {crashed}"
    );
    let down = run.ask(r#"{"id": 3, "tool": "a_echo"}"#).await;
    assert_eq!(down["error"]["kind"], "unavailable", "{down}");
    assert_eq!(
        down["error"]["retry_safe"], true,
        "refused during the outage: {down}"
    );
    run.finish().await;
}

#[tokio::test]
async fn run_stops_reading_while_max_pending_requests_await_their_answers() {
    let dir = temp_dir();
    let gate = common::Gate::bind(dir.path());
    let mut run = Run::start_with(&held(dir.path(), &gate), &["--max-pending", "2"]);
    run.send(r#"{"id": 1, "tool": "a_wait"}"#).await;
    run.send(r#"{"id": 2, "tool": "a_wait"}"#).await;
    run.send(r#"{"id": 3, "op": "status"}"#).await;
    let first = gate.arrival().await;
    let _second = gate.arrival().await;
    // Two requests are pending: the third line is not even read.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), run.lines.next_line())
            .await
            .is_err(),
        "a third request was answered while two were pending"
    );
    first.release();
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(run.recv().await["id"].as_u64().unwrap());
    }
    ids.sort();
    assert!(ids == [1, 3] || ids == [2, 3], "{ids:?}");
    drop(run.stdin.take());
    run.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(run.exit_code().await, Some(0));
}

#[tokio::test]
async fn a_tool_whose_service_failed_to_start_is_a_start_failure_not_unknown() {
    let dir = temp_dir();
    let cfg = dir.path().join("broken.toml");
    std::fs::write(
        &cfg,
        format!(
            "services_dir = \"{d}/services\"\nlogs_dir = \"{d}/logs\"\n[services.broken]\ncommand = \"{d}/no-such-binary\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let out = tokio::time::timeout(
        WAIT,
        exthost()
            .args(["call", "--config"])
            .arg(&cfg)
            .arg("b_echo")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("start failure"), "{stderr}");
    assert!(
        stderr.contains("failed: broken: service `broken`: binary not found"),
        "{stderr}"
    );
    assert!(!stderr.contains("unknown_tool"), "{stderr}");
}

#[tokio::test]
async fn tools_with_names_llm_apis_refuse_are_left_out_and_reported() {
    let dir = temp_dir();
    let text = |policy: &str| {
        format!(
            "services_dir = \"{d}/services\"\nlogs_dir = \"{d}/logs\"\n{policy}\n\
             [services.dotted]\ncommand = \"{mock}\"\nenv = {{ MOCK_PREFIX = \"a.b_\" }}\n\
             [services.fine]\ncommand = \"{mock}\"\nenv = {{ MOCK_PREFIX = \"f_\" }}\n",
            d = dir.path().display(),
            mock = mock_bin().display()
        )
    };
    let cfg = dir.path().join("names.toml");
    std::fs::write(&cfg, text("")).unwrap();
    let out = tokio::time::timeout(
        WAIT,
        exthost()
            .args(["tools", "--json", "--config"])
            .arg(&cfg)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tools: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("f_")), "{names:?}");
    assert!(
        stderr.contains(
            r#"left out: tool "a.b_echo" of `dotted` is left out: the name does not fit"#
        ),
        "{stderr}"
    );
    // In run's status, per service.
    let mut run = Run::start(&cfg);
    assert_eq!(
        run.ask(r#"{"id": 1, "tool": "f_echo", "args": "x"}"#).await["ok"],
        "x"
    );
    let status = run.ask(r#"{"id": 2, "op": "status"}"#).await;
    let left_out = status["ok"]["dotted"]["tools_left_out"].as_array().unwrap();
    assert!(
        left_out
            .iter()
            .any(|l| l["tool"] == "a.b_echo" && l["reason"] == "not_portable"),
        "{status}"
    );
    assert!(
        status["ok"]["fine"].get("tools_left_out").is_none(),
        "{status}"
    );
    run.finish().await;
    // `tool_names = "any"` keeps them.
    std::fs::write(&cfg, text("tool_names = \"any\"")).unwrap();
    let out = exthost()
        .args(["tools", "--json", "--config"])
        .arg(&cfg)
        .output()
        .await
        .unwrap();
    let tools: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        tools
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "a.b_echo"),
        "{tools}"
    );
}

#[tokio::test]
async fn a_failed_read_of_stdin_is_not_a_success() {
    let dir = temp_dir();
    let gate = common::Gate::bind(dir.path());
    // Reading a folder fails (EISDIR): input that cannot be read.
    let folder = std::fs::File::open(dir.path()).unwrap();
    let out = tokio::time::timeout(
        WAIT,
        exthost()
            .args(["run", "--config"])
            .arg(held(dir.path(), &gate))
            .stdin(Stdio::from(folder))
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("reading stdin failed"), "{stderr}");
}

#[tokio::test]
async fn a_line_over_the_limit_is_skipped_and_answered_bad_request() {
    let dir = temp_dir();
    let gate = common::Gate::bind(dir.path());
    let mut run = Run::start(&held(dir.path(), &gate));
    // 33 MiB without a newline, in pieces, then its end.
    let prefix = br#"{"id": 1, "tool": "a_echo", "args": ""#;
    run.send_raw(prefix).await;
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..33 {
        run.send_raw(&chunk).await;
    }
    run.send(r#""}"#).await;
    let bad = run.recv().await;
    assert_eq!(bad["error"]["kind"], "bad_request", "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("33554432-byte limit"),
        "{bad}"
    );
    let next = run
        .ask(r#"{"id": 2, "tool": "a_echo", "args": "next"}"#)
        .await;
    assert_eq!(next["ok"], "next");
    run.finish().await;
}

#[tokio::test]
async fn run_stops_reading_while_max_pending_bytes_await_their_answers() {
    let dir = temp_dir();
    let gate = common::Gate::bind(dir.path());
    let mut run = Run::start_with(&held(dir.path(), &gate), &["--max-pending-bytes", "500"]);
    let pad = "p".repeat(400);
    run.send(&format!(
        r#"{{"id": 1, "tool": "a_wait", "args": "{pad}"}}"#
    ))
    .await;
    run.send(&format!(
        r#"{{"id": 2, "tool": "a_wait", "args": "{pad}"}}"#
    ))
    .await;
    let first = gate.arrival().await;
    // The first line holds 400-odd of the 500 bytes: the second is not
    // taken on until it is answered.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), gate.arrival())
            .await
            .is_err(),
        "a second request was taken on over the byte budget"
    );
    first.release();
    assert_eq!(run.recv().await["id"], 1);
    let second = gate.arrival().await;
    second.release();
    assert_eq!(run.recv().await["id"], 2);
    run.finish().await;
}

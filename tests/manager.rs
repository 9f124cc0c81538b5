//! The service manager: routing, collisions, supervision, restarts.

mod common;

use std::time::Duration;

use common::{
    alive, call, gone_within, join, manager, manager_with, mock, mock_bin, temp_dir, wait_until,
    Gate, WAIT,
};
use exthost::config::{RestartPolicy, ServiceConfig};
use exthost::manager::{DownReason, RestartLimits, ServiceState};
use exthost::router::ToolCall;
use exthost::{CallError, StartError};
use tower::ServiceExt;

#[tokio::test]
async fn calls_are_routed_to_the_extension_that_owns_the_tool() {
    let dir = temp_dir();
    let m = manager(
        dir.path(),
        vec![("alpha", mock("a_")), ("beta", mock("b_"))],
    );
    let report = m.start().await;
    assert_eq!(report.ready, ["alpha", "beta"]);
    let a = call(&m, "a_pid", "{}").await.unwrap();
    let b = call(&m, "b_pid", "{}").await.unwrap();
    assert_eq!(Some(a.parse().unwrap()), m.status("alpha").unwrap().pid);
    assert_eq!(Some(b.parse().unwrap()), m.status("beta").unwrap().pid);
    assert_eq!(call(&m, "b_echo", "hello").await.unwrap(), "hello");
    let q = m.query("beta", "hi").await.unwrap();
    assert!(q.contains("\"service\":\"beta\""), "{q}");
    assert!(m.schema("alpha").await.unwrap().contains("greeting"));
    assert!(matches!(
        m.query("nope", "hi").await,
        Err(CallError::UnknownService { exists: false, .. })
    ));
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_slow_extension_does_not_delay_calls_to_another() {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    let alpha = mock("a_").with_env("MOCK_NOTIFY_SOCKET", gate.path());
    let m = manager(dir.path(), vec![("alpha", alpha), ("beta", mock("b_"))]);
    m.start().await;
    // A call held in alpha until the test releases it, and one queued
    // behind it (alpha takes one call at a time).
    let slow = m.router().oneshot(ToolCall::new("a_wait", "held"));
    let queued = m
        .router()
        .oneshot(ToolCall::new("a_echo", "behind the held call"));
    tokio::pin!(slow, queued);
    let held = tokio::select! {
        r = &mut slow => panic!("the held call finished: {r:?}"),
        held = gate.arrival() => held,
    };
    // A router that readied every extension before routing would wait for
    // alpha here, until `call` gives up (WAIT).
    tokio::select! {
        biased;
        r = &mut slow => panic!("the held call finished first: {r:?}"),
        r = &mut queued => panic!("a call queued behind the held call finished first: {r:?}"),
        r = call(&m, "b_echo", "other") => assert_eq!(r.unwrap(), "other"),
    }
    held.release();
    assert_eq!(slow.await.unwrap(), "released held");
    assert_eq!(queued.await.unwrap(), "behind the held call");
    m.shutdown_all().await;
}

#[tokio::test]
async fn the_first_extension_in_name_order_keeps_a_contested_tool() {
    let dir = temp_dir();
    let m = manager(
        dir.path(),
        vec![("beta", mock("x_")), ("alpha", mock("x_"))],
    );
    m.start().await;
    let tools = m.tools();
    assert_eq!(tools.len(), 5);
    assert!(tools.iter().all(|t| t.service == "alpha"), "{tools:?}");
    let conflicts = m.conflicts();
    assert_eq!(conflicts.len(), 5);
    assert!(conflicts
        .iter()
        .all(|c| c.kept == "alpha" && c.dropped == "beta"));
    let pid = call(&m, "x_pid", "{}").await.unwrap();
    assert_eq!(Some(pid.parse().unwrap()), m.status("alpha").unwrap().pid);
    m.shutdown_all().await;
}

#[tokio::test]
async fn crash_makes_calls_unavailable_until_the_restart_then_a_new_pid_answers() {
    let dir = temp_dir();
    let cfg = mock("b_").with_restart(RestartPolicy::OnFailure);
    let m = manager(dir.path(), vec![("beta", cfg)]);
    m.start().await;
    let old: u32 = call(&m, "b_pid", "{}").await.unwrap().parse().unwrap();
    let err = call(&m, "b_crash", "{}").await.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Unavailable {
                delivered: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retry_safe());
    let status = wait_until(&m, "beta", |s| {
        s.state == ServiceState::Ready && s.pid != Some(old)
    })
    .await;
    assert_eq!(status.restarts, 1);
    let new: u32 = call(&m, "b_pid", "{}").await.unwrap().parse().unwrap();
    assert_ne!(new, old);
    assert!(!alive(old));
    m.shutdown_all().await;
    assert!(!alive(new));
}

#[tokio::test]
async fn calls_during_an_outage_fail_at_once_as_unavailable() {
    let dir = temp_dir();
    // Restarts are held off for a minute: the outage is long.
    let limits = RestartLimits {
        backoff_base: Duration::from_secs(60),
        ..RestartLimits::default()
    };
    let m = manager_with(
        dir.path(),
        vec![("beta", mock("b_").with_restart(RestartPolicy::Always))],
        limits,
    );
    m.start().await;
    let _ = call(&m, "b_crash", "{}").await;
    wait_until(&m, "beta", |s| s.state == ServiceState::Restarting).await;
    let err = tokio::time::timeout(WAIT, call(&m, "b_echo", "x"))
        .await
        .expect("a call during an outage must not hang")
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Unavailable {
                delivered: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retry_safe());
    m.shutdown_all().await;
}

#[tokio::test]
async fn crash_loop_trips_the_breaker_and_the_service_stays_failed() {
    let dir = temp_dir();
    let cfg = mock("c_")
        .with_env("MOCK_MODE", "exit")
        .with_restart(RestartPolicy::Always);
    let limits = RestartLimits {
        backoff_base: Duration::from_millis(1),
        backoff_cap: Duration::from_millis(5),
        max_restarts: 3,
        window: Duration::from_secs(60),
    };
    let m = manager_with(dir.path(), vec![("crashy", cfg)], limits);
    let report = m.start().await;
    assert_eq!(report.failed.len(), 1);
    let status = wait_until(&m, "crashy", |s| s.state == ServiceState::Failed).await;
    assert_eq!(status.restarts, 3);
    let error = status.error.unwrap();
    let DownReason::CrashLoop { restarts, last, .. } = &error else {
        panic!("not a crash loop: {error:?}");
    };
    assert_eq!(*restarts, 3);
    assert!(
        matches!(&**last, DownReason::StartFailed(e) if matches!(**e, StartError::ExitedEarly { .. })),
        "{error:?}"
    );
    m.shutdown_all().await;
}

#[tokio::test]
async fn never_policy_leaves_a_crashed_service_failed() {
    let dir = temp_dir();
    let m = manager(dir.path(), vec![("beta", mock("b_"))]);
    m.start().await;
    let _ = call(&m, "b_crash", "{}").await;
    let status = wait_until(&m, "beta", |s| s.state == ServiceState::Failed).await;
    assert_eq!(status.restarts, 0);
    assert!(
        matches!(status.error, Some(DownReason::Exited(s)) if !s.success()),
        "{status:?}"
    );
    assert!(matches!(
        call(&m, "b_echo", "{}").await,
        Err(CallError::Unavailable { .. })
    ));
    m.shutdown_all().await;
}

#[tokio::test]
async fn restart_with_a_different_tool_list_updates_the_registry() {
    let dir = temp_dir();
    let prefix_file = dir.path().join("prefix");
    std::fs::write(&prefix_file, "v1_").unwrap();
    let cfg = ServiceConfig::command(mock_bin())
        .with_env("MOCK_PREFIX_FILE", prefix_file.to_str().unwrap())
        .with_restart(RestartPolicy::OnFailure);
    let m = manager(dir.path(), vec![("morph", cfg)]);
    m.start().await;
    assert!(m.tools().iter().any(|t| t.tool.name == "v1_echo"));
    std::fs::write(&prefix_file, "v2_").unwrap();
    let _ = call(&m, "v1_crash", "{}").await;
    wait_until(&m, "morph", |s| {
        s.state == ServiceState::Ready && s.restarts == 1
    })
    .await;
    let names: Vec<_> = m.tools().into_iter().map(|t| t.tool.name).collect();
    assert!(names.contains(&"v2_echo".to_owned()), "{names:?}");
    assert!(!names.contains(&"v1_echo".to_owned()), "{names:?}");
    assert_eq!(call(&m, "v2_echo", "new").await.unwrap(), "new");
    assert!(matches!(
        call(&m, "v1_echo", "old").await,
        Err(CallError::UnknownTool { .. })
    ));
    m.shutdown_all().await;
}

#[tokio::test]
async fn eight_extensions_start_and_all_stop() {
    let dir = temp_dir();
    let services: Vec<_> = (0..8)
        .map(|i| {
            (
                ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"][i],
                mock(&format!("p{i}_")),
            )
        })
        .collect();
    let m = manager(dir.path(), services);
    let report = m.start().await;
    assert_eq!(report.ready.len(), 8, "{:?}", report.failed);
    assert_eq!(m.tools().len(), 40);
    let pids: Vec<u32> = m.statuses().values().filter_map(|s| s.pid).collect();
    assert_eq!(pids.len(), 8);
    let outcomes = m.shutdown_all().await;
    assert_eq!(outcomes.len(), 8);
    assert!(pids.iter().all(|p| !alive(*p)));
    assert!(m
        .statuses()
        .values()
        .all(|s| s.state == ServiceState::Stopped));
}

#[tokio::test]
async fn dispatch_tool_keeps_the_reference_string_forms() {
    let dir = temp_dir();
    // alpha only holds calls, so its timeout can be short: its `wait`
    // answers only once the gate goes.
    let gate = Gate::bind(dir.path());
    let alpha = mock("a_")
        .with_env("MOCK_NOTIFY_SOCKET", gate.path())
        .with_call_timeout(Duration::from_millis(100));
    let m = manager(dir.path(), vec![("alpha", alpha), ("beta", mock("b_"))]);
    m.start().await;
    assert_eq!(m.dispatch_tool("nope", "{}", "agent", None).await, None);
    assert_eq!(
        m.dispatch_tool("b_echo", "hi", "agent", Some(7))
            .await
            .as_deref(),
        Some("hi")
    );
    assert_eq!(
        m.dispatch_tool("b_fail", "{}", "agent", None)
            .await
            .as_deref(),
        Some("service error: b_fail failed as requested")
    );
    assert_eq!(
        m.dispatch_tool("a_wait", "{}", "agent", None)
            .await
            .as_deref(),
        Some("service timeout: alpha")
    );
    // Whether or not the held call reached alpha, it answers now.
    drop(gate);
    let _ = call(&m, "b_crash", "{}").await;
    wait_until(&m, "beta", |s| s.state == ServiceState::Failed).await;
    let text = m
        .dispatch_tool("b_echo", "{}", "agent", None)
        .await
        .unwrap();
    assert!(text.starts_with("service unavailable: beta ("), "{text}");
    m.shutdown_all().await;
}

#[tokio::test]
async fn starting_twice_starts_nothing_more() {
    let dir = temp_dir();
    let m = manager(dir.path(), vec![("alpha", mock("a_"))]);
    assert_eq!(m.start().await.ready, ["alpha"]);
    let pid = m.status("alpha").unwrap().pid;
    let again = m.start().await;
    assert!(again.ready.is_empty() && again.failed.is_empty());
    assert_eq!(m.status("alpha").unwrap().pid, pid);
    m.shutdown_all().await;
}

#[tokio::test]
async fn dropping_the_manager_kills_its_extensions() {
    let dir = temp_dir();
    let m = manager(dir.path(), vec![("alpha", mock("a_"))]);
    m.start().await;
    let router = m.router();
    let pid = m.status("alpha").unwrap().pid.unwrap();
    let socket = dir.path().join("services/alpha.sock");
    assert!(socket.exists());
    drop(m);
    assert!(
        gone_within(pid, WAIT).await,
        "extension {pid} outlived its manager"
    );
    assert!(!socket.exists());
    assert!(matches!(
        router.oneshot(ToolCall::new("a_echo", "{}")).await,
        Err(CallError::Unavailable { .. })
    ));
}

#[tokio::test]
async fn gateways_are_supervised_but_not_handshaken() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir();
    // A gateway that runs until the test writes a line to `release`, then
    // fails; its runs are counted. The test holds the fifo open at both
    // ends, so that neither side's open blocks and lines wait for readers.
    let runs = dir.path().join("runs");
    let fifo = dir.path().join("release");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let mut release = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(&fifo)
        .unwrap();
    let script = dir.path().join("gateway.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> {}\nread line < {}\nexit 1\n",
            runs.display(),
            fifo.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut gateway = ServiceConfig::command(&script).with_restart(RestartPolicy::OnFailure);
    gateway.kind = exthost::config::ServiceKind::Gateway;
    let m = manager(dir.path(), vec![("gw", gateway), ("alpha", mock("a_"))]);
    let report = m.start().await;
    assert_eq!(report.ready, ["alpha", "gw"]);
    assert!(m.tools().iter().all(|t| t.service == "alpha"));
    release.write_all(b"exit\n").await.unwrap();
    let down = wait_until(&m, "gw", |s| s.state == ServiceState::Restarting).await;
    assert!(
        matches!(down.error, Some(DownReason::Exited(s)) if s.code() == Some(1)),
        "{down:?}"
    );
    release.write_all(b"exit\n").await.unwrap();
    wait_until(&m, "gw", |s| s.restarts >= 2).await;
    assert!(std::fs::read_to_string(&runs).unwrap().lines().count() >= 2);
    m.shutdown_all().await;
}

#[tokio::test]
async fn handshakes_run_concurrently() {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    // Two extensions that accept the host and then never answer, with a
    // long handshake timeout: one after the other, the second would not be
    // connected before the first's handshake timed out, a minute later
    // (past WAIT, so `hung` fails first).
    let hang = || {
        mock("h_")
            .with_env("MOCK_MODE", "hang")
            .with_env("MOCK_NOTIFY_SOCKET", gate.path())
            .with_handshake_timeout(Duration::from_secs(60))
    };
    let m = manager(dir.path(), vec![("h1", hang()), ("h2", hang())]);
    let start = tokio::spawn({
        let m = m.clone();
        async move { m.start().await }
    });
    // Both handshakes must be under way at once.
    let pids = [gate.hung().await, gate.hung().await];
    // End both handshakes: start() then reports both as failed.
    for pid in pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let report = join(start).await;
    assert_eq!(report.failed.len(), 2, "{:?}", report.failed);
    m.shutdown_all().await;
}

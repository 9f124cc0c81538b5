//! The service manager: routing, collisions, supervision, restarts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{alive, gone_within, mock_bin, temp_dir};
use exthost::config::{RestartPolicy, ServiceConfig};
use exthost::manager::{DownReason, RestartLimits, ServiceManager, ServiceState};
use exthost::process::Paths;
use exthost::router::ToolCall;
use exthost::{CallError, StartError};
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(10);

fn mock(prefix: &str) -> ServiceConfig {
    ServiceConfig::command(mock_bin()).with_env("MOCK_PREFIX", prefix)
}

fn manager(dir: &std::path::Path, services: Vec<(&str, ServiceConfig)>) -> ServiceManager {
    let configs: BTreeMap<_, _> = services
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c.with_env("MOCK_SERVICE", n)))
        .collect();
    let limits = RestartLimits {
        backoff_base: Duration::from_millis(10),
        ..RestartLimits::default()
    };
    ServiceManager::with_limits(&configs, Paths::under(dir, dir.join("d.sock")), limits)
}

/// Waits (bounded) for a status of `service` that satisfies `pred`.
async fn wait_until(
    m: &ServiceManager,
    service: &str,
    pred: impl FnMut(&exthost::manager::ServiceStatus) -> bool,
) -> exthost::manager::ServiceStatus {
    tokio::time::timeout(WAIT, m.wait_for(service, pred))
        .await
        .unwrap_or_else(|_| panic!("{service}: status never came; now {:?}", m.status(service)))
        .unwrap()
}

async fn call(m: &ServiceManager, tool: &str, args: &str) -> Result<String, CallError> {
    m.router().oneshot(ToolCall::new(tool, args)).await
}

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
    let m = manager(
        dir.path(),
        vec![("alpha", mock("a_")), ("beta", mock("b_"))],
    );
    m.start().await;
    let slow = call(&m, "a_sleep", r#"{"ms": 1000}"#);
    let queued = call(&m, "a_echo", "behind the sleep");
    let other = call(&m, "b_echo", "other");
    tokio::pin!(slow, queued);
    tokio::select! {
        biased;
        r = &mut slow => panic!("the 1 s call finished first: {r:?}"),
        r = &mut queued => panic!("a call queued behind the 1 s call finished first: {r:?}"),
        r = other => assert_eq!(r.unwrap(), "other"),
    }
    assert_eq!(slow.await.unwrap(), "slept 1000 ms");
    assert_eq!(queued.await.unwrap(), "behind the sleep");
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
    let configs: BTreeMap<_, _> = [(
        "beta".to_owned(),
        mock("b_").with_restart(RestartPolicy::Always),
    )]
    .into();
    let limits = RestartLimits {
        backoff_base: Duration::from_secs(60),
        ..RestartLimits::default()
    };
    let m = ServiceManager::with_limits(
        &configs,
        Paths::under(dir.path(), dir.path().join("d.sock")),
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
    let configs: BTreeMap<_, _> = [("crashy".to_owned(), cfg)].into();
    let limits = RestartLimits {
        backoff_base: Duration::from_millis(1),
        backoff_cap: Duration::from_millis(5),
        max_restarts: 3,
        window: Duration::from_secs(60),
    };
    let m = ServiceManager::with_limits(
        &configs,
        Paths::under(dir.path(), dir.path().join("d.sock")),
        limits,
    );
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
    let cfg = mock("a_").with_call_timeout(Duration::from_secs(1));
    let m = manager(dir.path(), vec![("alpha", cfg), ("beta", mock("b_"))]);
    m.start().await;
    assert_eq!(m.dispatch_tool("nope", "{}", "agent", None).await, None);
    assert_eq!(
        m.dispatch_tool("a_echo", "hi", "agent", Some(7))
            .await
            .as_deref(),
        Some("hi")
    );
    assert_eq!(
        m.dispatch_tool("a_fail", "{}", "agent", None)
            .await
            .as_deref(),
        Some("service error: a_fail failed as requested")
    );
    assert_eq!(
        m.dispatch_tool("a_sleep", r#"{"ms": 3000}"#, "agent", None)
            .await
            .as_deref(),
        Some("service timeout: alpha")
    );
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
    let dir = temp_dir();
    // A gateway that runs a while, then fails; its runs are counted.
    let runs = dir.path().join("runs");
    let script = dir.path().join("gateway.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> {}\nsleep 0.2\nexit 1\n",
            runs.display()
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
    let down = wait_until(&m, "gw", |s| s.state == ServiceState::Restarting).await;
    assert!(
        matches!(down.error, Some(DownReason::Exited(s)) if s.code() == Some(1)),
        "{down:?}"
    );
    wait_until(&m, "gw", |s| s.restarts >= 2).await;
    assert!(std::fs::read_to_string(&runs).unwrap().lines().count() >= 2);
    m.shutdown_all().await;
}

#[tokio::test]
async fn handshakes_run_concurrently() {
    let dir = temp_dir();
    let notify = dir.path().join("notify.sock");
    let listener = tokio::net::UnixListener::bind(&notify).unwrap();
    // Two extensions that accept the host and then never answer, with a
    // long handshake timeout: one after the other, the second would not be
    // connected before the first's handshake timed out, a minute later.
    let hang = || {
        mock("h_")
            .with_env("MOCK_MODE", "hang")
            .with_env("MOCK_NOTIFY_SOCKET", notify.to_str().unwrap())
            .with_handshake_timeout(Duration::from_secs(60))
    };
    let m = manager(dir.path(), vec![("h1", hang()), ("h2", hang())]);
    let start = tokio::spawn({
        let m = m.clone();
        async move { m.start().await }
    });
    let mut pids = Vec::new();
    for _ in 0..2 {
        let (mut s, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("both handshakes must be under way at once")
            .unwrap();
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut s, &mut text)
            .await
            .unwrap();
        pids.push(text.parse::<i32>().unwrap());
    }
    // End both handshakes: start() then reports both as failed.
    for pid in pids {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let report = tokio::time::timeout(WAIT, start).await.unwrap().unwrap();
    assert_eq!(report.failed.len(), 2, "{:?}", report.failed);
    m.shutdown_all().await;
}

//! Operators control services: restart (the way back from `failed`), stop,
//! start, and the breaker's cooldown.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{alive, mock_bin, temp_dir};
use exthost::config::{RestartPolicy, ServiceConfig};
use exthost::manager::{ControlError, DownReason, RestartLimits, ServiceManager, ServiceState};
use exthost::process::Paths;
use exthost::router::{ToolCall, Unavailable};
use exthost::CallError;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(10);

/// A service that exits before it is ready until `flag` exists, then runs
/// the mock extension.
fn flaky(dir: &Path, flag: &Path) -> ServiceConfig {
    let script = dir.join("flaky.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e {flag} ] && exec {mock} \"$@\"\nexit 1\n",
            flag = flag.display(),
            mock = mock_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    ServiceConfig::command(&script)
        .with_env("MOCK_PREFIX", "f_")
        .with_restart(RestartPolicy::Always)
}

fn manager(dir: &Path, name: &str, cfg: ServiceConfig) -> ServiceManager {
    let configs: BTreeMap<_, _> = [(name.to_owned(), cfg)].into();
    ServiceManager::builder(&configs)
        .paths(Paths::under(dir, dir.join("d.sock")))
        .limits(RestartLimits {
            backoff_base: Duration::from_millis(1),
            backoff_cap: Duration::from_millis(5),
            max_restarts: 2,
            window: Duration::from_secs(60),
        })
        .build()
}

async fn wait_state(
    m: &ServiceManager,
    name: &str,
    state: ServiceState,
) -> exthost::manager::ServiceStatus {
    tokio::time::timeout(WAIT, m.wait_for(name, |s| s.state == state))
        .await
        .unwrap_or_else(|_| panic!("never {state}; now {:?}", m.status(name)))
        .unwrap()
}

async fn pid_of(m: &ServiceManager) -> u32 {
    let pid = m
        .router()
        .oneshot(ToolCall::new("f_pid", "{}"))
        .await
        .unwrap();
    pid.text().parse().unwrap()
}

#[tokio::test]
async fn restart_brings_a_service_back_from_a_tripped_breaker() {
    let dir = temp_dir();
    let flag: PathBuf = dir.path().join("fixed");
    let m = manager(dir.path(), "flaky", flaky(dir.path(), &flag));
    m.start().await;
    let failed = wait_state(&m, "flaky", ServiceState::Failed).await;
    assert!(
        matches!(failed.error, Some(DownReason::CrashLoop { .. })),
        "{failed:?}"
    );
    // Failed stays failed on its own...
    assert!(matches!(
        m.router().oneshot(ToolCall::new("f_pid", "{}")).await,
        Err(CallError::UnknownTool { .. })
    ));
    // ...until the operator fixes the cause and restarts it.
    std::fs::write(&flag, "").unwrap();
    let status = m.restart("flaky").await.unwrap();
    assert_eq!(status.state, ServiceState::Ready, "{status:?}");
    assert_eq!(pid_of(&m).await, status.pid.unwrap());
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_restart_that_fails_again_reports_why_and_can_be_retried() {
    let dir = temp_dir();
    let flag = dir.path().join("fixed");
    let m = manager(dir.path(), "flaky", flaky(dir.path(), &flag));
    m.start().await;
    wait_state(&m, "flaky", ServiceState::Failed).await;
    // Not fixed yet: the restart settles as down, with the start failure.
    let status = m.restart("flaky").await.unwrap();
    assert_ne!(status.state, ServiceState::Ready, "{status:?}");
    wait_state(&m, "flaky", ServiceState::Failed).await;
    std::fs::write(&flag, "").unwrap();
    assert_eq!(m.restart("flaky").await.unwrap().state, ServiceState::Ready);
    m.shutdown_all().await;
}

#[tokio::test]
async fn the_breaker_cooldown_tries_a_failed_service_again() {
    let dir = temp_dir();
    let flag = dir.path().join("fixed");
    let cfg = flaky(dir.path(), &flag).with_breaker_cooldown(Duration::from_millis(50));
    let m = manager(dir.path(), "flaky", cfg);
    // Watch every status change from the start: failed must come before ready.
    let mut rx = m.subscribe("flaky").unwrap();
    m.start().await;
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.state == ServiceState::Failed))
        .await
        .unwrap()
        .unwrap();
    std::fs::write(&flag, "").unwrap();
    // No operator: the cooldown alone brings it back.
    let ready = tokio::time::timeout(WAIT, rx.wait_for(|s| s.state == ServiceState::Ready))
        .await
        .expect("ready again after the cooldown")
        .unwrap()
        .clone();
    assert_eq!(pid_of(&m).await, ready.pid.unwrap());
    m.shutdown_all().await;
}

#[tokio::test]
async fn stop_keeps_a_service_down_whatever_its_policy_and_start_brings_it_back() {
    let dir = temp_dir();
    let cfg = ServiceConfig::command(mock_bin())
        .with_env("MOCK_PREFIX", "f_")
        .with_restart(RestartPolicy::Always);
    let m = manager(dir.path(), "svc", cfg);
    m.start().await;
    let old = pid_of(&m).await;
    let stopped = m.stop_service("svc").await.unwrap();
    assert_eq!(stopped.state, ServiceState::Stopped);
    assert_eq!(stopped.pid, None);
    assert!(!alive(old), "the process is gone");
    let err = m
        .router()
        .oneshot(ToolCall::new("f_pid", "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Unavailable {
                cause: Unavailable::NotReady {
                    state: ServiceState::Stopped,
                    ..
                },
                delivered: false,
                ..
            }
        ),
        "{err:?}"
    );
    let started = m.start_service("svc").await.unwrap();
    assert_eq!(started.state, ServiceState::Ready);
    let new = pid_of(&m).await;
    assert_ne!(new, old);
    // Starting a running service leaves it alone.
    assert_eq!(m.start_service("svc").await.unwrap().pid, Some(new));
    m.shutdown_all().await;
}

#[tokio::test]
async fn commands_name_what_is_wrong() {
    let dir = temp_dir();
    let m = manager(
        dir.path(),
        "svc",
        ServiceConfig::command(mock_bin()).with_env("MOCK_PREFIX", "f_"),
    );
    assert_eq!(
        m.restart("svc").await.unwrap_err(),
        ControlError::NotStarted
    );
    m.start().await;
    assert_eq!(
        m.restart("nope").await.unwrap_err(),
        ControlError::UnknownService("nope".into())
    );
    m.shutdown_all().await;
    assert_eq!(
        m.start_service("svc").await.unwrap_err(),
        ControlError::ShuttingDown
    );
}

#[tokio::test]
async fn shutdown_all_answers_every_call_in_flight_exactly_once() {
    let dir = temp_dir();
    let gate = common::Gate::bind(dir.path());
    let cfg = ServiceConfig::command(mock_bin())
        .with_env("MOCK_PREFIX", "f_")
        .with_env("MOCK_NOTIFY_SOCKET", gate.path())
        .with_max_in_flight(4)
        .with_shutdown_grace(Duration::from_millis(200));
    let m = manager(dir.path(), "svc", cfg);
    m.start().await;
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let call = ToolCall::new("f_wait", format!("{i}"));
            tokio::spawn(m.router().oneshot(call))
        })
        .collect();
    // All four are in the extension, held: none can answer by itself.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(gate.arrival().await);
    }
    m.shutdown_all().await;
    drop(held);
    for call in calls {
        let result = tokio::time::timeout(WAIT, call)
            .await
            .expect("a call in flight was never answered")
            .unwrap();
        assert!(
            matches!(
                result,
                Err(CallError::Unavailable {
                    cause: Unavailable::ShuttingDown,
                    delivered: true,
                    ..
                })
            ),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn stop_on_a_failed_service_keeps_it_stopped_past_the_cooldown() {
    let dir = temp_dir();
    let flag = dir.path().join("fixed");
    let cfg = flaky(dir.path(), &flag).with_breaker_cooldown(Duration::from_secs(3600));
    let m = manager(dir.path(), "flaky", cfg);
    m.start().await;
    wait_state(&m, "flaky", ServiceState::Failed).await;
    let stopped = m.stop_service("flaky").await.unwrap();
    assert_eq!(stopped.state, ServiceState::Stopped, "{stopped:?}");
    std::fs::write(&flag, "").unwrap();
    assert_eq!(
        m.start_service("flaky").await.unwrap().state,
        ServiceState::Ready
    );
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_call_held_for_a_service_still_starting_is_unavailable_at_shutdown() {
    let dir = temp_dir();
    let gate = dir.path().join("gate");
    nix::unistd::mkfifo(&gate, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let script = dir.path().join("slow.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nread line < {}\nexec {} \"$@\"\n",
            gate.display(),
            mock_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = ServiceConfig::command(&script).with_env("MOCK_PREFIX", "s_");
    let m = manager(dir.path(), "slow", cfg);
    m.spawn_all();
    // Not known yet, but a service is still starting: the call waits.
    let call = tokio::spawn(m.router().oneshot(ToolCall::new("s_echo", "x")));
    tokio::task::yield_now().await;
    assert!(!call.is_finished());
    m.shutdown_all().await;
    let result = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
    assert!(
        matches!(
            result,
            Err(CallError::Unavailable {
                cause: Unavailable::ShuttingDown,
                delivered: false,
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_failed_services_tools_go_to_the_next_service_and_come_back_with_it() {
    let dir = temp_dir();
    let both = |name: &str| {
        ServiceConfig::command(mock_bin())
            .with_env("MOCK_SERVICE", name)
            .with_restart(RestartPolicy::Never)
    };
    let configs: BTreeMap<_, _> = [
        ("alpha".to_owned(), both("alpha")),
        ("beta".to_owned(), both("beta")),
    ]
    .into();
    let m = ServiceManager::builder(&configs)
        .paths(Paths::under(dir.path(), dir.path().join("d.sock")))
        .build();
    m.start().await;
    let owner = |m: &ServiceManager, tool: &str| {
        m.tools()
            .into_iter()
            .find(|t| t.tool.name == tool)
            .map(|t| t.service)
    };
    let pid = |m: &ServiceManager| {
        let router = m.router();
        async move {
            let pid = router.oneshot(ToolCall::new("pid", "{}")).await.unwrap();
            pid.text().parse::<u32>().unwrap()
        }
    };
    let (alpha, beta) = (
        m.status("alpha").unwrap().pid,
        m.status("beta").unwrap().pid,
    );
    assert_eq!(
        owner(&m, "pid").as_deref(),
        Some("alpha"),
        "name order wins"
    );
    assert_eq!(Some(pid(&m).await), alpha);
    // alpha crashes for good: beta serves what both declare.
    let _ = m.router().oneshot(ToolCall::new("crash", "{}")).await;
    wait_state(&m, "alpha", ServiceState::Failed).await;
    assert!(
        !dir.path().join("services/alpha.sock").exists(),
        "a failed service's socket file is removed"
    );
    assert!(dir.path().join("services/beta.sock").exists());
    assert_eq!(owner(&m, "pid").as_deref(), Some("beta"));
    assert!(
        m.tools().iter().all(|t| t.service == "beta"),
        "{:?}",
        m.tools()
    );
    assert!(m.conflicts().is_empty());
    assert_eq!(Some(pid(&m).await), beta);
    // Back again: the original policy applies.
    m.restart("alpha").await.unwrap();
    assert_eq!(owner(&m, "pid").as_deref(), Some("alpha"));
    assert_eq!(Some(pid(&m).await), m.status("alpha").unwrap().pid);
    m.shutdown_all().await;
}

//! A connection that ends while idle is noticed when it happens: the
//! service leaves `ready` at once, its process is stopped with the
//! configured grace (never zero), and the restart policy applies, so the
//! next call finds a fresh extension.

mod common;

use common::{alive, call, gone_within, hostile_bin, manager, temp_dir, wait_until, Gate, WAIT};
use exthost::client::ConnectionError;
use exthost::config::{RestartPolicy, ServiceConfig};
use exthost::manager::{DownReason, ServiceState};

/// The hostile extension in `mode`, which on SIGTERM reports at `gate`
/// and waits there until the test releases it; a long grace, so that only
/// a stop that gives no time at all can kill it first.
fn closing(mode: &str, gate: &Gate, restart: RestartPolicy) -> ServiceConfig {
    ServiceConfig::command(hostile_bin())
        .with_env("HOSTILE_MODE", mode)
        .with_env("HOSTILE_TERM_GATE", gate.path())
        .with_env("HOSTILE_ONCE", gate.path().to_owned() + ".once")
        .with_shutdown_grace(WAIT)
        .with_restart(restart)
}

/// The extension closes its connection (in `mode`) without a call in
/// flight; the host must notice with no further call, stop the process
/// with time to finish, and apply `restart`.
async fn closed_while_idle(mode: &str, restart: RestartPolicy, call_first: bool) {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    let m = manager(dir.path(), vec![("hostile", closing(mode, &gate, restart))]);
    let report = m.start().await;
    assert_eq!(report.ready, ["hostile"], "{:?}", report.failed);
    let pid = m.status("hostile").unwrap().pid.unwrap();
    if call_first {
        assert_eq!(call(&m, "h_call", "answered").await.unwrap(), "answered");
    }
    // No call from here on: the end of the connection alone must be seen.
    let down = wait_until(&m, "hostile", |s| s.state != ServiceState::Ready).await;
    assert!(
        matches!(
            down.error,
            Some(DownReason::ConnectionLost(ConnectionError::Closed))
        ),
        "{down:?}"
    );
    // SIGTERM reached a process that still lives: it was given time.
    let term = gate.arrival().await;
    assert_eq!(term.args(), "term");
    assert!(alive(pid), "the extension was killed while it stopped");
    term.release();
    assert!(gone_within(pid, WAIT).await, "the extension never exited");
    match restart {
        RestartPolicy::Never => {
            let status = wait_until(&m, "hostile", |s| s.state == ServiceState::Failed).await;
            assert_eq!(status.pid, None);
        }
        _ => {
            let status = wait_until(&m, "hostile", |s| {
                s.state == ServiceState::Ready && s.restarts == 1
            })
            .await;
            assert_ne!(status.pid, Some(pid), "{status:?}");
            // The next call finds the fresh extension.
            assert_eq!(call(&m, "h_call", "fresh").await.unwrap(), "fresh");
        }
    }
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_connection_closed_after_an_answer_is_noticed_and_restarted_with_grace() {
    closed_while_idle("close_idle", RestartPolicy::OnFailure, true).await;
}

#[tokio::test]
async fn a_connection_closed_after_the_handshake_is_noticed_and_restarted_with_grace() {
    closed_while_idle("close_after_handshake", RestartPolicy::Always, false).await;
}

#[tokio::test]
async fn with_restart_never_a_connection_closed_while_idle_stops_the_process_with_grace() {
    closed_while_idle("close_idle", RestartPolicy::Never, true).await;
}

//! Hostile extensions: whatever they do, the host stays up, the affected
//! calls get typed errors, other extensions are unaffected, and the
//! extension is restarted or marked failed per its policy.

mod common;

use std::time::Duration;

use common::{call, hostile_bin, manager, mock, temp_dir, wait_until};
use exthost::client::ConnectionError;
use exthost::config::{RestartPolicy, ServiceConfig};
use exthost::manager::{DownReason, ServiceManager, ServiceState};
use exthost::{CallError, StartError};

/// The hostile extension in `mode`. Its call and handshake timeouts are
/// the defaults, far longer than any mode takes to misbehave, so that no
/// outcome depends on how fast a loaded machine is; the modes whose
/// misbehaviour is silence set short ones (silence is all they can meet).
fn hostile(mode: &str) -> ServiceConfig {
    ServiceConfig::command(hostile_bin())
        .with_env("HOSTILE_MODE", mode)
        .with_shutdown_grace(Duration::from_millis(500))
}

/// A hostile extension's timeouts when it stays silent: a call times out
/// after 200 ms, and the connection is reset 100 ms later.
fn silent(cfg: ServiceConfig) -> ServiceConfig {
    cfg.with_call_timeout(Duration::from_millis(200))
        .with_stuck_margin(Duration::from_millis(100))
}

/// A manager with `hostile` (restart per `restart`) and a healthy mock
/// beside it.
async fn start(
    dir: &std::path::Path,
    hostile: ServiceConfig,
    restart: RestartPolicy,
) -> (ServiceManager, exthost::manager::StartReport) {
    let m = manager(
        dir,
        vec![
            ("hostile", hostile.with_restart(restart)),
            ("healthy", mock("ok_")),
        ],
    );
    let report = m.start().await;
    (m, report)
}

/// The healthy neighbour still answers.
async fn healthy_still_works(m: &ServiceManager) {
    assert_eq!(
        call(m, "ok_echo", "still fine").await.unwrap(),
        "still fine"
    );
}

/// A hostile answer is a typed error, and the extension is restarted.
async fn violation_then_restart(mode: &str, check: impl Fn(&CallError) -> bool) {
    let dir = temp_dir();
    let (m, report) = start(dir.path(), hostile(mode), RestartPolicy::OnFailure).await;
    assert_eq!(report.ready.len(), 2, "{:?}", report.failed);
    let err = call(&m, "h_call", "{}").await.unwrap_err();
    assert!(check(&err), "{mode}: {err:?}");
    healthy_still_works(&m).await;
    let status = wait_until(&m, "hostile", |s| {
        s.state == ServiceState::Ready && s.restarts >= 1
    })
    .await;
    assert!(status.pid.is_some());
    m.shutdown_all().await;
}

fn protocol(e: &CallError) -> bool {
    matches!(e, CallError::Protocol { .. })
}

/// An unusable answer fails only its own call: the connection stays in
/// step and the extension keeps serving, never restarted.
async fn unusable_answer_fails_only_its_call(mode: &str, check: impl Fn(&CallError) -> bool) {
    let dir = temp_dir();
    let (m, report) = start(dir.path(), hostile(mode), RestartPolicy::OnFailure).await;
    assert_eq!(report.ready.len(), 2, "{:?}", report.failed);
    let pid = m.status("hostile").unwrap().pid;
    let err = call(&m, "h_call", "{}").await.unwrap_err();
    assert!(check(&err), "{mode}: {err:?}");
    assert!(!err.is_retry_safe());
    healthy_still_works(&m).await;
    let status = m.status("hostile").unwrap();
    assert_eq!(status.state, ServiceState::Ready, "{status:?}");
    assert_eq!((status.pid, status.restarts), (pid, 0), "{status:?}");
    m.shutdown_all().await;
}

#[tokio::test]
async fn an_undecodable_answer_fails_only_its_call_and_the_extension_keeps_serving() {
    unusable_answer_fails_only_its_call("garbage", |e| {
        matches!(
            e,
            CallError::Protocol {
                source: ConnectionError::UnusableAnswer(_),
                ..
            }
        )
    })
    .await;
}

#[tokio::test]
async fn an_oversized_answer_fails_its_call_at_once_naming_the_limit() {
    unusable_answer_fails_only_its_call("oversized", |e| {
        protocol(e) && e.to_string().contains("exceeds the 16777216-byte limit")
    })
    .await;
}

#[tokio::test]
async fn wrong_response_type_is_a_protocol_error() {
    violation_then_restart("wrong_kind", |e| {
        protocol(e)
            && e.to_string()
                .contains("`configured` response to a `tool_call` request")
    })
    .await;
}

#[tokio::test]
async fn half_a_frame_then_close_makes_the_call_unavailable_and_restarts() {
    violation_then_restart("half_frame", |e| {
        matches!(
            e,
            CallError::Protocol { .. } | CallError::Unavailable { .. }
        )
    })
    .await;
}

#[tokio::test]
async fn two_answers_to_one_request_never_reach_the_next_caller() {
    let dir = temp_dir();
    let (m, _) = start(dir.path(), hostile("double"), RestartPolicy::OnFailure).await;
    assert_eq!(call(&m, "h_call", "first").await.unwrap(), "first");
    // The second answer to "first" is unsolicited: the connection is reset
    // rather than handing it to the next call.
    match call(&m, "h_call", "second").await {
        Ok(text) => assert_eq!(text, "second", "a caller got another call's answer"),
        Err(e) => assert!(
            matches!(
                e,
                CallError::Protocol { .. } | CallError::Unavailable { .. }
            ),
            "{e:?}"
        ),
    }
    wait_until(&m, "hostile", |s| s.restarts >= 1).await;
    healthy_still_works(&m).await;
    m.shutdown_all().await;
}

#[tokio::test]
async fn an_extension_that_skips_one_answer_is_reset_as_stuck_and_recovers() {
    let dir = temp_dir();
    let cfg = silent(hostile("skip_one"));
    let (m, _) = start(dir.path(), cfg, RestartPolicy::OnFailure).await;
    let err = call(&m, "h_call", "skipped").await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err:?}");
    // Later calls must never get a shifted answer: they wait behind the
    // owed answer, time out, and the stuck connection is reset.
    let status = wait_until(&m, "hostile", |s| s.restarts >= 1).await;
    assert!(
        matches!(
            status.error,
            Some(DownReason::ConnectionLost(ConnectionError::Stuck { .. }))
        ),
        "{status:?}"
    );
    wait_until(&m, "hostile", |s| s.state == ServiceState::Ready).await;
    healthy_still_works(&m).await;
    m.shutdown_all().await;
}

#[tokio::test]
async fn an_extension_that_never_reads_cannot_hang_the_host() {
    let dir = temp_dir();
    let cfg = silent(hostile("no_read"));
    let (m, _) = start(dir.path(), cfg, RestartPolicy::Never).await;
    // 1 MiB arguments: the socket buffer fills and writes stall.
    let big = "x".repeat(1 << 20);
    let calls: Vec<_> = (0..4).map(|_| call(&m, "h_call", &big)).collect();
    for r in futures::future::join_all(calls).await {
        let e = r.unwrap_err();
        assert!(
            matches!(
                e,
                CallError::Timeout { .. }
                    | CallError::Unavailable { .. }
                    | CallError::Protocol { .. }
            ),
            "{e:?}"
        );
    }
    let status = wait_until(&m, "hostile", |s| s.state == ServiceState::Failed).await;
    assert!(
        matches!(
            status.error,
            Some(DownReason::ConnectionLost(ConnectionError::Stuck { .. }))
        ),
        "{status:?}"
    );
    healthy_still_works(&m).await;
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_flood_of_unsolicited_answers_resets_the_connection() {
    let dir = temp_dir();
    // With nothing pending, the connection reads only when its worker is
    // woken: here by the stuck timer armed during the handshake, which
    // fires stuck_after (call timeout + margin) after it, hence `silent`.
    let cfg = silent(hostile("flood"));
    let (m, _) = start(dir.path(), cfg, RestartPolicy::Never).await;
    let status = wait_until(&m, "hostile", |s| s.state == ServiceState::Failed).await;
    assert!(
        matches!(
            status.error,
            Some(DownReason::ConnectionLost(
                ConnectionError::Unsolicited { .. }
            ))
        ),
        "{status:?}"
    );
    assert!(matches!(
        call(&m, "h_call", "{}").await,
        Err(CallError::Unavailable { .. })
    ));
    healthy_still_works(&m).await;
    m.shutdown_all().await;
}

#[tokio::test]
async fn exiting_during_the_handshake_is_reported_with_its_status() {
    let dir = temp_dir();
    let (m, report) = start(dir.path(), hostile("exit_handshake"), RestartPolicy::Never).await;
    let (name, err) = &report.failed[0];
    assert_eq!(name, "hostile");
    assert!(
        matches!(&**err, StartError::ExitedEarly { status, .. } if status.code() == Some(7)),
        "{err:?}"
    );
    healthy_still_works(&m).await;
    m.shutdown_all().await;
}

#[tokio::test]
async fn an_extension_that_binds_no_socket_times_out_and_is_marked_failed() {
    let dir = temp_dir();
    let cfg = hostile("no_bind").with_handshake_timeout(Duration::from_millis(200));
    let (m, report) = start(dir.path(), cfg, RestartPolicy::Never).await;
    assert!(
        matches!(*report.failed[0].1, StartError::Timeout { .. }),
        "{:?}",
        report.failed
    );
    wait_until(&m, "hostile", |s| s.state == ServiceState::Failed).await;
    healthy_still_works(&m).await;
    m.shutdown_all().await;
}

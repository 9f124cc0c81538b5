//! The mock extension as a real process, over a real Unix socket.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{connect, spawn_mock, temp_dir, Gate, WAIT};
use exthost::client::ConnectionError;
use exthost::handshake::handshake;
use exthost::proto::{ExtRequest, ExtResponse};
use exthost::stack::StackBuilder;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

#[tokio::test]
async fn handshake_with_the_mock_process_lists_prefixed_tools() {
    let dir = temp_dir();
    let sock = dir.path().join("m.sock");
    let _proc = spawn_mock(&sock, &[("MOCK_SERVICE", "alpha"), ("MOCK_PREFIX", "a_")]).await;
    let mut svc = StackBuilder::new("alpha").build(connect(&sock).await);
    let info = handshake(&mut svc, &json!({"greeting": "hi"}), WAIT)
        .await
        .unwrap();
    assert_eq!(info.service, "alpha");
    let names: Vec<_> = info.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["a_echo", "a_sleep", "a_fail", "a_crash", "a_pid"]);
    assert!(info.has_query());
    assert!(info.mismatches.is_empty());

    let q = svc
        .clone()
        .oneshot(ExtRequest::service_query("status?"))
        .await
        .unwrap();
    assert_eq!(
        q,
        ExtResponse::service_query_result(
            json!({"service": "alpha", "query": "status?"}).to_string()
        )
    );
    let schema = svc.clone().oneshot(ExtRequest::get_schema()).await.unwrap();
    assert!(matches!(
        schema.msg,
        Some(exthost::proto::ext_response::Msg::SchemaResult(_))
    ));

    let unknown = svc
        .clone()
        .oneshot(ExtRequest::tool_call("nope", "{}"))
        .await
        .unwrap();
    assert_eq!(unknown.error_message(), Some("unknown tool: nope"));
    let fail = svc
        .clone()
        .oneshot(ExtRequest::tool_call("a_fail", "{}"))
        .await
        .unwrap();
    assert_eq!(fail.error_message(), Some("a_fail failed as requested"));
}

#[tokio::test]
async fn thousand_concurrent_callers_each_get_their_own_echo() {
    let dir = temp_dir();
    let sock = dir.path().join("m.sock");
    let _proc = spawn_mock(&sock, &[]).await;
    let svc = StackBuilder::new("mock")
        .max_in_flight(32)
        .build(connect(&sock).await);
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let args = json!({"caller": i}).to_string();
                let resp = svc
                    .oneshot(ExtRequest::tool_call("echo", args.clone()))
                    .await
                    .unwrap();
                (args, resp)
            })
        })
        .collect();
    let mut seen = HashSet::new();
    for call in calls {
        let (args, resp) = call.await.unwrap();
        assert_eq!(resp, ExtResponse::tool_result(args.clone()));
        assert!(seen.insert(args));
    }
    assert_eq!(seen.len(), 1000);
}

#[tokio::test]
async fn timed_out_call_against_the_process_leaves_the_next_answer_intact() {
    let dir = temp_dir();
    let sock = dir.path().join("m.sock");
    let gate = Gate::bind(dir.path());
    let _proc = spawn_mock(&sock, &[("MOCK_NOTIFY_SOCKET", gate.path())]).await;
    // The held call cannot be answered before the test releases it, so
    // however short, its timeout comes first.
    let stack = StackBuilder::new("mock").timeout(Duration::from_millis(50));
    let conn = stack.connection(connect(&sock).await);
    let svc = stack.service(conn.clone());
    let err = svc
        .clone()
        .oneshot(ExtRequest::tool_call("wait", "held"))
        .await
        .unwrap_err();
    assert!(err.is::<exthost::stack::TimedOut>(), "{err}");
    // The held call's answer is still owed: the next call waits for it to
    // be read and thrown away, then gets its own answer.
    let held = gate.arrival().await;
    assert_eq!(held.args(), "held");
    let next = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("echo", "mine")));
    held.release();
    let resp = common::join(next).await.unwrap();
    assert_eq!(resp, ExtResponse::tool_result("mine"));
}

#[tokio::test]
async fn shutdown_removes_the_socket_and_exits_zero() {
    let dir = temp_dir();
    let sock = dir.path().join("m.sock");
    let marker = dir.path().join("stopped");
    let mut proc = spawn_mock(&sock, &[("MOCK_SHUTDOWN_FILE", marker.to_str().unwrap())]).await;
    let svc = StackBuilder::new("mock").build(connect(&sock).await);
    let echo = svc
        .clone()
        .oneshot(ExtRequest::tool_call("echo", "last"))
        .await
        .unwrap();
    assert_eq!(echo, ExtResponse::tool_result("last"));
    svc.clone().oneshot(ExtRequest::shutdown()).await.unwrap();
    assert_eq!(proc.wait_exit(WAIT).await, Some(0));
    assert!(!sock.exists(), "socket file left behind");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "shutdown");
}

#[tokio::test]
async fn sigterm_stops_the_mock_cleanly() {
    let dir = temp_dir();
    let sock = dir.path().join("m.sock");
    let marker = dir.path().join("stopped");
    let mut proc = spawn_mock(&sock, &[("MOCK_SHUTDOWN_FILE", marker.to_str().unwrap())]).await;
    drop(connect(&sock).await);
    let pid = nix::unistd::Pid::from_raw(proc.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(proc.wait_exit(WAIT).await, Some(0));
    assert!(!sock.exists());
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "signal");
}

#[tokio::test]
async fn crash_fails_the_call_with_closed_and_the_process_exits_101() {
    let dir = temp_dir();
    let sock = dir.path().join("m.sock");
    let mut proc = spawn_mock(&sock, &[]).await;
    let stack = StackBuilder::new("mock");
    let conn = stack.connection(connect(&sock).await);
    let svc = stack.service(conn.clone());
    let err = svc
        .clone()
        .oneshot(ExtRequest::tool_call("crash", "{}"))
        .await
        .unwrap_err();
    let conn_err = err
        .downcast_ref::<ConnectionError>()
        .expect("a ConnectionError");
    assert!(matches!(conn_err, ConnectionError::Closed), "{conn_err:?}");
    assert_eq!(proc.wait_exit(WAIT).await, Some(101));
    assert!(conn.is_broken());
}

#[tokio::test]
async fn independent_raw_client_speaks_to_the_mock() {
    // Written from DESIGN.md's wire table alone: no prost, no exthost codec.
    let dir = temp_dir();
    let sock = dir.path().join("m.sock");
    let _proc = spawn_mock(&sock, &[("MOCK_SERVICE", "raw")]).await;
    let mut s = connect(&sock).await;

    // ExtRequest{hello(1){version(1)="0.2"}}
    s.write_all(b"\x00\x00\x00\x07\x0a\x05\x0a\x030.2")
        .await
        .unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).await.unwrap();
    // ExtResponse field 1 (ready), length-delimited.
    assert_eq!(payload[0], 0x0a);
    // ready.version(1) = "0.2", ready.service(2) = "raw"
    assert_eq!(&payload[2..12], b"\x0a\x030.2\x12\x03raw");

    // ExtRequest{tool_call(3){name(1)="echo", args(2)="hi"}}
    s.write_all(b"\x00\x00\x00\x0c\x1a\x0a\x0a\x04echo\x12\x02hi")
        .await
        .unwrap();
    s.read_exact(&mut len).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).await.unwrap();
    // ExtResponse{tool_result(3){result(1)="hi"}}
    assert_eq!(payload, b"\x1a\x04\x0a\x02hi");
}

#[tokio::test]
async fn oversized_frame_from_the_host_closes_only_that_connection() {
    let dir = temp_dir();
    let sock = dir.path().join("m.sock");
    let _proc = spawn_mock(&sock, &[]).await;
    let mut s = connect(&sock).await;
    s.write_all(&(64u32 * 1024 * 1024).to_be_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    // The server closes the connection instead of waiting for 64 MiB.
    assert_eq!(s.read(&mut buf).await.unwrap(), 0);

    // The process still serves new connections.
    let svc = StackBuilder::new("mock").build(connect(&sock).await);
    let echo = svc
        .oneshot(ExtRequest::tool_call("echo", "still here"))
        .await
        .unwrap();
    assert_eq!(echo, ExtResponse::tool_result("still here"));
}

//! The connection's reader hand-off: a waiting caller reads the socket
//! itself, and the role passes on when it gets its answer or goes away.
//! Answers are never lost or shifted and slots never leak, whichever point
//! of the hand-off a caller is dropped at.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use common::{fake_pair, recv, FakeExt};
use exthost::client::{Connection, ConnectionError};
use exthost::proto::{ExtRequest, ExtResponse, RequestKind, ResponseKind};
use exthost::server::{Call, Extension};
use exthost::Tool;
use futures::{poll, SinkExt, StreamExt};
use tower::{Service, ServiceExt};

/// True if the fake extension receives nothing more until the (paused)
/// clock has run 1 s ahead with every task idle.
async fn receives_nothing(ext: &mut FakeExt) -> bool {
    tokio::time::timeout(Duration::from_secs(1), ext.next())
        .await
        .is_err()
}

/// A call with its slot taken (`poll_ready` done), not polled yet.
async fn ready_call(conn: &Connection, tool: &str) -> exthost::client::ResponseFuture {
    let mut c = conn.clone();
    c.ready().await.unwrap();
    c.call(ExtRequest::tool_call(tool, tool))
}

/// A call with its slot taken and polled once: its request is written and
/// it waits (the first such call on a connection is its reader).
async fn written_call(conn: &Connection, tool: &str) -> exthost::client::ResponseFuture {
    let mut call = ready_call(conn, tool).await;
    assert!(poll!(&mut call).is_pending(), "{tool} was answered at once");
    call
}

/// Answers `tool` with its name, for the fake extension.
fn answer(tool: &str) -> ExtResponse {
    ExtResponse::tool_result(tool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_on_many_threads_each_get_their_own_answer() {
    let (host_io, ext_io) = tokio::io::duplex(4096);
    let echo = Extension::new("echo").tool(Tool::new("echo", "Echo", serde_json::json!({})));
    let server = tokio::spawn(echo.serve_connection(
        ext_io,
        tower::service_fn(|call: Call| async move {
            match call {
                Call::Tool(t) => Ok::<_, Infallible>(t.args),
                _ => Ok(String::new()),
            }
        }),
    ));
    let conn = Connection::builder().max_in_flight(8).build(host_io);
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let conn = conn.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let payload = format!("task {task} call {i}");
                    let resp = conn
                        .clone()
                        .oneshot(ExtRequest::tool_call("echo", payload.clone()))
                        .await
                        .unwrap();
                    assert_eq!(resp, ExtResponse::tool_result(payload));
                }
            })
        })
        .collect();
    for t in tasks {
        common::join(t).await;
    }
    assert_eq!(conn.in_flight(), 0);
    drop(conn);
    // Every handle gone: the connection closes and the extension ends.
    common::join(server).await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reader_dropped_while_waiting_hands_the_role_to_the_next_caller() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(2).build(io);
    let mut a = ready_call(&conn, "a").await;
    let mut b = ready_call(&conn, "b").await;
    // `a` writes first and reads; `b` waits behind it.
    assert!(poll!(&mut a).is_pending());
    assert!(poll!(&mut b).is_pending());
    assert_eq!(recv(&mut ext).await.tool_name(), Some("a"));
    assert_eq!(recv(&mut ext).await.tool_name(), Some("b"));
    drop(a);
    assert_eq!(conn.in_flight(), 2, "a dropped request keeps its slot");
    ext.send(answer("a")).await.unwrap();
    ext.send(answer("b")).await.unwrap();
    // Only `b` is left to read; with the paused clock, a `b` nobody wakes
    // would time out at once.
    let got = tokio::time::timeout(Duration::from_secs(5), b).await;
    assert_eq!(got.expect("b was never woken").unwrap(), answer("b"));
    assert_eq!(conn.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_caller_dropped_after_its_answer_arrived_frees_its_slot_and_shifts_nothing() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(2).build(io);
    let a = written_call(&conn, "a").await;
    let b = written_call(&conn, "b").await;
    assert_eq!(recv(&mut ext).await.tool_name(), Some("a"));
    assert_eq!(recv(&mut ext).await.tool_name(), Some("b"));
    ext.send(answer("a")).await.unwrap();
    ext.send(answer("b")).await.unwrap();
    // `a`, the reader, reads both answers and keeps `b`'s for it.
    assert_eq!(a.await.unwrap(), answer("a"));
    assert_eq!(conn.in_flight(), 0, "both answers arrived");
    drop(b);

    let c = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("c", "c")));
    assert_eq!(recv(&mut ext).await.tool_name(), Some("c"));
    ext.send(answer("c")).await.unwrap();
    assert_eq!(common::join(c).await.unwrap(), answer("c"));
    assert_eq!(conn.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_dropped_before_it_is_written_sends_nothing_and_frees_its_slot() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::new(io);
    let never_polled = ready_call(&conn, "never").await;
    assert_eq!(conn.in_flight(), 1);
    drop(never_polled);
    assert_eq!(conn.in_flight(), 0);
    assert!(receives_nothing(&mut ext).await);

    let next = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("next", "x")));
    let req = recv(&mut ext).await;
    assert_eq!(req.tool_name(), Some("next"));
    assert_eq!(req.correlation_id, Some(1), "the dropped call used no id");
    ext.send(answer("next")).await.unwrap();
    assert_eq!(common::join(next).await.unwrap(), answer("next"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_answer_owed_to_a_dropped_caller_is_read_in_the_background_and_frees_its_slot() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::new(io);
    let a = written_call(&conn, "a").await;
    assert_eq!(recv(&mut ext).await.tool_name(), Some("a"));
    drop(a);
    // The slot stays taken: the extension still owes the answer.
    let mut next = conn.clone();
    assert!(poll!(std::future::poll_fn(|cx| next.poll_ready(cx))).is_pending());
    assert_eq!(conn.in_flight(), 1);

    // No caller waits: the background task reads the late answer.
    ext.send(answer("a")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), next.ready())
        .await
        .expect("the late answer never freed the slot")
        .unwrap();
    let b = next.call(ExtRequest::tool_call("b", "b"));
    let (got, req) = tokio::join!(b, async {
        let req = recv(&mut ext).await;
        ext.send(answer("b")).await.unwrap();
        req
    });
    assert_eq!(req.tool_name(), Some("b"));
    assert_eq!(got.unwrap(), answer("b"));
    assert!(!conn.is_broken());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn callers_behind_the_reader_get_their_answers_after_it_leaves() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(3).build(io);
    let a = written_call(&conn, "a").await;
    let b = written_call(&conn, "b").await;
    let c = written_call(&conn, "c").await;
    for name in ["a", "b", "c"] {
        assert_eq!(recv(&mut ext).await.tool_name(), Some(name));
    }
    ext.send(answer("a")).await.unwrap();
    assert_eq!(a.await.unwrap(), answer("a"));
    // `b` now reads, and hands on to `c` in turn.
    ext.send(answer("b")).await.unwrap();
    assert_eq!(b.await.unwrap(), answer("b"));
    ext.send(answer("c")).await.unwrap();
    assert_eq!(c.await.unwrap(), answer("c"));
    assert_eq!(conn.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_failure_while_a_caller_reads_fails_every_pending_call_with_the_same_cause() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(3).build(io);
    let a = written_call(&conn, "a").await;
    // `b` and `c` wait in their own tasks: only a wake-up reaches them.
    let mut waiting = Vec::new();
    for name in ["b", "c"] {
        let mut call = ready_call(&conn, name).await;
        let (polled, polled_rx) = tokio::sync::oneshot::channel();
        waiting.push(tokio::spawn(async move {
            assert!(poll!(&mut call).is_pending());
            polled.send(()).unwrap();
            call.await
        }));
        polled_rx.await.unwrap();
    }
    for name in ["a", "b", "c"] {
        assert_eq!(recv(&mut ext).await.tool_name(), Some(name));
    }
    // A `configured` answer to a tool call: `a`, reading, finds it.
    ext.send(ExtResponse::configured()).await.unwrap();
    let expected = |e: &ConnectionError| {
        matches!(
            e,
            ConnectionError::WrongResponse {
                request: RequestKind::ToolCall,
                response: ResponseKind::Configured,
            }
        )
    };
    let e = a.await.unwrap_err();
    assert!(expected(&e), "{e:?}");
    for task in waiting {
        let e = common::join(task).await.unwrap_err();
        assert!(expected(&e), "{e:?}");
    }
    assert_eq!(conn.in_flight(), 0, "a reset frees every slot");
    let e = conn.clone().ready().await.unwrap_err();
    assert!(expected(&e), "{e:?}");
    // The socket is closed.
    assert!(ext.next().await.is_none());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_written_while_another_caller_reads_reaches_the_extension_whole() {
    // A pipe smaller than one request: the writer leaves the rest to the
    // reader, and neither frame is cut or mixed with the other.
    let (io, ext_io) = tokio::io::duplex(16);
    let mut ext = tokio_util::codec::Framed::new(ext_io, exthost::codec::ServerCodec::new());
    let conn = Connection::builder().max_in_flight(2).build(io);
    let long_a = "a".repeat(200);
    let long_b = "b".repeat(200);
    let mut a = {
        let mut c = conn.clone();
        c.ready().await.unwrap();
        c.call(ExtRequest::tool_call("a", long_a.clone()))
    };
    let mut b = {
        let mut c = conn.clone();
        c.ready().await.unwrap();
        c.call(ExtRequest::tool_call("b", long_b.clone()))
    };
    assert!(poll!(&mut a).is_pending());
    assert!(poll!(&mut b).is_pending());
    let (got_a, got_b, ()) = tokio::join!(a, b, async {
        let ra = recv(&mut ext).await;
        let rb = recv(&mut ext).await;
        assert_eq!(ra.tool_name(), Some("a"));
        assert_eq!(rb.tool_name(), Some("b"));
        ext.send(ExtResponse::tool_result(
            ra.as_tool_call().unwrap().args.clone(),
        ))
        .await
        .unwrap();
        ext.send(ExtResponse::tool_result(
            rb.as_tool_call().unwrap().args.clone(),
        ))
        .await
        .unwrap();
    });
    assert_eq!(got_a.unwrap(), ExtResponse::tool_result(long_a));
    assert_eq!(got_b.unwrap(), ExtResponse::tool_result(long_b));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reader_kept_but_not_polled_does_not_hold_up_a_caller_in_its_task() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(2).build(io);
    let mut a = ready_call(&conn, "a").await;
    // `a` becomes the reader, then is kept but no longer polled (as under
    // `timeout(d, &mut a)` or in a `select!` loop).
    assert!(poll!(&mut a).is_pending());
    let b = ready_call(&conn, "b").await;
    let ext_side = tokio::spawn(async move {
        assert_eq!(recv(&mut ext).await.tool_name(), Some("a"));
        assert_eq!(recv(&mut ext).await.tool_name(), Some("b"));
        ext.send(answer("a")).await.unwrap();
        ext.send(answer("b")).await.unwrap();
        ext
    });
    let got = tokio::time::timeout(Duration::from_secs(30), b).await;
    assert_eq!(
        got.expect("b waited behind a reader nobody polls").unwrap(),
        answer("b")
    );
    let _ext = common::join(ext_side).await;
    // `a`'s answer was read for it, in its place.
    assert_eq!(a.await.unwrap(), answer("a"));
    assert_eq!(conn.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reader_kept_but_not_polled_does_not_hold_up_callers_in_other_tasks() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(2).build(io);
    let a = written_call(&conn, "a").await;
    assert_eq!(recv(&mut ext).await.tool_name(), Some("a"));
    // `b` waits in its own task; this task keeps `a` and polls only `b`'s
    // join handle, so only the background task can notice `a` is behind.
    let b = ready_call(&conn, "b").await;
    let b = tokio::spawn(b);
    assert_eq!(recv(&mut ext).await.tool_name(), Some("b"));
    ext.send(answer("a")).await.unwrap();
    ext.send(answer("b")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), b).await;
    let got = got.expect("b waited behind a reader nobody polls");
    assert_eq!(got.unwrap().unwrap(), answer("b"));
    assert_eq!(a.await.unwrap(), answer("a"));
    assert_eq!(conn.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reader_kept_but_not_polled_does_not_stop_the_stuck_limit() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder()
        .max_in_flight(2)
        .stuck_after(Some(Duration::from_secs(2)))
        .build(io);
    let a = written_call(&conn, "a").await;
    let b = tokio::spawn(ready_call(&conn, "b").await);
    assert_eq!(recv(&mut ext).await.tool_name(), Some("a"));
    assert_eq!(recv(&mut ext).await.tool_name(), Some("b"));
    // The extension never answers: the stuck limit must still fail `b`.
    let got = tokio::time::timeout(Duration::from_secs(30), b).await;
    let got = got.expect("the stuck limit never fired").unwrap();
    assert!(matches!(got, Err(ConnectionError::Stuck { .. })), "{got:?}");
    drop(a);
    drop(ext);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_caller_waiting_for_a_slot_learns_that_the_connection_failed() {
    let (io, ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(1).build(io);
    // One clone holds the only slot without calling; another waits for it.
    let mut holder = conn.clone();
    holder.ready().await.unwrap();
    let mut waiter = conn.clone();
    let (pending_tx, pending_rx) = tokio::sync::oneshot::channel();
    // The waiter runs in its own task, so only a wake-up can tell it.
    let waiting = tokio::spawn(async move {
        let mut ready = std::pin::pin!(waiter.ready());
        assert!(poll!(&mut ready).is_pending(), "the only slot is held");
        pending_tx.send(()).unwrap();
        ready.await.map(|_| ())
    });
    pending_rx.await.unwrap();
    // The extension closes the idle connection.
    drop(ext);
    let got = tokio::time::timeout(Duration::from_secs(30), waiting).await;
    let got = got.expect("the waiter was never told").unwrap();
    assert!(matches!(got, Err(ConnectionError::Closed)), "{got:?}");
    drop(holder);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_answer_that_arrived_before_a_failed_write_still_reaches_its_caller() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(2).build(io);
    let a = tokio::spawn(ready_call(&conn, "a").await);
    assert_eq!(recv(&mut ext).await.tool_name(), Some("a"));
    // The extension answers `a`, then exits before `a`'s task runs again.
    ext.send(answer("a")).await.unwrap();
    drop(ext);
    // `b` writes into the closed socket first.
    let mut b = ready_call(&conn, "b").await;
    let first = poll!(&mut b);
    assert_eq!(common::join(a).await.unwrap(), answer("a"));
    let b = match first {
        std::task::Poll::Ready(b) => b,
        std::task::Poll::Pending => b.await,
    };
    assert!(b.is_err(), "{b:?}");
}

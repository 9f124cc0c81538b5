//! One extension connection: answers are never mixed up, in-flight slots
//! are held until answered, and failures carry their cause.

mod common;

use std::time::Duration;

use common::{fake_pair, recv, FakeExt, WAIT};
use exthost::client::{Connection, ConnectionError};
use exthost::proto::{ExtRequest, ExtResponse, RequestKind, ResponseKind};
use futures::{SinkExt, StreamExt};
use tower::{Service, ServiceExt};

/// True if the fake extension receives nothing more until the (paused)
/// clock has run 1 s ahead with every task idle.
async fn receives_nothing(ext: &mut FakeExt) -> bool {
    tokio::time::timeout(Duration::from_secs(1), ext.next())
        .await
        .is_err()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn timed_out_call_never_receives_a_later_answer() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(2).build(io);

    let first = tokio::time::timeout(
        Duration::from_millis(50),
        conn.clone().oneshot(ExtRequest::tool_call("slow", "1")),
    );
    let (first, req) = tokio::join!(first, recv(&mut ext));
    assert!(first.is_err(), "the first call must time out");
    assert_eq!(req.tool_name(), Some("slow"));

    let second = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("fast", "2")));
    assert_eq!(recv(&mut ext).await.tool_name(), Some("fast"));
    // The late answer to the first call arrives first, then the second's.
    ext.send(ExtResponse::tool_result("late answer to slow"))
        .await
        .unwrap();
    ext.send(ExtResponse::tool_result("answer to fast"))
        .await
        .unwrap();
    let got = second.await.unwrap().unwrap();
    assert_eq!(got, ExtResponse::tool_result("answer to fast"));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn timed_out_request_keeps_its_in_flight_slot_until_answered() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::new(io); // max_in_flight 1
    let first = tokio::time::timeout(
        Duration::from_millis(50),
        conn.clone().oneshot(ExtRequest::tool_call("slow", "1")),
    );
    let (first, _) = tokio::join!(first, recv(&mut ext));
    assert!(first.is_err());
    assert_eq!(conn.in_flight(), 1, "the unanswered request holds its slot");

    let second = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("next", "2")));
    assert!(
        receives_nothing(&mut ext).await,
        "a second request was sent while the first is unanswered"
    );
    ext.send(ExtResponse::tool_result("late")).await.unwrap();
    assert_eq!(recv(&mut ext).await.tool_name(), Some("next"));
    ext.send(ExtResponse::tool_result("mine")).await.unwrap();
    assert_eq!(
        second.await.unwrap().unwrap(),
        ExtResponse::tool_result("mine")
    );
    assert_eq!(conn.in_flight(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn pipelined_requests_get_their_own_answers_in_order() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(8).build(io);
    let calls: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(
                conn.clone()
                    .oneshot(ExtRequest::tool_call("echo", i.to_string())),
            )
        })
        .collect();
    for _ in 0..8 {
        let req = recv(&mut ext).await;
        let args = req.as_tool_call().unwrap().args.clone();
        ext.send(ExtResponse::tool_result(args)).await.unwrap();
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(
            call.await.unwrap().unwrap(),
            ExtResponse::tool_result(i.to_string())
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn transport_closed_mid_call_fails_pending_and_later_calls_with_the_cause() {
    let (io, mut ext) = fake_pair();
    let mut conn = Connection::builder().max_in_flight(2).build(io);
    let a = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("a", "")));
    let b = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("b", "")));
    recv(&mut ext).await;
    recv(&mut ext).await;
    drop(ext);
    for call in [a, b] {
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ConnectionError::Closed), "{err:?}");
    }
    assert!(conn.is_broken());
    let err = futures::future::poll_fn(|cx| conn.poll_ready(cx))
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectionError::Closed), "{err:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn extension_going_away_while_idle_breaks_the_connection() {
    let (io, ext) = fake_pair();
    let conn = Connection::new(io);
    drop(ext);
    // The worker notices the close without any request being made.
    let cause = tokio::time::timeout(WAIT, conn.broken())
        .await
        .expect("the close was not noticed");
    assert!(matches!(cause, ConnectionError::Closed));
    assert!(conn.is_broken());
}

#[tokio::test(flavor = "current_thread")]
async fn answer_of_the_wrong_kind_is_a_protocol_violation() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(2).build(io);
    let a = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("a", "")));
    let b = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("b", "")));
    recv(&mut ext).await;
    recv(&mut ext).await;
    ext.send(ExtResponse::configured()).await.unwrap();
    let err = a.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ConnectionError::WrongResponse {
                request: RequestKind::ToolCall,
                response: ResponseKind::Configured
            }
        ),
        "{err:?}"
    );
    assert!(err.is_protocol_violation());
    // The other pending call fails with the same cause instead of waiting.
    let err = b.await.unwrap().unwrap_err();
    assert!(
        matches!(err, ConnectionError::WrongResponse { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn unsolicited_answer_is_never_handed_to_the_next_request() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::new(io);
    let one = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("one", "")));
    recv(&mut ext).await;
    // One request, two answers.
    ext.send(ExtResponse::tool_result("one")).await.unwrap();
    ext.send(ExtResponse::tool_result("extra")).await.unwrap();
    assert_eq!(one.await.unwrap().unwrap(), ExtResponse::tool_result("one"));

    let err = conn
        .clone()
        .oneshot(ExtRequest::tool_call("two", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectionError::Unsolicited {
                response: ResponseKind::ToolResult
            }
        ),
        "{err:?}"
    );
    assert!(conn.is_broken());
}

#[tokio::test(flavor = "current_thread")]
async fn undecodable_answer_fails_the_call_with_a_codec_error() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::new(io);
    let call = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("a", "")));
    recv(&mut ext).await;
    use tokio::io::AsyncWriteExt;
    ext.get_mut()
        .write_all(b"\x00\x00\x00\x02\xff\xff")
        .await
        .unwrap();
    let err = call.await.unwrap().unwrap_err();
    // Well framed garbage: the call fails with the codec's reason; the
    // connection stays in step (see an_undecodable_answer_fails_only_its_call).
    assert!(
        matches!(&err, ConnectionError::UnusableAnswer(e) if matches!(**e, exthost::codec::CodecError::Decode(_))),
        "{err:?}"
    );
    assert!(err.is_protocol_violation());
    assert!(!conn.is_broken());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn connection_with_an_overdue_request_is_reset_as_stuck() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder()
        .stuck_after(Some(Duration::from_secs(3)))
        .build(io);
    let call = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("never", "")));
    recv(&mut ext).await;
    let err = call.await.unwrap().unwrap_err();
    match err {
        ConnectionError::Stuck { request, waited } => {
            assert_eq!(request, RequestKind::ToolCall);
            assert!(waited >= Duration::from_secs(3), "{waited:?}");
        }
        other => panic!("expected Stuck, got {other:?}"),
    }
    assert!(conn.is_broken());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn busy_connection_is_not_stuck_while_answers_keep_coming() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder()
        .stuck_after(Some(Duration::from_secs(3)))
        .build(io);
    // Ten calls, each answered after 1 s: 10 s in all, none overdue.
    for i in 0..10 {
        let call = tokio::spawn(
            conn.clone()
                .oneshot(ExtRequest::tool_call("t", i.to_string())),
        );
        recv(&mut ext).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        ext.send(ExtResponse::tool_result(i.to_string()))
            .await
            .unwrap();
        assert_eq!(
            call.await.unwrap().unwrap(),
            ExtResponse::tool_result(i.to_string())
        );
    }
    assert!(!conn.is_broken());
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_gets_no_answer_and_does_not_shift_later_ones() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(4).build(io);
    let a = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("a", "")));
    assert_eq!(recv(&mut ext).await.kind(), RequestKind::ToolCall);
    let s = tokio::spawn(conn.clone().oneshot(ExtRequest::shutdown()));
    assert_eq!(recv(&mut ext).await.kind(), RequestKind::Shutdown);
    ext.send(ExtResponse::tool_result("a")).await.unwrap();
    assert_eq!(a.await.unwrap().unwrap(), ExtResponse::tool_result("a"));
    assert_eq!(s.await.unwrap().unwrap(), ExtResponse::default());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn timeout_covers_waiting_for_an_in_flight_slot() {
    let (io, mut ext) = fake_pair();
    let svc = exthost::stack::Timeout::new(Connection::new(io), Duration::from_secs(1));
    let first = tokio::spawn(svc.clone().oneshot(ExtRequest::tool_call("a", "")));
    recv(&mut ext).await;
    // The second call waits behind the first; its deadline still runs.
    let err = svc
        .clone()
        .oneshot(ExtRequest::tool_call("b", ""))
        .await
        .unwrap_err();
    let timed_out = err
        .downcast_ref::<exthost::stack::TimedOut>()
        .expect("TimedOut");
    assert_eq!(timed_out.after(), Duration::from_secs(1));
    // It never reached the extension: the only request sent is the first.
    assert!(receives_nothing(&mut ext).await);
    common::abort(first).await;
}

#[tokio::test(flavor = "current_thread")]
async fn shutdown_goes_out_at_once_even_when_every_slot_is_taken() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::new(io); // one slot, taken below
    let busy = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("busy", "")));
    assert_eq!(recv(&mut ext).await.kind(), RequestKind::ToolCall);
    let stop = tokio::spawn(conn.shutdown());
    assert_eq!(recv(&mut ext).await.kind(), RequestKind::Shutdown);
    ext.send(ExtResponse::tool_result("done")).await.unwrap();
    assert_eq!(
        busy.await.unwrap().unwrap(),
        ExtResponse::tool_result("done")
    );
    assert_eq!(stop.await.unwrap().unwrap(), ExtResponse::default());
}

#[tokio::test(flavor = "current_thread")]
async fn requests_are_numbered_and_echoed_ids_are_accepted() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(2).build(io);
    assert!(!conn.echoes_correlation_ids());
    let a = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("a", "")));
    let b = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("b", "")));
    let (ra, rb) = (recv(&mut ext).await, recv(&mut ext).await);
    let (ia, ib) = (ra.correlation_id.unwrap(), rb.correlation_id.unwrap());
    assert_ne!(ia, ib);
    for (id, text) in [(ia, "a"), (ib, "b")] {
        let mut resp = ExtResponse::tool_result(text);
        resp.correlation_id = Some(id);
        ext.send(resp).await.unwrap();
    }
    // The ids are checked and stripped: callers see plain answers.
    assert_eq!(a.await.unwrap().unwrap(), ExtResponse::tool_result("a"));
    assert_eq!(b.await.unwrap().unwrap(), ExtResponse::tool_result("b"));
    assert!(conn.echoes_correlation_ids());
}

#[tokio::test(flavor = "current_thread")]
async fn a_skipped_answer_is_caught_by_its_correlation_id_when_pipelining() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_in_flight(2).build(io);
    let a = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("a", "")));
    let b = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("b", "")));
    let _ra = recv(&mut ext).await;
    let rb = recv(&mut ext).await;
    // A buggy extension skips a's answer and answers b: by order alone,
    // a would receive b's answer.
    let mut resp = ExtResponse::tool_result("answer to b");
    resp.correlation_id = rb.correlation_id;
    ext.send(resp).await.unwrap();
    for call in [a, b] {
        let err = call.await.unwrap().unwrap_err();
        assert!(matches!(err, ConnectionError::Mismatched { .. }), "{err:?}");
        assert!(err.is_protocol_violation());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_extension_that_echoed_ids_must_keep_sending_them() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::new(io);
    let a = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("a", "")));
    let ra = recv(&mut ext).await;
    let mut resp = ExtResponse::tool_result("a");
    resp.correlation_id = ra.correlation_id;
    ext.send(resp).await.unwrap();
    assert_eq!(a.await.unwrap().unwrap(), ExtResponse::tool_result("a"));

    let b = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("b", "")));
    recv(&mut ext).await;
    // An answer without an id could be a stray: it is refused.
    ext.send(ExtResponse::tool_result("b?")).await.unwrap();
    let err = b.await.unwrap().unwrap_err();
    assert!(
        matches!(err, ConnectionError::Mismatched { got: None, .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn load_shed_over_a_full_connection_sheds() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::new(io); // one slot
    let shed = tower::load_shed::LoadShed::new(conn.clone());
    let busy = tokio::spawn(shed.clone().oneshot(ExtRequest::tool_call("busy", "")));
    assert_eq!(recv(&mut ext).await.kind(), RequestKind::ToolCall);
    // The slot is owed an answer: the connection is not ready, so the
    // second call is shed at once and never sent.
    let err = shed
        .clone()
        .oneshot(ExtRequest::tool_call("more", ""))
        .await
        .unwrap_err();
    assert!(err.is::<tower::load_shed::error::Overloaded>(), "{err}");
    ext.send(ExtResponse::tool_result("done")).await.unwrap();
    assert_eq!(
        busy.await.unwrap().unwrap(),
        ExtResponse::tool_result("done")
    );
    // Answered: the slot is free and calls go through again.
    let again = tokio::spawn(shed.oneshot(ExtRequest::tool_call("again", "")));
    assert_eq!(recv(&mut ext).await.tool_name(), Some("again"));
    ext.send(ExtResponse::tool_result("ok")).await.unwrap();
    assert_eq!(
        again.await.unwrap().unwrap(),
        ExtResponse::tool_result("ok")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn poll_ready_takes_the_slot_and_a_clone_does_not_inherit_it() {
    let (io, _ext) = fake_pair();
    let mut conn = Connection::new(io); // one slot
    futures::future::poll_fn(|cx| conn.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(conn.in_flight(), 1);
    let mut clone = conn.clone();
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(
        clone.poll_ready(&mut cx).is_pending(),
        "the only slot is held"
    );
    drop(conn);
    assert!(
        clone.poll_ready(&mut cx).is_ready(),
        "dropping the holder frees it"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_unsolicited_answer_on_an_idle_connection_is_noticed_at_once() {
    let (io, mut ext) = fake_pair();
    // No stuck timer: nothing but the socket itself can wake the worker.
    let conn = Connection::new(io);
    let call = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("a", "")));
    recv(&mut ext).await;
    ext.send(ExtResponse::tool_result("a")).await.unwrap();
    assert_eq!(call.await.unwrap().unwrap(), ExtResponse::tool_result("a"));
    // Idle now; a stray answer arrives.
    ext.send(ExtResponse::tool_result("stray")).await.unwrap();
    let broken = tokio::time::timeout(Duration::from_secs(60), conn.broken())
        .await
        .expect("the idle connection never read the stray answer");
    assert!(
        matches!(broken, ConnectionError::Unsolicited { .. }),
        "{broken:?}"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_call_after_the_handshake_is_stuck_after_its_own_shorter_limit() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder()
        .stuck_after(Some(Duration::from_secs(1)))
        .stuck_after_handshake(Some(Duration::from_secs(30)))
        .build(io);
    // A handshake step, answered: its (long) limit armed the timer.
    let hello = tokio::spawn(conn.clone().oneshot(ExtRequest::hello("0.2")));
    recv(&mut ext).await;
    ext.send(ExtResponse::ready("0.2", "svc", vec![]))
        .await
        .unwrap();
    hello.await.unwrap().unwrap();
    // A call the extension never answers is stuck after 1 s, not 30 s.
    let started = tokio::time::Instant::now();
    let call = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("t", "")));
    recv(&mut ext).await;
    let broken = conn.broken().await;
    assert!(
        matches!(broken, ConnectionError::Stuck { .. }),
        "{broken:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stuck detected only after {:?}",
        started.elapsed()
    );
    assert!(call.await.unwrap().is_err());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_handshake_step_is_not_stuck_before_its_own_longer_limit() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder()
        .stuck_after(Some(Duration::from_secs(1)))
        .stuck_after_handshake(Some(Duration::from_secs(30)))
        .build(io);
    let hello = tokio::spawn(conn.clone().oneshot(ExtRequest::hello("0.2")));
    recv(&mut ext).await;
    // 10 s of silence: more than a call may take, less than a step.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!conn.is_broken());
    ext.send(ExtResponse::ready("0.2", "svc", vec![]))
        .await
        .unwrap();
    assert!(hello.await.unwrap().is_ok());
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_over_the_frame_limit_fails_alone_and_is_never_sent() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder().max_frame_len(1024).build(io);
    let err = conn
        .clone()
        .oneshot(ExtRequest::tool_call("echo", "x".repeat(2000)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectionError::RequestTooLarge { max: 1024, len } if len > 2000),
        "{err:?}"
    );
    assert!(err.to_string().contains("1024-byte frame limit"), "{err}");
    assert!(!conn.is_broken());
    // The next call goes out and is answered: nothing was written before.
    let next = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("echo", "ok")));
    assert_eq!(recv(&mut ext).await.tool_name(), Some("echo"));
    ext.send(ExtResponse::tool_result("ok")).await.unwrap();
    assert_eq!(next.await.unwrap().unwrap(), ExtResponse::tool_result("ok"));
}

#[tokio::test(flavor = "current_thread")]
async fn an_answer_over_the_frame_limit_fails_only_its_call() {
    let (io, mut ext) = fake_pair();
    let conn = Connection::builder()
        .max_frame_len(1024)
        .max_in_flight(2)
        .build(io);
    let big = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("big", "")));
    let small = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("small", "")));
    recv(&mut ext).await;
    recv(&mut ext).await;
    ext.send(ExtResponse::tool_result("y".repeat(5000)))
        .await
        .unwrap();
    ext.send(ExtResponse::tool_result("fine")).await.unwrap();
    let err = big.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, ConnectionError::UnusableAnswer(e) if e.to_string().contains("exceeds the 1024-byte limit")),
        "{err:?}"
    );
    assert_eq!(
        small.await.unwrap().unwrap(),
        ExtResponse::tool_result("fine")
    );
    assert!(!conn.is_broken());
}

#[tokio::test(flavor = "current_thread")]
async fn an_undecodable_answer_fails_only_its_call() {
    use tokio::io::AsyncWriteExt;
    let (io, mut ext) = fake_pair();
    let conn = Connection::new(io);
    let bad = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("bad", "")));
    recv(&mut ext).await;
    // tool_result (field 3) whose `result` string (field 1) is the byte
    // 0xFF: well framed, not UTF-8.
    ext.get_mut()
        .write_all(b"\x00\x00\x00\x05\x1a\x03\x0a\x01\xff")
        .await
        .unwrap();
    let err = bad.await.unwrap().unwrap_err();
    assert!(matches!(err, ConnectionError::UnusableAnswer(_)), "{err:?}");
    assert!(!conn.is_broken());
    let next = tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("next", "")));
    recv(&mut ext).await;
    ext.send(ExtResponse::tool_result("ok")).await.unwrap();
    assert_eq!(next.await.unwrap().unwrap(), ExtResponse::tool_result("ok"));
}

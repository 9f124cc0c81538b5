//! The router on its own: built from in-process services and fake
//! extensions, no process involved.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{fake_pair, FakeExt};
use exthost::client::ConnectionError;
use exthost::proto::{ExtRequest, ExtResponse};
use exthost::router::{Endpoint, Router, RoutingTable, ToolCall, Unavailable};
use exthost::stack::{ExtensionService, StackBuilder};
use exthost::status::{DownReason, ServiceState};
use exthost::{CallError, Tool};
use futures::{SinkExt, StreamExt};
use tokio::sync::oneshot;
use tower::{service_fn, BoxError, ServiceExt};

fn tool(name: &str) -> Tool {
    Tool::new(name, "a test tool", serde_json::json!({"type": "object"}))
}

/// A service that answers each tool call with `<service>:<tool>:<args>`.
fn answering(service: &'static str) -> ExtensionService {
    ExtensionService::new(service_fn(move |req: ExtRequest| async move {
        let call = req.as_tool_call().expect("a tool call");
        Ok::<_, BoxError>(ExtResponse::tool_result(format!(
            "{service}:{}:{}",
            call.name, call.args
        )))
    }))
}

fn router_with(services: &[(&Arc<Endpoint>, &[Tool])]) -> Router {
    let router = Router::new();
    router.install(RoutingTable::build(services.iter().copied()));
    router
}

async fn recv(ext: &mut FakeExt) -> ExtRequest {
    ext.next().await.expect("host closed").expect("bad frame")
}

#[tokio::test(flavor = "current_thread")]
async fn each_tool_goes_to_its_owner() {
    let a = Arc::new(Endpoint::ready("a", answering("a")));
    let b = Arc::new(Endpoint::ready("b", answering("b")));
    let router = router_with(&[(&a, &[tool("one")]), (&b, &[tool("two")])]);
    let one = router.clone().oneshot(ToolCall::new("one", "1")).await;
    let two = router.clone().oneshot(ToolCall::new("two", "2")).await;
    assert_eq!(one.unwrap(), "a:one:1");
    assert_eq!(two.unwrap(), "b:two:2");
    let err = router
        .oneshot(ToolCall::new("three", ""))
        .await
        .unwrap_err();
    assert!(matches!(&err, CallError::UnknownTool { tool } if tool == "three"));
    assert!(err.is_retry_safe());
}

#[tokio::test(flavor = "current_thread")]
async fn collisions_keep_the_first_service_in_name_order() {
    let a = Arc::new(Endpoint::ready("a", answering("a")));
    let b = Arc::new(Endpoint::ready("b", answering("b")));
    // Given in the other order: the table sorts by service name.
    let router = router_with(&[(&b, &[tool("same")]), (&a, &[tool("same")])]);
    assert_eq!(
        router.oneshot(ToolCall::new("same", "x")).await.unwrap(),
        "a:same:x"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn installing_a_table_swaps_routes_for_every_clone() {
    let a = Arc::new(Endpoint::ready("a", answering("a")));
    let b = Arc::new(Endpoint::ready("b", answering("b")));
    let router = router_with(&[(&a, &[tool("t")])]);
    let clone = router.clone();
    router.install(RoutingTable::build([(&b, &[tool("t")][..])]));
    assert_eq!(clone.oneshot(ToolCall::new("t", "")).await.unwrap(), "b:t:");
}

#[tokio::test(flavor = "current_thread")]
async fn a_service_that_is_down_fails_at_once_with_its_state_and_reason() {
    let down = Arc::new(Endpoint::new("down"));
    let router = router_with(&[(&down, &[tool("t")])]);
    let err = router
        .clone()
        .oneshot(ToolCall::new("t", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Unavailable {
                cause: Unavailable::NotReady {
                    state: ServiceState::Starting,
                    reason: None
                },
                delivered: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retry_safe());

    down.set_unavailable(Unavailable::NotReady {
        state: ServiceState::Failed,
        reason: Some(DownReason::ConnectionLost(ConnectionError::Closed)),
    });
    let err = router.oneshot(ToolCall::new("t", "")).await.unwrap_err();
    // The typed cause is reachable through `source()`.
    let cause = std::error::Error::source(&err).expect("a source");
    let cause = cause.downcast_ref::<Unavailable>().expect("an Unavailable");
    assert!(matches!(
        cause,
        Unavailable::NotReady {
            state: ServiceState::Failed,
            reason: Some(DownReason::ConnectionLost(ConnectionError::Closed))
        }
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn an_error_answer_is_an_extension_error() {
    let svc = ExtensionService::new(service_fn(|_req: ExtRequest| async {
        Ok::<_, BoxError>(ExtResponse::error("no such file"))
    }));
    let e = Arc::new(Endpoint::ready("e", svc));
    let router = router_with(&[(&e, &[tool("t")])]);
    let err = router.oneshot(ToolCall::new("t", "")).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Extension { service, message } if service == "e" && message == "no such file"),
        "{err:?}"
    );
    assert!(!err.is_retry_safe());
}

#[tokio::test(flavor = "current_thread")]
async fn a_busy_owner_never_delays_another_service() {
    // `slow`'s only call never finishes; `fast` must answer regardless.
    let (_hold, never) = oneshot::channel::<()>();
    let never = Arc::new(tokio::sync::Mutex::new(Some(never)));
    let slow_svc = ExtensionService::new(service_fn(move |_req: ExtRequest| {
        let never = never.clone();
        async move {
            let rx = never.lock().await.take();
            if let Some(rx) = rx {
                let _ = rx.await;
            }
            Ok::<_, BoxError>(ExtResponse::tool_result("late"))
        }
    }));
    let slow = Arc::new(Endpoint::ready("slow", slow_svc));
    let fast = Arc::new(Endpoint::ready("fast", answering("fast")));
    let router = router_with(&[(&slow, &[tool("s")]), (&fast, &[tool("f")])]);
    let stuck = tokio::spawn(router.clone().oneshot(ToolCall::new("s", "")));
    tokio::task::yield_now().await;
    assert_eq!(
        router.oneshot(ToolCall::new("f", "")).await.unwrap(),
        "fast:f:"
    );
    assert!(!stuck.is_finished());
    stuck.abort();
}

/// An endpoint over a fake extension with one in-flight slot.
fn one_slot(
    name: &'static str,
    timeout: Duration,
    max_queued: Option<usize>,
) -> (Arc<Endpoint>, FakeExt) {
    let (io, ext) = fake_pair();
    let svc = StackBuilder::new(name).timeout(timeout).build(io);
    (
        Arc::new(Endpoint::ready(name, svc).with_max_queued(max_queued)),
        ext,
    )
}

#[tokio::test(flavor = "current_thread")]
async fn calls_beyond_max_queued_fail_at_once_as_overloaded_and_are_never_sent() {
    let (ep, mut ext) = one_slot("q", Duration::from_secs(60), Some(1));
    let router = router_with(&[(&ep, &[tool("t")])]);
    let first = tokio::spawn(router.clone().oneshot(ToolCall::new("t", "first")));
    assert_eq!(recv(&mut ext).await.as_tool_call().unwrap().args, "first");
    // The slot is owed an answer: the second call waits (1 allowed)...
    let second = tokio::spawn(router.clone().oneshot(ToolCall::new("t", "second")));
    while ep.waiting() < 1 {
        tokio::task::yield_now().await;
    }
    // ...and the third finds the queue full.
    let err = router
        .clone()
        .oneshot(ToolCall::new("t", "third"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Overloaded { service, waiting: 1 } if service == "q"),
        "{err:?}"
    );
    assert!(err.is_retry_safe());
    // The queue drains in order; the third was never sent.
    ext.send(ExtResponse::tool_result("1")).await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), "1");
    assert_eq!(recv(&mut ext).await.as_tool_call().unwrap().args, "second");
    ext.send(ExtResponse::tool_result("2")).await.unwrap();
    assert_eq!(second.await.unwrap().unwrap(), "2");
    assert_eq!(ep.waiting(), 0);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_call_timeout_covers_the_wait_for_a_slot() {
    let (ep, mut ext) = one_slot("t", Duration::from_secs(2), None);
    let router = router_with(&[(&ep, &[tool("t")])]);
    let first = tokio::spawn(router.clone().oneshot(ToolCall::new("t", "first")));
    recv(&mut ext).await;
    let started = tokio::time::Instant::now();
    let err = router
        .oneshot(ToolCall::new("t", "second"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::Timeout { after, .. } if *after == Duration::from_secs(2)),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    // The first is still owed its answer and gets it.
    ext.send(ExtResponse::tool_result("late")).await.unwrap();
    assert!(matches!(
        first.await.unwrap(),
        Err(CallError::Timeout { .. }) | Ok(_)
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn load_shedding_inside_the_stack_sheds_when_the_slot_is_owed() {
    let (io, mut ext) = fake_pair();
    let svc = StackBuilder::new("shed")
        .layer(tower::load_shed::LoadShedLayer::new())
        .build(io);
    let ep = Arc::new(Endpoint::ready("shed", svc));
    let router = router_with(&[(&ep, &[tool("t")])]);
    let first = tokio::spawn(router.clone().oneshot(ToolCall::new("t", "first")));
    recv(&mut ext).await;
    let err = router
        .clone()
        .oneshot(ToolCall::new("t", "second"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Overloaded { waiting: 0, .. }),
        "{err:?}"
    );
    assert!(err.is_retry_safe());
    ext.send(ExtResponse::tool_result("ok")).await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), "ok");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_user_layers_own_timeout_is_a_layer_error_not_the_call_timeout() {
    let (io, mut ext) = fake_pair();
    // The user's 1 s timeout fires inside the stack's 30 s one.
    let svc = StackBuilder::new("lay")
        .timeout(Duration::from_secs(30))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(1)))
        .build(io);
    let ep = Arc::new(Endpoint::ready("lay", svc));
    let router = router_with(&[(&ep, &[tool("t")])]);
    let call = tokio::spawn(router.oneshot(ToolCall::new("t", "")));
    recv(&mut ext).await;
    let err = call.await.unwrap().unwrap_err();
    let CallError::Layer { service, source } = &err else {
        panic!("not a layer error: {err:?}");
    };
    assert_eq!(service, "lay");
    assert!(source.is::<tower::timeout::error::Elapsed>(), "{source}");
    assert!(!err.is_retry_safe());
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_failure_mid_call_is_unavailable_and_delivered() {
    let (io, ext) = fake_pair();
    let svc = StackBuilder::new("gone").build(io);
    let ep = Arc::new(Endpoint::ready("gone", svc));
    let router = router_with(&[(&ep, &[tool("t")])]);
    let call = tokio::spawn(router.clone().oneshot(ToolCall::new("t", "")));
    let mut ext = ext;
    recv(&mut ext).await;
    drop(ext);
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Unavailable {
                cause: Unavailable::Connection(ConnectionError::Closed),
                delivered: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.is_retry_safe());
    // The next call finds the connection broken before sending: not delivered.
    let err = router.oneshot(ToolCall::new("t", "")).await.unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Unavailable {
                delivered: false,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn an_endpoint_says_whether_it_is_ready() {
    let ep = Endpoint::new("svc").with_max_queued(Some(3));
    assert!(!ep.is_ready());
    assert!(format!("{ep:?}").contains("ready: false"), "{ep:?}");
    ep.set_ready(answering("svc"));
    assert!(ep.is_ready());
    assert!(format!("{ep:?}").contains("ready: true"), "{ep:?}");
    ep.set_unavailable(Unavailable::ShuttingDown);
    assert!(!ep.is_ready());
    assert!(matches!(ep.service(), Err(Unavailable::ShuttingDown)));
}

#[test]
fn the_table_lists_tools_with_owners_and_conflicts_between_services_only() {
    let a = Arc::new(Endpoint::new("a"));
    let b = Arc::new(Endpoint::new("b"));
    // `a` declares `twice` twice (its own duplicate, not a conflict: left
    // out with both definitions); both declare `same`.
    let a_tools = [tool("same"), tool("twice"), tool("twice")];
    let b_tools = [tool("same"), tool("other")];
    let table = RoutingTable::build([(&b, &b_tools[..]), (&a, &a_tools[..])]);
    let listed: Vec<_> = table
        .tools()
        .iter()
        .map(|t| (t.service.as_str(), t.tool.name.as_str()))
        .collect();
    assert_eq!(listed, [("a", "same"), ("b", "other")]);
    assert_eq!(table.left_out().len(), 1, "{:?}", table.left_out());
    assert_eq!(table.left_out()[0].tool, "twice");
    assert_eq!(table.conflicts().len(), 1, "{:?}", table.conflicts());
    let c = &table.conflicts()[0];
    assert_eq!(
        (c.tool.as_str(), c.kept.as_str(), c.dropped.as_str()),
        ("same", "a", "b")
    );
    assert_eq!(table.route("other").unwrap().name(), "b");
    assert!(!table.is_settling() && !table.is_closing());
}

#[tokio::test(flavor = "current_thread")]
async fn while_the_table_is_settling_an_unknown_tool_waits_for_the_next_table() {
    let late = Arc::new(Endpoint::ready("late", answering("late")));
    let router = Router::new();
    router.install(RoutingTable::build(std::iter::empty()).settling(true));
    assert!(router.table().is_settling());
    let call = tokio::spawn(router.clone().oneshot(ToolCall::new("t", "x")));
    tokio::task::yield_now().await;
    assert!(
        !call.is_finished(),
        "the call must wait while services start"
    );
    router.install(RoutingTable::build([(&late, &[tool("t")][..])]).settling(true));
    assert_eq!(call.await.unwrap().unwrap(), "late:t:x");
    // Once settled, a tool nobody offers is unknown at once.
    router.install(RoutingTable::build([(&late, &[tool("t")][..])]));
    let err = router
        .clone()
        .oneshot(ToolCall::new("u", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::UnknownTool { .. }), "{err:?}");
    // And while closing, it is unavailable: shutting down.
    router.install(RoutingTable::build(std::iter::empty()).closing(true));
    let err = router.oneshot(ToolCall::new("u", "")).await.unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Unavailable {
                cause: Unavailable::ShuttingDown,
                delivered: false,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn names_llm_apis_refuse_are_left_out_and_reported() {
    use exthost::registry::{LeftOutReason, ToolNames};
    let ep = Arc::new(Endpoint::new("svc"));
    let long = "x".repeat(65);
    let tools = [
        tool("fine"),
        tool(""),
        tool("new\nline"),
        tool(&long),
        tool("has space"),
        tool("dot.ted"),
        tool("café"),
        tool("fine"),
        tool("rtl\u{202E}lfe"),
    ];
    let table = RoutingTable::build([(&ep, &tools[..])]);
    let advertised: Vec<_> = table.tools().iter().map(|t| t.tool.name.as_str()).collect();
    // `fine` is declared twice: every definition is left out, told once.
    assert!(advertised.is_empty(), "{advertised:?}");
    let reasons: Vec<_> = table
        .left_out()
        .iter()
        .map(|l| (l.tool.as_str(), l.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("fine", LeftOutReason::DeclaredTwice),
            ("", LeftOutReason::Empty),
            ("new\nline", LeftOutReason::ControlCharacters),
            (long.as_str(), LeftOutReason::NotPortable),
            ("has space", LeftOutReason::NotPortable),
            ("dot.ted", LeftOutReason::NotPortable),
            ("café", LeftOutReason::NotPortable),
            ("rtl\u{202E}lfe", LeftOutReason::ControlCharacters),
        ]
    );
    // The reason names the tool escaped: a newline never reaches a log raw.
    let line = table.left_out()[2].to_string();
    assert!(
        line.contains(r#""new\nline""#) && !line.contains('\n'),
        "{line}"
    );
    // `tool_names = "any"` keeps what models that accept them can use.
    let any = RoutingTable::build_with([(&ep, &tools[..])], ToolNames::Any);
    let advertised: Vec<_> = any.tools().iter().map(|t| t.tool.name.as_str()).collect();
    assert_eq!(advertised, [long.as_str(), "has space", "dot.ted", "café"]);
    assert_eq!(
        any.left_out().len(),
        4,
        "empty, control and format characters, twice"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_request_over_the_frame_limit_is_refused_at_once_even_behind_a_busy_slot() {
    let (ep, mut ext) = one_slot("busy", Duration::from_secs(1), None);
    let router = router_with(&[(&ep, &[tool("t")])]);
    let first = tokio::spawn(router.clone().oneshot(ToolCall::new("t", "first")));
    recv(&mut ext).await;
    // The only slot is owed an answer; the oversized call does not wait for
    // it (it would time out, not retry-safe): it is refused at once.
    let started = tokio::time::Instant::now();
    let huge = "x".repeat(exthost::codec::MAX_FRAME_LEN);
    let err = router.oneshot(ToolCall::new("t", huge)).await.unwrap_err();
    assert!(matches!(err, CallError::TooLarge { .. }), "{err:?}");
    assert!(err.is_retry_safe());
    assert_eq!(started.elapsed(), Duration::ZERO);
    ext.send(ExtResponse::tool_result("1")).await.unwrap();
    assert_eq!(first.await.unwrap().unwrap(), "1");
}

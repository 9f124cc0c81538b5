//! One bad message fails one call: requests and answers over the frame
//! limit, both sides.

mod common;

use common::{manager, mock, temp_dir};
use exthost::manager::ServiceState;
use exthost::proto::{ExtRequest, ExtResponse};
use exthost::router::ToolCall;
use exthost::server::{Call, Extension};
use exthost::stack::StackBuilder;
use exthost::{CallError, Tool};
use tower::{service_fn, ServiceExt};

const LIMIT: usize = 16 * 1024 * 1024;

#[tokio::test]
async fn a_request_over_the_limit_fails_alone_while_another_call_is_in_flight() {
    let dir = temp_dir();
    let m = manager(
        dir.path(),
        vec![("alpha", mock("a_").with_max_in_flight(2))],
    );
    m.start().await;
    let pid = m.status("alpha").unwrap().pid;
    let sleep = tokio::spawn(
        m.router()
            .oneshot(ToolCall::new("a_sleep", r#"{"ms": 200}"#)),
    );
    let huge = "x".repeat(LIMIT);
    let err = m
        .router()
        .oneshot(ToolCall::new("a_echo", huge))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CallError::TooLarge { service, len, max } if service == "alpha" && *max == LIMIT && *len > LIMIT),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("16777216-byte frame limit"),
        "{err}"
    );
    assert!(err.is_retry_safe(), "nothing was sent");
    assert_eq!(sleep.await.unwrap().unwrap(), "slept 200 ms");
    let status = m.status("alpha").unwrap();
    assert_eq!(
        (status.state, status.pid, status.restarts),
        (ServiceState::Ready, pid, 0)
    );
    assert_eq!(
        m.router()
            .oneshot(ToolCall::new("a_echo", "after"))
            .await
            .unwrap(),
        "after"
    );
    m.shutdown_all().await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_extension_answer_over_the_limit_becomes_an_error_answer_for_that_call() {
    let (host_io, ext_io) = tokio::io::duplex(64 * 1024);
    let ext = Extension::new("big").tool(Tool::new("big", "too big", serde_json::json!({})));
    let server = tokio::spawn(ext.serve_connection(
        ext_io,
        service_fn(|call: Call| async move {
            match call {
                Call::Tool(t) if t.args == "huge" => {
                    Ok::<_, std::convert::Infallible>("y".repeat(LIMIT))
                }
                Call::Tool(t) => Ok(t.args),
                _ => Ok(String::new()),
            }
        }),
    ));
    let svc = StackBuilder::new("big").max_in_flight(2).build(host_io);
    let resp = svc
        .clone()
        .oneshot(ExtRequest::tool_call("big", "huge"))
        .await
        .unwrap();
    let message = resp.error_message().expect("an error answer");
    assert!(
        message.contains("exceeds the 16777216-byte frame limit"),
        "{message}"
    );
    let next = svc
        .oneshot(ExtRequest::tool_call("big", "small"))
        .await
        .unwrap();
    assert_eq!(next, ExtResponse::tool_result("small"));
    common::abort(server).await;
}

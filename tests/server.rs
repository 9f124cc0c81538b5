//! The extension side: protocol answers, concurrency, ordering.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
mod common;

use std::time::Duration;

use common::join;
use exthost::client::Connection;
use exthost::proto::{ExtRequest, ExtResponse};
use exthost::server::{Call, Extension};
use exthost::Tool;
use serde_json::json;
use tokio::sync::Notify;
use tower::{service_fn, ServiceExt};

fn ext() -> Extension {
    Extension::new("test").tools([
        Tool::new("first", "waits for second", json!({})),
        Tool::new("second", "releases first", json!({})),
    ])
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn pipelined_requests_run_concurrently_and_are_answered_in_order() {
    let (host, ext_io) = tokio::io::duplex(4096);
    let release = Arc::new(Notify::new());
    let handler = {
        let release = release.clone();
        service_fn(move |call: Call| {
            let release = release.clone();
            async move {
                match call {
                    // `first` can only finish once `second` has started: a
                    // server that ran them one at a time would deadlock.
                    Call::Tool(t) if t.name == "first" => {
                        release.notified().await;
                        Ok::<_, String>("first done".to_owned())
                    }
                    Call::Tool(_) => {
                        release.notify_one();
                        Ok("second done".to_owned())
                    }
                    _ => Ok(String::new()),
                }
            }
        })
    };
    let server = tokio::spawn(ext().serve_connection(ext_io, handler));
    let conn = Connection::builder().max_in_flight(2).build(host);
    let both = async {
        tokio::join!(
            conn.clone().oneshot(ExtRequest::tool_call("first", "")),
            conn.clone().oneshot(ExtRequest::tool_call("second", "")),
        )
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("the server ran pipelined requests one at a time");
    assert_eq!(a.unwrap(), ExtResponse::tool_result("first done"));
    assert_eq!(b.unwrap(), ExtResponse::tool_result("second done"));
    drop(conn);
    join(server).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn undeclared_tools_and_queries_are_refused_without_reaching_the_service() {
    let (host, ext_io) = tokio::io::duplex(4096);
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        service_fn(move |_call: Call| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, String>(String::new()) }
        })
    };
    let server = tokio::spawn(ext().serve_connection(ext_io, handler));
    let conn = Connection::new(host);
    let resp = conn
        .clone()
        .oneshot(ExtRequest::tool_call("missing", "{}"))
        .await
        .unwrap();
    assert_eq!(resp.error_message(), Some("unknown tool: missing"));
    let resp = conn
        .clone()
        .oneshot(ExtRequest::service_query("q"))
        .await
        .unwrap();
    assert_eq!(
        resp.error_message(),
        Some("service `test` does not answer service queries")
    );
    let resp = conn
        .clone()
        .oneshot(ExtRequest::get_schema())
        .await
        .unwrap();
    assert_eq!(resp, ExtResponse::schema_result("{}"));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    drop(conn);
    join(server).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn service_errors_become_error_responses_with_their_text() {
    let (host, ext_io) = tokio::io::duplex(4096);
    let handler = service_fn(|call: Call| async move {
        match call {
            Call::Configure(c) if c.contains("bad") => Err("configuration rejected".to_owned()),
            Call::Configure(_) => Ok(String::new()),
            _ => Err("tool broke".to_owned()),
        }
    });
    let server = tokio::spawn(ext().serve_connection(ext_io, handler));
    let conn = Connection::new(host);
    let ok = conn
        .clone()
        .oneshot(ExtRequest::configure("{}"))
        .await
        .unwrap();
    assert_eq!(ok, ExtResponse::configured());
    let bad = conn
        .clone()
        .oneshot(ExtRequest::configure(r#"{"bad":1}"#))
        .await
        .unwrap();
    assert_eq!(bad.error_message(), Some("configuration rejected"));
    let broke = conn
        .clone()
        .oneshot(ExtRequest::tool_call("first", ""))
        .await
        .unwrap();
    assert_eq!(broke.error_message(), Some("tool broke"));
    drop(conn);
    join(server).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn answers_echo_the_requests_correlation_id() {
    use futures::{SinkExt, StreamExt};
    let (host, ext_io) = tokio::io::duplex(4096);
    let handler = service_fn(|call: Call| async move {
        match call {
            Call::Tool(t) => Ok::<_, String>(t.args),
            _ => Ok(String::new()),
        }
    });
    let server = tokio::spawn(ext().serve_connection(ext_io, handler));
    let mut framed = tokio_util::codec::Framed::new(host, exthost::codec::ClientCodec::new());
    for (id, req) in [
        (Some(77), ExtRequest::tool_call("first", "x")),
        (Some(78), ExtRequest::tool_call("missing", "x")),
        (None, ExtRequest::get_schema()),
    ] {
        let mut req = req;
        req.correlation_id = id;
        framed.send(req).await.unwrap();
        let resp = framed.next().await.unwrap().unwrap();
        assert_eq!(resp.correlation_id, id, "{resp:?}");
    }
    drop(framed);
    join(server).await.unwrap();
}

//! The connector's handshake over an already connected stream: each step is
//! bounded by `handshake_timeout` alone, never by `call_timeout`.

mod common;

use std::time::Duration;

use common::{fake_pair, FakeExt};
use exthost::config::ServiceConfig;
use exthost::connector::Connector;
use exthost::handshake::{HandshakeError, Step};
use exthost::process::Paths;
use exthost::proto::{Capability, ExtRequest, ExtResponse, RequestKind, PROTOCOL_VERSION};
use exthost::StartError;
use futures::{SinkExt, StreamExt};
use tokio::task::JoinHandle;

async fn recv(ext: &mut FakeExt) -> ExtRequest {
    ext.next().await.expect("host closed").expect("bad frame")
}

/// Plays an extension that waits `delay` (on the paused clock) before
/// answering `hello`, then answers the rest at once.
fn slow_hello(mut ext: FakeExt, delay: Duration) -> JoinHandle<FakeExt> {
    tokio::spawn(async move {
        assert_eq!(recv(&mut ext).await.kind(), RequestKind::Hello);
        tokio::time::sleep(delay).await;
        let ready = ExtResponse::ready(PROTOCOL_VERSION, "slow", vec![Capability::tools(["t"])]);
        if ext.send(ready).await.is_err() {
            return ext; // the host gave up
        }
        if let Some(Ok(req)) = ext.next().await {
            assert_eq!(req.kind(), RequestKind::Configure);
            ext.send(ExtResponse::configured()).await.unwrap();
            assert_eq!(recv(&mut ext).await.kind(), RequestKind::RegisterTools);
            let tool = exthost::Tool::new("t", "a tool", serde_json::json!({"type": "object"}));
            ext.send(ExtResponse::tool_schemas(vec![tool.to_def()]))
                .await
                .unwrap();
        }
        ext
    })
}

fn config() -> ServiceConfig {
    ServiceConfig::command("/unused")
        .with_call_timeout(Duration::from_millis(100))
        .with_handshake_timeout(Duration::from_secs(10))
}

fn connector() -> Connector {
    Connector::new(Paths::under("/nonexistent", "/nonexistent/d.sock"))
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_handshake_step_slower_than_the_call_timeout_succeeds() {
    let (io, ext) = fake_pair();
    let ext = slow_hello(ext, Duration::from_secs(1));
    let connected = connector()
        .connect("slow", &config(), io)
        .await
        .expect("a 1 s step is within the 10 s handshake timeout");
    assert_eq!(connected.info.tools[0].name, "t");
    ext.await.unwrap();
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_step_over_the_handshake_timeout_fails_naming_that_limit() {
    let (io, ext) = fake_pair();
    let ext = slow_hello(ext, Duration::from_secs(11));
    let started = tokio::time::Instant::now();
    let err = connector()
        .connect("slow", &config(), io)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StartError::Handshake {
                source: HandshakeError::Timeout {
                    step: Step::Hello,
                    after,
                },
                ..
            } if *after == Duration::from_secs(10)
        ),
        "{err:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    ext.await.unwrap();
}

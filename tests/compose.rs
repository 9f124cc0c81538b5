//! The connection composes with tower's own middleware.

mod common;

use common::{spawn_mock, temp_dir, WAIT};
use exthost::client::Connection;
use exthost::proto::{ExtRequest, ExtResponse};
use tower::load::Load;
use tower::reconnect::Reconnect;
use tower::{Service, ServiceExt};

#[tokio::test]
async fn reconnect_replaces_a_broken_connection() {
    let dir = temp_dir();
    let sock = dir.path().join("m.sock");
    type Connecting =
        std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Connection>> + Send>>;
    // Reconnect wants an Unpin future from its MakeService.
    let make = tower::service_fn(|path: std::path::PathBuf| -> Connecting {
        Box::pin(async move {
            Ok(Connection::new(
                tokio::net::UnixStream::connect(path).await?,
            ))
        })
    });
    let mut svc = Reconnect::new(make, sock.clone());

    let mut first = spawn_mock(&sock, &[]).await;
    let pid = |resp: ExtResponse| match resp.msg {
        Some(exthost::proto::ext_response::Msg::ToolResult(r)) => r.result.parse::<u32>().unwrap(),
        other => panic!("{other:?}"),
    };
    let resp = svc
        .ready()
        .await
        .unwrap()
        .call(ExtRequest::tool_call("pid", "{}"))
        .await
        .unwrap();
    assert_eq!(pid(resp), first.pid());

    // The extension dies and a new one takes its place at the same path.
    first.child.kill().unwrap();
    assert!(first.wait_exit(WAIT).await.is_some());
    let second = spawn_mock(&sock, &[]).await;

    // A call may still meet the old, broken connection once; after that
    // the broken connection reports itself in poll_ready and Reconnect
    // replaces it.
    let mut answers = Vec::new();
    for _ in 0..2 {
        match svc.ready().await {
            Ok(ready) => match ready.call(ExtRequest::tool_call("pid", "{}")).await {
                Ok(resp) => {
                    answers.push(pid(resp));
                    break;
                }
                Err(e) => assert!(e.to_string().contains("closed"), "{e}"),
            },
            Err(e) => panic!("reconnect failed: {e}"),
        }
    }
    assert_eq!(answers, [second.pid()]);
}

#[tokio::test(flavor = "current_thread")]
async fn load_is_the_number_of_answers_owed() {
    let (io, mut ext) = common::fake_pair();
    let conn = Connection::builder().max_in_flight(4).build(io);
    assert_eq!(conn.load(), 0);
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(conn.clone().oneshot(ExtRequest::tool_call("t", ""))))
        .collect();
    for _ in 0..3 {
        common::recv(&mut ext).await;
    }
    assert_eq!(conn.load(), 3);
    for c in calls {
        common::abort(c).await;
    }
}

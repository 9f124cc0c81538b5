//! The host's handshake against a fake extension that answers by hand.

mod common;

use std::time::Duration;

use common::{fake_pair, join, recv, FakeExt};
use exthost::client::Connection;
use exthost::handshake::{
    configure, handshake, hello, register_tools, HandshakeError, Step, ToolMismatch,
};
use exthost::proto::{Capability, ExtRequest, ExtResponse, RequestKind, ToolDef, PROTOCOL_VERSION};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::time::Instant;
use tower::timeout::{error::Elapsed, Timeout};

const STEP: Duration = Duration::from_secs(10);

async fn expect(ext: &mut FakeExt, kind: RequestKind) -> ExtRequest {
    let req = recv(ext).await;
    assert_eq!(req.kind(), kind, "{req:?}");
    req
}

/// Waits for the host to close the connection, having sent nothing more.
async fn until_closed(mut ext: FakeExt) -> FakeExt {
    if let Some(req) = ext.next().await {
        panic!("the host sent more: {req:?}");
    }
    ext
}

/// Answers `hello` with a `ready` that declares nothing, then waits for
/// `configure`.
async fn greet_until_configure(ext: &mut FakeExt) {
    expect(ext, RequestKind::Hello).await;
    ext.send(ExtResponse::ready(PROTOCOL_VERSION, "svc", vec![]))
        .await
        .unwrap();
    expect(ext, RequestKind::Configure).await;
}

fn def(name: &str, params: &[u8]) -> ToolDef {
    ToolDef {
        name: name.into(),
        description: format!("{name} tool"),
        parameters: params.to_vec(),
        strict: false,
    }
}

/// Runs the host's handshake against `script`, which plays the extension,
/// then closes the connection and waits for the script to end (a panic in
/// it fails the test).
async fn run<F, Fut>(script: F) -> Result<exthost::handshake::ExtensionInfo, HandshakeError>
where
    F: FnOnce(FakeExt) -> Fut,
    Fut: std::future::Future<Output = FakeExt> + Send + 'static,
{
    let (io, ext) = fake_pair();
    let mut conn = Connection::new(io);
    let ext = tokio::spawn(script(ext));
    let result = handshake(&mut conn, &json!({"greeting": "hi"}), STEP).await;
    drop(conn);
    join(ext).await;
    result
}

#[tokio::test(flavor = "current_thread")]
async fn handshake_sends_version_and_config_and_returns_the_tools() {
    let info = run(|mut ext| async move {
        let hello = expect(&mut ext, RequestKind::Hello).await;
        assert_eq!(hello.msg, ExtRequest::hello(PROTOCOL_VERSION).msg);
        ext.send(ExtResponse::ready(
            PROTOCOL_VERSION,
            "svc",
            vec![Capability::tools(["a", "b"]), Capability::query()],
        ))
        .await
        .unwrap();
        let configure = expect(&mut ext, RequestKind::Configure).await;
        assert_eq!(
            configure.msg,
            ExtRequest::configure(r#"{"greeting":"hi"}"#).msg
        );
        ext.send(ExtResponse::configured()).await.unwrap();
        expect(&mut ext, RequestKind::RegisterTools).await;
        ext.send(ExtResponse::tool_schemas(vec![
            def("a", br#"{"type":"object"}"#),
            def("b", b"{}"),
        ]))
        .await
        .unwrap();
        ext
    })
    .await
    .unwrap();
    assert_eq!(info.service, "svc");
    assert!(info.has_query());
    assert_eq!(info.tools.len(), 2);
    assert_eq!(info.tools[0].parameters, json!({"type": "object"}));
    assert_eq!(info.tools[1].description, "b tool");
    assert!(info.mismatches.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn error_reply_fails_with_the_extensions_message() {
    let err = run(|mut ext| async move {
        greet_until_configure(&mut ext).await;
        ext.send(ExtResponse::error("bad api key")).await.unwrap();
        ext
    })
    .await
    .unwrap_err();
    match err {
        HandshakeError::Refused { step, message } => {
            assert_eq!(step, Step::Configure);
            assert_eq!(message, "bad api key");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn wrong_reply_type_is_reported_by_name() {
    let err = run(|mut ext| async move {
        expect(&mut ext, RequestKind::Hello).await;
        ext.send(ExtResponse::error("no")).await.unwrap();
        ext
    })
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::Refused {
                step: Step::Hello,
                ..
            }
        ),
        "{err:?}"
    );

    // A `configured` to `hello` is a violation of the protocol itself: the
    // connection rejects it before the handshake sees it.
    let err = run(|mut ext| async move {
        expect(&mut ext, RequestKind::Hello).await;
        ext.send(ExtResponse::configured()).await.unwrap();
        ext
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("`configured` response to a `hello` request"),
        "{err}"
    );
    assert!(matches!(
        err,
        HandshakeError::Transport {
            step: Step::Hello,
            ..
        }
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn unexpected_reply_through_a_lenient_service_names_what_arrived() {
    // Over a service that does not check response kinds, the handshake
    // itself names the unexpected reply.
    let mut svc = tower::service_fn(|_req: ExtRequest| async {
        Ok::<_, std::convert::Infallible>(ExtResponse::tool_result("?"))
    });
    let err = handshake(&mut svc, &json!({}), STEP).await.unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::Unexpected {
                step: Step::Hello,
                got: exthost::proto::ResponseKind::ToolResult
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "unexpected `tool_result` response to `hello`"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn silent_extension_times_out_at_the_step_it_stalls() {
    let err = run(|mut ext| async move {
        greet_until_configure(&mut ext).await;
        // Never answers; holds the connection open until the host closes it.
        until_closed(ext).await
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, HandshakeError::Timeout { step: Step::Configure, after } if after == STEP),
        "{err:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn incompatible_version_names_both_versions() {
    let err = run(|mut ext| async move {
        expect(&mut ext, RequestKind::Hello).await;
        ext.send(ExtResponse::ready("0.9", "svc", vec![]))
            .await
            .unwrap();
        ext
    })
    .await
    .unwrap_err();
    assert!(matches!(err, HandshakeError::Version { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(PROTOCOL_VERSION) && text.contains("0.9"),
        "{text}"
    );
}

/// Plays an extension that declares `declared` and sends `schemas`.
async fn declares(
    declared: &'static [&'static str],
    schemas: Vec<ToolDef>,
) -> Result<exthost::handshake::ExtensionInfo, HandshakeError> {
    run(move |mut ext| async move {
        expect(&mut ext, RequestKind::Hello).await;
        let caps = vec![Capability::tools(declared.iter().copied())];
        ext.send(ExtResponse::ready(PROTOCOL_VERSION, "svc", caps))
            .await
            .unwrap();
        expect(&mut ext, RequestKind::Configure).await;
        ext.send(ExtResponse::configured()).await.unwrap();
        expect(&mut ext, RequestKind::RegisterTools).await;
        ext.send(ExtResponse::tool_schemas(schemas)).await.unwrap();
        ext
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn unparseable_schema_bytes_leave_out_that_tool_alone_naming_it() {
    let schemas = vec![def("ok", b"{}"), def("broken", b"{not json")];
    let info = declares(&["ok", "broken"], schemas).await.unwrap();
    assert_eq!(info.tools.len(), 1);
    assert_eq!(info.tools[0].name, "ok");
    assert_eq!(info.rejected.len(), 1);
    assert_eq!(info.rejected[0].name, "broken");
    assert!(
        matches!(info.rejected[0].problem, exthost::SchemaProblem::NotJson(_)),
        "{:?}",
        info.rejected
    );
}

#[tokio::test(flavor = "current_thread")]
async fn parameters_that_are_no_object_schema_leave_out_that_tool_alone() {
    let schemas = vec![
        def(
            "ok",
            br#"{"type":"object","properties":{"q":{"type":"string"}}}"#,
        ),
        def("untyped", b"{}"),
        def("string", br#"{"type":"string"}"#),
        def("null", b"null"),
        def("array", b"[1,2]"),
        def("boolean", b"true"),
        def("invalid", br#"{"type":"object","required":"q"}"#),
    ];
    let declared = &[
        "ok", "untyped", "string", "null", "array", "boolean", "invalid",
    ];
    let info = declares(declared, schemas).await.unwrap();
    let kept: Vec<_> = info.tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(kept, ["ok", "untyped"]);
    let rejected: Vec<_> = info
        .rejected
        .iter()
        .map(|r| (r.name.as_str(), r.problem.to_string()))
        .collect();
    assert_eq!(rejected.len(), 5, "{rejected:?}");
    assert!(
        rejected[0].1.contains("top-level `type` is \"string\""),
        "{rejected:?}"
    );
    assert!(rejected[1].1.contains("not null"), "{rejected:?}");
    assert!(rejected[2].1.contains("not an array"), "{rejected:?}");
    assert!(rejected[3].1.contains("not a boolean"), "{rejected:?}");
    assert!(
        rejected[4].1.contains("not a valid JSON Schema"),
        "{rejected:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn capabilities_and_schemas_that_disagree_are_reported() {
    let schemas = vec![def("a", b"{}"), def("extra", b"{}")];
    let info = declares(&["a", "ghost"], schemas).await.unwrap();
    assert_eq!(
        info.mismatches,
        vec![
            ToolMismatch::MissingSchema("ghost".into()),
            ToolMismatch::Undeclared("extra".into())
        ]
    );
}

/// Plays a correct extension that declares one tool, `t`, and answers the
/// `slow` step only after `delay` (on the test's clock), unless the host
/// gives up and closes the connection first.
async fn answer_slowly(mut ext: FakeExt, slow: RequestKind, delay: Duration) -> FakeExt {
    for (kind, resp) in [
        (
            RequestKind::Hello,
            ExtResponse::ready(PROTOCOL_VERSION, "svc", vec![Capability::tools(["t"])]),
        ),
        (RequestKind::Configure, ExtResponse::configured()),
        (
            RequestKind::RegisterTools,
            ExtResponse::tool_schemas(vec![def("t", b"{}")]),
        ),
    ] {
        expect(&mut ext, kind).await;
        if kind == slow {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                next = ext.next() => {
                    assert!(next.is_none(), "the host sent more: {next:?}");
                    return ext;
                }
            }
        }
        ext.send(resp).await.unwrap();
    }
    ext
}

#[tokio::test(flavor = "current_thread")]
async fn inner_service_timeout_is_a_transport_error_not_the_step_timeout() {
    tokio::time::pause();
    let (io, ext) = fake_pair();
    let ext = tokio::spawn(answer_slowly(
        ext,
        RequestKind::Configure,
        Duration::from_secs(5),
    ));
    // The service gives up after 1 s; the step would wait 10 s.
    let mut svc = Timeout::new(Connection::new(io), Duration::from_secs(1));
    let start = Instant::now();
    let err = handshake(&mut svc, &json!({}), STEP).await.unwrap_err();
    assert!(
        matches!(
            &err,
            HandshakeError::Transport { step: Step::Configure, source } if source.is::<Elapsed>()
        ),
        "{err:?}"
    );
    assert!(start.elapsed() < STEP, "{:?}", start.elapsed());
    drop(svc);
    join(ext).await;
}

#[tokio::test(flavor = "current_thread")]
async fn step_over_its_timeout_fails_as_timeout_naming_the_step_and_its_limit() {
    tokio::time::pause();
    let (io, ext) = fake_pair();
    let ext = tokio::spawn(answer_slowly(
        ext,
        RequestKind::RegisterTools,
        Duration::from_secs(30),
    ));
    // The service would wait 60 s; the step's own 10 s limit fires first.
    let mut svc = Timeout::new(Connection::new(io), Duration::from_secs(60));
    let err = handshake(&mut svc, &json!({}), STEP).await.unwrap_err();
    assert!(
        matches!(
            err,
            HandshakeError::Timeout { step: Step::RegisterTools, after } if after == STEP
        ),
        "{err:?}"
    );
    drop(svc);
    join(ext).await;
}

#[tokio::test(flavor = "current_thread")]
async fn slow_step_within_a_long_step_timeout_succeeds() {
    tokio::time::pause();
    let (io, ext) = fake_pair();
    let ext = tokio::spawn(answer_slowly(
        ext,
        RequestKind::Hello,
        Duration::from_secs(30),
    ));
    let mut conn = Connection::new(io);
    let start = Instant::now();
    let info = handshake(&mut conn, &json!({}), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(info.tools[0].name, "t");
    assert!(start.elapsed() >= Duration::from_secs(30));
    join(ext).await;
}

#[tokio::test(flavor = "current_thread")]
async fn each_step_runs_on_its_own_and_returns_its_answer() {
    let (io, mut ext) = fake_pair();
    let mut conn = Connection::new(io);

    let (ready, hello_req) = tokio::join!(hello(&mut conn, STEP), async {
        let req = expect(&mut ext, RequestKind::Hello).await;
        let caps = vec![Capability::tools(["a"]), Capability::query()];
        ext.send(ExtResponse::ready(PROTOCOL_VERSION, "svc", caps))
            .await
            .unwrap();
        req
    });
    assert_eq!(hello_req.msg, ExtRequest::hello(PROTOCOL_VERSION).msg);
    let ready = ready.unwrap();
    assert_eq!(ready.service, "svc");
    assert_eq!(ready.version, PROTOCOL_VERSION);
    assert!(ready.has_query());
    assert_eq!(ready.declared_tools().collect::<Vec<_>>(), ["a"]);
    ready.check_version().unwrap();

    let config = json!([1]);
    let (configured, configure_req) = tokio::join!(configure(&mut conn, &config, STEP), async {
        let req = expect(&mut ext, RequestKind::Configure).await;
        ext.send(ExtResponse::configured()).await.unwrap();
        req
    });
    configured.unwrap();
    assert_eq!(configure_req.msg, ExtRequest::configure("[1]").msg);

    // The schemas come back as sent, even one that is not JSON.
    let (defs, _) = tokio::join!(register_tools(&mut conn, STEP), async {
        expect(&mut ext, RequestKind::RegisterTools).await;
        ext.send(ExtResponse::tool_schemas(vec![def("a", b"{not json")]))
            .await
            .unwrap();
    });
    assert_eq!(defs.unwrap(), vec![def("a", b"{not json")]);
}

#[tokio::test(flavor = "current_thread")]
async fn hello_returns_any_version_and_check_version_refuses_an_incompatible_one() {
    let (io, mut ext) = fake_pair();
    let mut conn = Connection::new(io);
    let (ready, ()) = tokio::join!(hello(&mut conn, STEP), async {
        expect(&mut ext, RequestKind::Hello).await;
        ext.send(ExtResponse::ready("0.9", "svc", vec![]))
            .await
            .unwrap();
    });
    let ready = ready.unwrap();
    assert_eq!(ready.version, "0.9");
    assert!(
        matches!(ready.check_version(), Err(HandshakeError::Version { theirs, .. }) if theirs == "0.9")
    );
}

//! MCP servers as extensions: one MCP client session as a
//! `tower::Service<ExtRequest>`, through the official SDK, [`rmcp`].
//!
//! An [`McpConnection`] speaks the Model Context Protocol to one server,
//! over the server's stdin and stdout ([`McpConnection::stdio`]) or over
//! Streamable HTTP ([`McpConnection::http`]), and serves the same requests
//! as a native [`Connection`](crate::client::Connection), so the same
//! stack (tracing, deadline, your layers), router and supervisor run both:
//!
//! - `tool_call` becomes `tools/call`. Its `args` must be a JSON object
//!   (empty means `{}`), else the call fails with [`BadArguments`] and
//!   nothing is sent. The answer is a `tool_result` whose text is the MCP
//!   `CallToolResult` as JSON (content blocks and `structuredContent`;
//!   the router reads it into a [`ToolOutput`](crate::ToolOutput)); a
//!   result with `isError: true` is an `error` answer carrying its text.
//! - `register_tools` becomes `tools/list`, every page.
//! - Every other request is answered with an `error`: MCP has no
//!   `service_query`, schema or `configure`.
//!
//! Requests are matched to answers by JSON-RPC id, so up to
//! `max_in_flight` (16 by default for MCP services) run at once, and a
//! call whose caller gives up (its deadline passed, its future dropped)
//! frees its slot at once: rmcp sends `notifications/cancelled` for it.
//!
//! The session's end (a crashed or closed server, an HTTP session that
//! failed) is seen at once: [`broken`](McpConnection::broken) resolves, and
//! every call after it fails with [`ConnectionError::Closed`], which the
//! router reports as `unavailable`.
//!
//! Behind the `mcp` cargo feature (on by default).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, CancelledNotificationParam, ClientCapabilities,
    ClientConfig, ClientRequest, Implementation, ProgressNotificationParam, ProgressToken,
    ProtocolVersion, ServerResult,
};
use rmcp::service::PeerRequestOptions;
use rmcp::service::{NotificationContext, RunningServiceCancellationToken};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, Peer, RoleClient, ServiceExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::{BoxError, Service};

mod sanitize;

use crate::client::ConnectionError;
use crate::proto::{ext_request, ExtRequest, ExtResponse};
use crate::tool::{BadArguments, RejectedTool, Tool};

/// Why an MCP session could not be opened or listed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum McpError {
    /// The `initialize` handshake failed.
    #[error("MCP initialize failed: {}", describe_init(.0))]
    Initialize(#[source] Box<rmcp::service::ClientInitializeError>),
    /// `tools/list` failed.
    #[error("MCP tools/list failed: {0}")]
    ListTools(#[source] rmcp::ServiceError),
    /// The server did not finish a step in time.
    #[error("no answer to MCP `{step}` within {after:?}")]
    Timeout {
        /// `initialize` or `tools/list`.
        step: &'static str,
        /// The time allowed.
        after: Duration,
    },
    /// A header in `headers` is not a valid HTTP header.
    #[error("header `{name}` is not a valid HTTP header: {problem}")]
    BadHeader {
        /// The header's name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// One MCP client session, as a `tower::Service<ExtRequest>`; see the
/// [module docs](self).
///
/// Clones share the session; each clone takes its own in-flight slot in
/// `poll_ready` (a fresh clone holds none), like
/// [`Connection`](crate::client::Connection).
pub struct McpConnection {
    peer: Peer<RoleClient>,
    shared: Arc<Shared>,
    slots: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

struct Shared {
    /// Cancels the rmcp service loop, which closes the transport.
    cancel: Mutex<Option<RunningServiceCancellationToken>>,
    /// True once the session has ended, for whatever reason.
    ended: watch::Receiver<bool>,
    /// Bumped at each `notifications/tools/list_changed`.
    tools_changed: watch::Receiver<u64>,
    server: String,
    version: String,
    /// Where the progress of calls in flight goes, by progress token.
    progress: Progress,
    /// Tools taken out of `tools/list` answers because rmcp could not read
    /// them, until collected.
    rejected: sanitize::Rejected,
}

/// Progress sinks by the progress token of the upstream request.
type Progress = Arc<Mutex<HashMap<ProgressToken, ProgressSink>>>;

impl Clone for McpConnection {
    fn clone(&self) -> Self {
        McpConnection {
            peer: self.peer.clone(),
            shared: self.shared.clone(),
            slots: self.slots.clone(),
            permit: None,
        }
    }
}

impl fmt::Debug for McpConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpConnection")
            .field("server", &self.shared.server)
            .field("ended", &*self.shared.ended.borrow())
            .finish_non_exhaustive()
    }
}

/// exthost's side of the session: names the client and counts
/// `notifications/tools/list_changed`.
struct Handler {
    tools_changed: watch::Sender<u64>,
    progress: Progress,
}

impl ClientHandler for Handler {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        self.tools_changed.send_modify(|n| *n += 1);
        std::future::ready(())
    }

    fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        let sink = self
            .progress
            .lock()
            .expect("lock poisoned")
            .get(&params.progress_token)
            .cloned();
        if let Some(sink) = sink {
            (sink.0)(CallProgress {
                progress: params.progress,
                total: params.total,
                message: params.message,
            });
        }
        std::future::ready(())
    }

    fn get_info(&self) -> ClientConfig {
        // The `initialize` handshake of the newest version that has one: a
        // server on an older version answers with its own, and one that
        // knows only the older handshake never costs a discovery timeout.
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("exthost", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }
}

impl McpConnection {
    /// Opens a session over a server's stdout and stdin (a child spawned
    /// with both piped): runs `initialize`. Closing the session closes
    /// `stdin`.
    ///
    /// # Errors
    ///
    /// [`McpError::Initialize`].
    pub async fn stdio<R, W>(stdout: R, stdin: W, max_in_flight: usize) -> Result<Self, McpError>
    where
        R: tokio::io::AsyncRead + Send + Unpin + 'static,
        W: tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let rejected = sanitize::Rejected::default();
        let stdout = sanitize::Sanitize::new(stdout, rejected.clone());
        Self::open((stdout, stdin), max_in_flight, rejected).await
    }

    /// Opens a session with the Streamable HTTP endpoint `url`, sending
    /// `headers` with every request: runs `initialize`. Closing the
    /// session ends it on the server (`DELETE`).
    ///
    /// # Errors
    ///
    /// [`McpError::BadHeader`] for a header that is not valid HTTP;
    /// [`McpError::Initialize`] when the server cannot be reached or
    /// refuses (a 401 says so).
    pub async fn http(
        url: &str,
        headers: &std::collections::BTreeMap<String, String>,
        max_in_flight: usize,
    ) -> Result<Self, McpError> {
        install_crypto_provider();
        let mut custom = HashMap::new();
        for (name, value) in headers {
            let bad = |problem: String| McpError::BadHeader {
                name: name.clone(),
                problem,
            };
            let key =
                http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let value = http::HeaderValue::from_str(value).map_err(|e| bad(e.to_string()))?;
            custom.insert(key, value);
        }
        let mut config = StreamableHttpClientTransportConfig::with_uri(url).custom_headers(custom);
        // A response stream that breaks fails its call at once (the
        // session ends and the supervisor applies the restart policy),
        // instead of retrying a server that may be gone.
        config.retry_config = Arc::new(NoRetry);
        Self::open(
            StreamableHttpClientTransport::from_config(config),
            max_in_flight,
            Default::default(),
        )
        .await
    }

    async fn open<T, E, A>(
        transport: T,
        max_in_flight: usize,
        rejected: sanitize::Rejected,
    ) -> Result<Self, McpError>
    where
        T: rmcp::transport::IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let (changed_tx, tools_changed) = watch::channel(0);
        let progress = Progress::default();
        let handler = Handler {
            tools_changed: changed_tx,
            progress: progress.clone(),
        };
        let running = handler
            .serve(transport)
            .await
            .map_err(|e| McpError::Initialize(Box::new(e)))?;
        let peer = running.peer().clone();
        // A host wants every list fresh: no cached or stale lists.
        peer.set_response_cache_config(rmcp::service::ClientCacheConfig::disabled())
            .await;
        let (server, version) = match peer.peer_info().and_then(|i| i.server_info.clone()) {
            Some(info) => (info.name, info.version),
            None => (String::new(), String::new()),
        };
        let cancel = running.cancellation_token();
        let (ended_tx, ended) = watch::channel(false);
        tokio::spawn(async move {
            let reason = running.waiting().await;
            tracing::debug!(?reason, "MCP session ended");
            let _ = ended_tx.send(true);
        });
        Ok(McpConnection {
            peer,
            shared: Arc::new(Shared {
                cancel: Mutex::new(Some(cancel)),
                ended,
                tools_changed,
                server,
                version,
                progress,
                rejected,
            }),
            slots: PollSemaphore::new(Arc::new(Semaphore::new(max_in_flight.max(1)))),
            permit: None,
        })
    }

    /// The server's name and version from `initialize` (empty if it gave
    /// none).
    pub fn server_info(&self) -> (&str, &str) {
        (&self.shared.server, &self.shared.version)
    }

    /// Every tool the server offers (`tools/list`, following every page),
    /// as [`Tool`]s: name, description, and the input schema as
    /// `parameters`.
    ///
    /// # Errors
    ///
    /// [`McpError::ListTools`].
    pub async fn list_tools(&self) -> Result<Vec<Tool>, McpError> {
        list_tools(&self.peer).await
    }

    /// Tools the server declared that could not be read at all (an
    /// `inputSchema` that is not an object, no name), each with why, since
    /// the last call; they were taken out of the list so that the rest of
    /// the server works. Over stdio only: over HTTP such a list fails
    /// whole.
    pub fn take_rejected(&self) -> Vec<RejectedTool> {
        std::mem::take(&mut *self.shared.rejected.lock().expect("lock poisoned"))
    }

    /// Changes each time the server sends
    /// `notifications/tools/list_changed`.
    pub fn tools_changed(&self) -> watch::Receiver<u64> {
        self.shared.tools_changed.clone()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        *self.shared.ended.borrow() || self.peer.is_transport_closed()
    }

    /// Resolves when the session ends (the server exited or closed its
    /// output, the HTTP session failed, or [`close`](Self::close)), with
    /// [`ConnectionError::Closed`].
    pub async fn broken(&self) -> ConnectionError {
        let mut ended = self.shared.ended.clone();
        let _ = ended.wait_for(|e| *e).await;
        ConnectionError::Closed
    }

    /// Ends the session without waiting.
    fn end(&self) {
        self.shared.end();
    }

    /// Ends the session: for stdio, closes the server's stdin (its signal
    /// to exit); for HTTP, sends `DELETE`. Waits up to `within` for the
    /// session to wind down. Calls still in flight fail as closed.
    pub async fn close(&self, within: Duration) {
        // What is queued (the cancellation of a call just given up) goes
        // out before the session ends: a ping queues behind it.
        if !self.is_closed() {
            let flush = within.min(Duration::from_millis(500));
            let ping = self
                .peer
                .send_request(ClientRequest::PingRequest(Default::default()));
            let _ = tokio::time::timeout(flush, ping).await;
        }
        self.end();
        let _ = tokio::time::timeout(within, self.broken()).await;
    }
}

/// An `initialize` failure in words: for a transport failure, the cause
/// and its own causes (not rmcp's transport type), then what was being
/// done.
fn describe_init(e: &rmcp::service::ClientInitializeError) -> String {
    match e {
        rmcp::service::ClientInitializeError::TransportError { error, context } => {
            format!("{} (when {context})", describe_transport(error))
        }
        other => other.to_string(),
    }
}

/// A transport failure in words: the cause and its own causes, without
/// rmcp's transport type name.
fn describe_transport(error: &rmcp::transport::DynamicTransportError) -> String {
    let mut text = error.error.to_string();
    let mut source = error.error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Every tool `peer` offers, every page.
async fn list_tools(peer: &Peer<RoleClient>) -> Result<Vec<Tool>, McpError> {
    let tools = peer.list_all_tools().await.map_err(McpError::ListTools)?;
    Ok(tools.into_iter().map(from_mcp_tool).collect())
}

impl Shared {
    /// Ends the session without waiting.
    fn end(&self) {
        let token = self.cancel.lock().expect("lock poisoned").take();
        if let Some(token) = token {
            token.cancel();
        }
    }
}

/// `tools/call` with its progress notifications sent to `sink`; a call
/// dropped before its answer is cancelled upstream, as `Peer::call_tool`
/// does.
async fn call_with_progress(
    peer: &Peer<RoleClient>,
    shared: &Shared,
    params: CallToolRequestParams,
    sink: ProgressSink,
) -> Result<CallToolResult, rmcp::ServiceError> {
    let request = ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
    let handle = peer
        .send_request_with_option(request, PeerRequestOptions::no_options())
        .await?;
    let mut guard = InFlight {
        peer: peer.clone(),
        progress: shared.progress.clone(),
        token: handle.progress_token.clone(),
        id: Some(handle.id.clone()),
    };
    shared
        .progress
        .lock()
        .expect("lock poisoned")
        .insert(guard.token.clone(), sink);
    let response = handle.await_response().await;
    guard.id = None;
    match response? {
        ServerResult::CallToolResult(result) => Ok(result),
        _ => Err(rmcp::ServiceError::UnexpectedResponse),
    }
}

tokio::task_local! {
    /// Where the progress of the MCP call made in this scope goes.
    static PROGRESS: ProgressSink;
}

/// A progress notification of a call, as an MCP server sent it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CallProgress {
    /// The progress so far.
    pub progress: f64,
    /// The total, if known.
    pub total: Option<f64>,
    /// What is happening, if said.
    pub message: Option<String>,
}

/// Receives the progress of a call (see [`with_progress`]).
#[derive(Clone)]
struct ProgressSink(Arc<dyn Fn(CallProgress) + Send + Sync>);

/// Runs `fut` (a call through the router, say) with `sink` receiving the
/// progress notifications an MCP server sends for the `tools/call` made
/// inside it. The router and the stack run in the caller's task, so the
/// call made through them sees it. Calls to native extensions send none.
///
/// # Example
///
/// ```no_run
/// # async fn f(router: exthost::router::Router) {
/// use exthost::router::ToolCall;
/// use tower::ServiceExt;
///
/// let call = router.oneshot(ToolCall::new("m_sleep", r#"{"ms":500}"#));
/// let output = exthost::mcp::with_progress(|p| eprintln!("{} of {:?}", p.progress, p.total), call).await;
/// # }
/// ```
pub async fn with_progress<F>(
    sink: impl Fn(CallProgress) + Send + Sync + 'static,
    fut: F,
) -> F::Output
where
    F: Future,
{
    PROGRESS.scope(ProgressSink(Arc::new(sink)), fut).await
}

/// A call with a progress sink, until it ends: forgets the sink, and
/// cancels the call upstream if it is dropped unanswered.
struct InFlight {
    peer: Peer<RoleClient>,
    progress: Progress,
    token: ProgressToken,
    id: Option<rmcp::model::RequestId>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.progress
            .lock()
            .expect("lock poisoned")
            .remove(&self.token);
        if let Some(id) = self.id.take() {
            let peer = self.peer.clone();
            let cancel = CancelledNotificationParam::new(
                Some(id),
                Some("request abandoned by the caller".to_owned()),
            );
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = peer.notify_cancelled(cancel).await;
                });
            }
        }
    }
}

/// Never resumes a broken response stream.
#[derive(Debug)]
struct NoRetry;

impl rmcp::transport::common::client_side_sse::SseRetryPolicy for NoRetry {
    fn retry(&self, _current_times: usize) -> Option<Duration> {
        None
    }
}

/// rustls needs a process-wide crypto provider before the first HTTPS
/// client is built; exthost uses ring. Installing twice is harmless.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn from_mcp_tool(tool: rmcp::model::Tool) -> Tool {
    Tool {
        name: tool.name.into_owned(),
        description: tool.description.map(|d| d.into_owned()).unwrap_or_default(),
        parameters: serde_json::Value::Object((*tool.input_schema).clone()),
        strict: false,
    }
}

/// The arguments of a `tools/call`: a JSON object (empty text is `{}`).
fn arguments(
    tool: &str,
    args: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, BadArguments> {
    if args.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str(args) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(BadArguments {
            tool: tool.to_owned(),
            problem: format!("an MCP tool takes a JSON object, not {}", json_kind(&other)),
        }),
        Err(e) => Err(BadArguments {
            tool: tool.to_owned(),
            problem: format!("not valid JSON: {e}"),
        }),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The answer to a `tools/call`.
fn answer(result: CallToolResult) -> ExtResponse {
    if result.is_error == Some(true) {
        let text: Vec<&str> = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect();
        let message = if text.is_empty() {
            // No text to quote: the blocks themselves, so nothing is lost.
            serde_json::to_string(&result.content).unwrap_or_default()
        } else {
            text.join("\n")
        };
        return ExtResponse::error(message);
    }
    let json = serde_json::to_string(&result).expect("a CallToolResult always serializes");
    ExtResponse::tool_result(json)
}

/// A failed request: the session's end is [`ConnectionError`]; an error
/// the server answered is an `error` answer.
fn failure(e: rmcp::ServiceError) -> Result<ExtResponse, BoxError> {
    match e {
        rmcp::ServiceError::TransportClosed => Err(ConnectionError::Closed.into()),
        rmcp::ServiceError::TransportSend(e) => {
            Err(ConnectionError::Io(Arc::new(std::io::Error::other(describe_transport(&e)))).into())
        }
        rmcp::ServiceError::UnexpectedResponse => Err(ConnectionError::Malformed(Arc::from(
            "the server's answer to `tools/call` is not a tool result",
        ))
        .into()),
        rmcp::ServiceError::McpError(e) => Ok(ExtResponse::error(format!(
            "{} (MCP error {})",
            e.message, e.code.0
        ))),
        other => Ok(ExtResponse::error(other.to_string())),
    }
}

/// The future of an [`McpConnection`] call.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<ExtResponse, BoxError>> + Send>>;

impl Service<ExtRequest> for McpConnection {
    type Response = ExtResponse;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Ready once an in-flight slot is free; an error once the session has
    /// ended.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.is_closed() {
            self.permit = None;
            return Poll::Ready(Err(ConnectionError::Closed.into()));
        }
        if self.permit.is_none() {
            let permit =
                ready!(self.slots.poll_acquire(cx)).expect("the semaphore is never closed");
            self.permit = Some(permit);
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ExtRequest) -> ResponseFuture {
        let permit = self
            .permit
            .take()
            .expect("McpConnection::call without poll_ready");
        // What the call needs, without the slots (a clone of those would
        // allocate its acquire future on every call).
        let peer = self.peer.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            // The slot is held until this future ends: answered, failed, or
            // dropped by its caller (then rmcp tells the server).
            let _permit = permit;
            match req.msg {
                Some(ext_request::Msg::ToolCall(call)) => {
                    let args = arguments(&call.name, &call.args)?;
                    let params = CallToolRequestParams::new(call.name).with_arguments(args);
                    let sink = PROGRESS.try_with(Clone::clone).ok();
                    let called = match sink {
                        None => peer.call_tool(params).await,
                        Some(sink) => call_with_progress(&peer, &shared, params, sink).await,
                    };
                    match called {
                        Ok(result) => Ok(answer(result)),
                        Err(e) => {
                            let failed = failure(e);
                            if failed.is_err() {
                                // The transport failed (an HTTP server that
                                // went away): the session is over, so the
                                // supervisor sees it and applies the
                                // restart policy (a new session).
                                shared.end();
                            }
                            failed
                        }
                    }
                }
                Some(ext_request::Msg::RegisterTools(_)) => match list_tools(&peer).await {
                    Ok(tools) => Ok(ExtResponse::tool_schemas(
                        tools.iter().map(Tool::to_def).collect(),
                    )),
                    Err(McpError::ListTools(e)) => failure(e),
                    Err(e) => Ok(ExtResponse::error(e.to_string())),
                },
                other => {
                    let kind = ExtRequest {
                        msg: other,
                        ..Default::default()
                    }
                    .kind();
                    Ok(ExtResponse::error(format!(
                        "an MCP server does not take `{kind}` requests"
                    )))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_an_object() {
        assert!(arguments("t", "").unwrap().is_empty());
        assert_eq!(arguments("t", r#"{"a":1}"#).unwrap()["a"], 1);
        let e = arguments("t", "[1]").unwrap_err();
        assert!(e.problem.contains("an array"), "{e}");
        let e = arguments("t", "{").unwrap_err();
        assert!(e.problem.contains("not valid JSON"), "{e}");
        assert_eq!(e.tool, "t");
    }
}

//! Every hosted tool, served to MCP clients: [`McpServer`], an rmcp
//! `ServerHandler` over a [`ServiceManager`].
//!
//! What `exthost mcp` runs, over stdio or Streamable HTTP. A client sees
//! one MCP server whose tools are every routed tool of every native
//! extension and MCP server the manager hosts (after prefixes and the
//! collision policy), and each `tools/call` goes through the
//! [`Router`](crate::router::Router), so call timeouts, in-flight limits,
//! your layers and tracing apply:
//!
//! - `tools/list`: the routing table's tools, in its order (service name,
//!   then the service's order), with description and input schema. Tools
//!   of services that are down (failed, stopped) are not listed.
//! - `tools/call`: a [`ToolOutput`] keeps its content
//!   blocks and structured content. A [`CallError`] becomes a result with
//!   `isError: true` whose text is `kind: message` (`timeout: …`,
//!   `unavailable: …`); an unknown tool is the protocol's invalid-params
//!   error (-32602).
//! - The client's cancellation (`notifications/cancelled`) drops the call:
//!   an MCP upstream is sent `notifications/cancelled` in turn, a native
//!   extension's caller is dropped (its slot frees when it answers).
//! - Progress notifications an MCP upstream sends for a call reach the
//!   client under the client's own progress token (see
//!   [`with_progress`](crate::mcp::with_progress)).
//! - Each call's `agent` is the client's name (`clientInfo.name`, from its
//!   `initialize` or, in discovery mode, from the request's metadata),
//!   unless [`McpServer::agent`] sets one.
//! - [`McpServer::notify_changes`] tells every connected client when the
//!   tool list changes (a restart with other tools, an upstream list
//!   change, a service failing or coming back).
//!
//! Behind the `mcp` feature.
//!
//! # Example
//!
//! ```no_run
//! use exthost::manager::ServiceManager;
//! use exthost::mcp_server::McpServer;
//! use rmcp::ServiceExt;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let configs = std::collections::BTreeMap::new();
//! let manager = ServiceManager::builder(&configs).build();
//! manager.start().await;
//! let server = McpServer::new(manager.clone());
//! let _notifier = server.notify_changes();
//! let running = server.serve(rmcp::transport::stdio()).await?;
//! running.waiting().await?;
//! manager.shutdown_all().await;
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler};
use tower::ServiceExt;

use crate::manager::ServiceManager;
use crate::mcp::CallProgress;
use crate::registry::RegisteredTool;
use crate::router::ToolCall;
use crate::tool::{Content, ToolOutput};
use crate::CallError;

/// The agent name of calls from a client that gave no name.
const UNNAMED_CLIENT: &str = "mcp-client";

/// Serves a [`ServiceManager`]'s tools to MCP clients; see the [module
/// docs](self). Cheap to clone: clones share the manager and the list of
/// connected clients (one clone per Streamable HTTP session).
#[derive(Clone)]
pub struct McpServer {
    manager: ServiceManager,
    agent: Option<Arc<str>>,
    clients: Arc<Mutex<Vec<Peer<RoleServer>>>>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("agent", &self.agent)
            .field(
                "clients",
                &self.clients.lock().map(|c| c.len()).unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

impl McpServer {
    /// Serves `manager`'s tools (start it yourself).
    pub fn new(manager: ServiceManager) -> Self {
        McpServer {
            manager,
            agent: None,
            clients: Arc::default(),
        }
    }

    /// The `agent` of every call, instead of each client's name.
    pub fn agent(mut self, agent: impl Into<Arc<str>>) -> Self {
        self.agent = Some(agent.into());
        self
    }

    /// Spawns a task that sends `notifications/tools/list_changed` to every
    /// connected client each time the advertised tools change (names,
    /// descriptions or schemas), until the manager's router goes away.
    /// Must be called inside a tokio runtime.
    pub fn notify_changes(&self) -> tokio::task::JoinHandle<()> {
        let mut tables = self.manager.router().watch_table();
        let clients = self.clients.clone();
        let mut last = listed(tables.borrow_and_update().tools());
        tokio::spawn(async move {
            while tables.changed().await.is_ok() {
                let now = listed(tables.borrow_and_update().tools());
                if now == last {
                    continue;
                }
                last = now;
                let peers: Vec<_> = clients.lock().expect("lock poisoned").clone();
                let mut gone = Vec::new();
                for (i, peer) in peers.iter().enumerate() {
                    if peer.notify_tool_list_changed().await.is_err() {
                        gone.push(i);
                    }
                }
                if !gone.is_empty() {
                    clients
                        .lock()
                        .expect("lock poisoned")
                        .retain(|p| !p.is_transport_closed());
                }
            }
        })
    }

    /// The tools as MCP lists them.
    pub fn tools(&self) -> Vec<rmcp::model::Tool> {
        listed(&self.manager.tools())
    }

    async fn call(
        &self,
        params: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let agent = match &self.agent {
            Some(agent) => agent.to_string(),
            // From `initialize`, or from the request's own metadata for a
            // client in discovery mode (2026-07-28).
            None => context
                .client_info()
                .map(|info| info.name)
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| UNNAMED_CLIENT.to_owned()),
        };
        let args = match params.arguments {
            Some(args) => serde_json::Value::Object(args).to_string(),
            None => "{}".to_owned(),
        };
        let call = ToolCall::new(params.name.to_string(), args).agent(agent);
        let routed = self.manager.router().oneshot(call);
        let answer = async {
            let Some(token) = context.meta.get_progress_token() else {
                return routed.await;
            };
            // An MCP upstream's progress reaches the client under the
            // client's own token, in order, before the result.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<CallProgress>();
            let peer = context.peer.clone();
            let forward = tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    let mut param = ProgressNotificationParam::new(token.clone(), p.progress);
                    param.total = p.total;
                    param.message = p.message;
                    let _ = peer.notify_progress(param).await;
                }
            });
            let answer = crate::mcp::with_progress(
                move |p| {
                    let _ = tx.send(p);
                },
                routed,
            )
            .await;
            let _ = forward.await;
            answer
        };
        let answer = tokio::select! {
            answer = answer => answer,
            // Dropping the call cancels it upstream.
            _ = context.ct.cancelled() => {
                return Err(ErrorData::internal_error("call cancelled", None));
            }
        };
        match answer {
            Ok(output) => Ok(to_result(output)),
            Err(CallError::UnknownTool { tool }) => Err(ErrorData::invalid_params(
                format!("unknown tool: {tool}"),
                None,
            )),
            Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                "{}: {e}",
                e.kind()
            ))])),
        }
    }
}

/// `tools` as MCP lists them.
fn listed(tools: &[RegisteredTool]) -> Vec<rmcp::model::Tool> {
    tools
        .iter()
        .map(|t| {
            let schema = match &t.tool.parameters {
                serde_json::Value::Object(o) => o.clone(),
                // Schemaless (not an object: never routed) → empty object schema.
                _ => serde_json::Map::new(),
            };
            rmcp::model::Tool::new(
                t.tool.name.clone(),
                t.tool.description.clone(),
                Arc::new(schema),
            )
        })
        .collect()
}

/// A tool's output as an MCP result: the same blocks and structured
/// content.
fn to_result(output: ToolOutput) -> CallToolResult {
    let content = output.content.into_iter().map(to_block).collect();
    let mut result = CallToolResult::success(content);
    result.structured_content = output.structured_content;
    result
}

fn to_block(content: Content) -> ContentBlock {
    let value = serde_json::to_value(&content).expect("content always serializes");
    serde_json::from_value(value).unwrap_or_else(|_| match content {
        Content::Text { text } => ContentBlock::text(text),
        other => {
            ContentBlock::text(serde_json::to_string(&other).expect("content always serializes"))
        }
    })
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("exthost", env!("CARGO_PKG_VERSION")))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request, context).await.map(Into::into)
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let mut clients = self.clients.lock().expect("lock poisoned");
        clients.retain(|p| !p.is_transport_closed());
        clients.push(context.peer);
    }
}

//! The router: one `tower::Service<ToolCall>` over every extension, keyed
//! by tool name.
//!
//! In the spirit of tower's `Steer`, but it readies only the extension that
//! owns the tool: `Steer` waits for *every* inner service to be ready,
//! which with one request in flight per extension is head-of-line blocking
//! across all tools. Here a slow or busy extension never delays calls to
//! another.
//!
//! The router holds only its [`RoutingTable`]: tool names to
//! [`Endpoint`]s, each with its service's current boxed stack. Whoever runs
//! the services (the [`ServiceManager`](crate::manager::ServiceManager))
//! builds a new table when tool lists change and [`install`](Router::install)s
//! it atomically; every clone of the router sees it.
//!
//! # Readiness
//!
//! [`Router::poll_ready`](tower::Service::poll_ready) is always ready, like
//! tower's `Buffer`: which service a call needs is known only from the
//! call, so the router cannot wait for it in `poll_ready` without blocking
//! calls to every other service. The wait for the owner's in-flight slot
//! happens inside the call, under the owner's call deadline, and an
//! endpoint's optional `max_queued` bounds how many calls may wait: one
//! beyond it fails at once with [`CallError::Overloaded`] (never sent, safe
//! to retry). Put load shedding *inside* the per-extension stack (a
//! [`ServiceManager`](crate::manager::ServiceManager) layer), where
//! readiness is real.
//!
//! Errors are typed ([`CallError`]); calls to an extension that is down fail
//! at once with [`CallError::Unavailable`], and calls are never replayed.
//!
//! # Example
//!
//! A router over in-process services, no processes involved:
//!
//! ```
//! use std::sync::Arc;
//! use exthost::proto::{ExtRequest, ExtResponse};
//! use exthost::router::{Endpoint, Router, RoutingTable, ToolCall};
//! use exthost::stack::ExtensionService;
//! use exthost::Tool;
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), exthost::CallError> {
//! let upper = ExtensionService::new(service_fn(|req: ExtRequest| async move {
//!     let args = req.as_tool_call().map(|c| c.args.to_uppercase()).unwrap_or_default();
//!     Ok::<_, tower::BoxError>(ExtResponse::tool_result(args))
//! }));
//! let endpoint = Arc::new(Endpoint::ready("text", upper));
//! let tools = [Tool::new("upper", "Upper-cases", serde_json::json!({"type": "object"}))];
//!
//! let router = Router::new();
//! router.install(RoutingTable::build([(&endpoint, &tools[..])]));
//! let answer = router.clone().oneshot(ToolCall::new("upper", "hi")).await?;
//! assert_eq!(answer.text(), "HI");
//! let err = router.oneshot(ToolCall::new("lower", "hi")).await.unwrap_err();
//! assert!(matches!(err, exthost::CallError::UnknownTool { .. }));
//! # Ok(()) }
//! ```

mod error;
mod table;

pub use error::{CallError, Unavailable};
pub use table::{Endpoint, RoutingTable};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::watch;
use tower::Service;

use crate::proto::{ext_response::Msg, ExtRequest, RequestKind};
use crate::registry::{Conflict, RegisteredTool};
use crate::tool::ToolOutput;

/// A tool call: name, JSON arguments, the calling agent, an optional task.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// Its arguments, as JSON text.
    pub args: String,
    /// The agent making the call.
    pub agent: String,
    /// The task the call belongs to, if any.
    pub task_id: Option<u64>,
}

impl ToolCall {
    /// A call with no agent and no task.
    pub fn new(name: impl Into<String>, args: impl Into<String>) -> Self {
        ToolCall {
            name: name.into(),
            args: args.into(),
            agent: String::new(),
            task_id: None,
        }
    }

    /// Sets the agent.
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = agent.into();
        self
    }

    /// Sets the task id.
    pub fn task_id(mut self, task_id: Option<u64>) -> Self {
        self.task_id = task_id;
        self
    }
}

/// Routes each [`ToolCall`] to the endpoint that owns the tool.
///
/// Cheap to clone; clones share the table. While the installed table is
/// [settling](RoutingTable::settling) (services still starting for the
/// first time), a call to a tool it lacks waits for the next table instead
/// of failing as unknown; put a deadline around the router to bound that.
#[derive(Clone)]
pub struct Router {
    table: Arc<watch::Sender<Arc<RoutingTable>>>,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            table: Arc::new(watch::Sender::new(Arc::new(RoutingTable::default()))),
        }
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("tools", &self.table().tools().len())
            .finish()
    }
}

impl Router {
    /// A router with an empty table: every call is an unknown tool until a
    /// table is installed.
    pub fn new() -> Self {
        Router::default()
    }

    /// Replaces the table, atomically for every clone: calls routed from
    /// now on use `table`; calls already routed finish where they went.
    pub fn install(&self, table: RoutingTable) {
        self.table.send_replace(Arc::new(table));
    }

    /// The table in force.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.borrow().clone()
    }

    /// A receiver of every table installed from now on (the current one
    /// marked seen), for those who follow the tool list, such as an MCP
    /// server telling its clients that it changed.
    pub fn watch_table(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.table.subscribe()
    }

    /// Every routed tool with its owner, in service-name order.
    pub fn tools(&self) -> Vec<RegisteredTool> {
        self.table().tools().to_vec()
    }

    /// Tools declared by more than one service, and who kept them.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.table().conflicts().to_vec()
    }

    /// The owner of `tool`, or what to do without one.
    fn route(&self, tool: &str) -> Result<Arc<Endpoint>, Missing> {
        let table = self.table.borrow();
        table
            .route(tool)
            .cloned()
            .ok_or_else(|| Missing::of(&table))
    }
}

/// Why a table has no route for a tool.
enum Missing {
    /// No service offers it.
    Unknown,
    /// Services are still starting: wait for the next table.
    Settling,
    /// Services are shutting down.
    Closing,
}

impl Missing {
    fn of(table: &RoutingTable) -> Self {
        if table.is_closing() {
            Missing::Closing
        } else if table.is_settling() {
            Missing::Settling
        } else {
            Missing::Unknown
        }
    }

    fn error(self, tool: String) -> CallError {
        match self {
            Missing::Closing => CallError::Unavailable {
                service: format!("(owner of {tool})"),
                cause: Unavailable::ShuttingDown,
                delivered: false,
            },
            Missing::Unknown | Missing::Settling => CallError::UnknownTool { tool },
        }
    }
}

/// Waits for tables until one routes `tool` or is no longer settling.
async fn route_when_settled(
    mut tables: watch::Receiver<Arc<RoutingTable>>,
    tool: &str,
) -> Result<Arc<Endpoint>, Missing> {
    loop {
        {
            let table = tables.borrow_and_update();
            if let Some(endpoint) = table.route(tool) {
                return Ok(endpoint.clone());
            }
            match Missing::of(&table) {
                Missing::Settling => {}
                missing => return Err(missing),
            }
        }
        if tables.changed().await.is_err() {
            return Err(Missing::Unknown);
        }
    }
}

async fn call_tool(endpoint: Arc<Endpoint>, call: ToolCall) -> Result<ToolOutput, CallError> {
    // The name the service knows; without a prefix, the call's own.
    let name = match endpoint.prefix() {
        Some(_) => endpoint.service_tool_name(&call.name).to_owned(),
        None => call.name,
    };
    let req = ExtRequest::tool_call_full(name, call.args, call.agent, call.task_id);
    match endpoint.request(req).await? {
        Msg::ToolResult(r) => Ok(endpoint.output(r.result)),
        other => Err(endpoint.unexpected(RequestKind::ToolCall, kind_of(other))),
    }
}

/// The future of a [`Router`] call.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<ToolOutput, CallError>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<ToolOutput, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl Service<ToolCall> for Router {
    type Response = ToolOutput;
    type Error = CallError;
    type Future = ResponseFuture;

    /// Always ready: see [Readiness](self#readiness).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ToolCall) -> ResponseFuture {
        let inner: Pin<Box<dyn Future<Output = _> + Send>> = match self.route(&call.name) {
            Ok(endpoint) => Box::pin(call_tool(endpoint, call)),
            Err(Missing::Settling) => {
                let tables = self.table.subscribe();
                Box::pin(async move {
                    match route_when_settled(tables, &call.name).await {
                        Ok(endpoint) => call_tool(endpoint, call).await,
                        Err(missing) => Err(missing.error(call.name)),
                    }
                })
            }
            Err(missing) => Box::pin(std::future::ready(Err(missing.error(call.name)))),
        };
        ResponseFuture { inner }
    }
}

/// The kind of a response message.
pub(crate) fn kind_of(msg: Msg) -> crate::proto::ResponseKind {
    crate::proto::ExtResponse {
        msg: Some(msg),
        ..Default::default()
    }
    .kind()
}

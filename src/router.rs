//! The router: one `tower::Service<ToolCall>` over every extension, keyed
//! by tool name.
//!
//! In the spirit of tower's `Steer`, but it readies only the extension that
//! owns the tool: `Steer` waits for *every* inner service to be ready,
//! which with one request in flight per extension is head-of-line blocking
//! across all tools. Here a slow or busy extension never delays calls to
//! another. [`Router::poll_ready`](tower::Service::poll_ready) is always
//! ready; waiting for the owner's in-flight slot happens inside the call,
//! under the owner's call timeout.
//!
//! Errors are typed ([`CallError`]); calls to an extension that is down fail
//! at once with [`CallError::Unavailable`], and calls are never replayed.
//!
//! Get a router from [`ServiceManager::router`](crate::manager::ServiceManager::router);
//! wrap it in any tower layers.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use exthost::manager::ServiceManager;
//! use exthost::router::ToolCall;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn demo(manager: ServiceManager) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // An overall deadline and a global concurrency cap around the router.
//! let svc = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(60))
//!     .concurrency_limit(64)
//!     .service(manager.router());
//! let call = ToolCall::new("search", r#"{"q":"tower"}"#).agent("planner").task_id(Some(7));
//! let answer = svc.oneshot(call).await?;
//! println!("{answer}");
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use crate::error::CallError;
use crate::manager::{call_slot, unavailable, unexpected, Shared};
use crate::proto::{ext_response::Msg, ExtRequest};

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

/// Routes each [`ToolCall`] to the extension that owns the tool.
#[derive(Clone)]
pub struct Router {
    shared: Arc<Shared>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Router { shared }
    }
}

/// The future of a [`Router`] call.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<String, CallError>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<String, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl Service<ToolCall> for Router {
    type Response = String;
    type Error = CallError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ToolCall) -> ResponseFuture {
        let routed = {
            let table = self.shared.table.read().expect("table lock poisoned");
            table.routes.get(&call.name).cloned()
        };
        let inner: Pin<Box<dyn Future<Output = _> + Send>> = match routed {
            None => Box::pin(std::future::ready(Err(CallError::UnknownTool {
                tool: call.name,
            }))),
            Some(slot) => match slot.service() {
                None => Box::pin(std::future::ready(Err(unavailable(&slot)))),
                Some(svc) => Box::pin(async move {
                    let req =
                        ExtRequest::tool_call_full(call.name, call.args, call.agent, call.task_id);
                    match call_slot(&slot, svc, req).await? {
                        Msg::ToolResult(r) => Ok(r.result),
                        other => Err(unexpected(&slot.name, other)),
                    }
                }),
            },
        };
        ResponseFuture { inner }
    }
}

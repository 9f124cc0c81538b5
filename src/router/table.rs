//! The routing table: tool names to [`Endpoint`]s, and the tool list that
//! goes with it.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Poll;

use tower::Service;

use super::error::{CallError, Unavailable};
use crate::client::ConnectionError;
use crate::config::ServiceKind;
use crate::proto::{ext_response::Msg, ExtRequest, ResponseKind};
use crate::registry::{
    check_tool_name, Conflict, LeftOut, LeftOutReason, RegisteredTool, ToolNames,
};
use crate::stack::ExtensionService;
use crate::status::ServiceState;
use crate::tool::{Tool, ToolOutput};

/// One service as the router sees it: its current request stack, or why
/// it has none, and how many calls may wait for it.
///
/// Whoever runs the service (the
/// [`ServiceManager`](crate::manager::ServiceManager)) installs a new stack
/// with [`set_ready`](Self::set_ready) after each start and marks it
/// [`set_unavailable`](Self::set_unavailable) when it goes down; calls see
/// the change at once.
pub struct Endpoint {
    name: Arc<str>,
    state: RwLock<Result<ExtensionService, Unavailable>>,
    max_queued: Option<usize>,
    waiting: AtomicUsize,
    kind: ServiceKind,
    prefix: Option<Arc<str>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("ready", &self.is_ready())
            .field("max_queued", &self.max_queued)
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl Endpoint {
    /// A service that is not ready yet (`starting`).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Endpoint {
            name: name.into(),
            state: RwLock::new(Err(Unavailable::NotReady {
                state: ServiceState::Starting,
                reason: None,
            })),
            max_queued: None,
            waiting: AtomicUsize::new(0),
            kind: ServiceKind::Extension,
            prefix: None,
        }
    }

    /// What kind of service answers, which says how its tool results read:
    /// a native extension's result is one text block; an MCP server's is
    /// the `CallToolResult` JSON its [`McpConnection`](crate::mcp::McpConnection)
    /// answers with (content blocks and structured content).
    pub fn with_kind(mut self, kind: ServiceKind) -> Self {
        self.kind = kind;
        self
    }

    /// The service's tools are routed under `prefix` + their own name; the
    /// service receives its own name (see [`service_tool_name`](Self::service_tool_name)).
    pub fn with_prefix(mut self, prefix: Option<&str>) -> Self {
        self.prefix = prefix.filter(|p| !p.is_empty()).map(Arc::from);
        self
    }

    /// The prefix of the service's tool names, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// The name the service knows a routed tool by: `routed` without the
    /// prefix.
    pub fn service_tool_name<'a>(&self, routed: &'a str) -> &'a str {
        match &self.prefix {
            Some(p) => routed.strip_prefix(&**p).unwrap_or(routed),
            None => routed,
        }
    }

    /// Reads a `tool_result`'s text as the service's kind says (see
    /// [`with_kind`](Self::with_kind)). An MCP result that does not parse
    /// (a user layer rewrote it) is kept as one text block.
    pub fn output(&self, result: String) -> ToolOutput {
        match self.kind {
            ServiceKind::Mcp => match serde_json::from_str(&result) {
                Ok(output) => output,
                Err(_) => ToolOutput::from_text(result),
            },
            _ => ToolOutput::from_text(result),
        }
    }

    /// A service that is ready with `service`.
    pub fn ready(name: impl Into<Arc<str>>, service: ExtensionService) -> Self {
        let endpoint = Endpoint::new(name);
        endpoint.set_ready(service);
        endpoint
    }

    /// At most `max` calls may wait for the service to become ready (for an
    /// in-flight slot); a call beyond that fails at once with
    /// [`CallError::Overloaded`]. `None` (the default) lets any number wait,
    /// each within its deadline.
    pub fn with_max_queued(mut self, max: Option<usize>) -> Self {
        self.max_queued = max;
        self
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Routes calls to `service` from now on.
    pub fn set_ready(&self, service: ExtensionService) {
        *self.state.write().expect("endpoint lock poisoned") = Ok(service);
    }

    /// Fails calls with `cause` from now on.
    pub fn set_unavailable(&self, cause: Unavailable) {
        *self.state.write().expect("endpoint lock poisoned") = Err(cause);
    }

    /// Whether calls are routed to a stack.
    pub fn is_ready(&self) -> bool {
        self.state.read().expect("endpoint lock poisoned").is_ok()
    }

    /// Calls waiting for the service to become ready.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The current stack, or why there is none.
    pub fn service(&self) -> Result<ExtensionService, Unavailable> {
        self.state.read().expect("endpoint lock poisoned").clone()
    }

    /// Sends `req` to the service and returns the answer's message.
    ///
    /// Waits for readiness (an in-flight slot) under the stack's deadline,
    /// counted against `max_queued`; then calls.
    ///
    /// # Errors
    ///
    /// An `error` answer is [`CallError::Extension`]; a service that is
    /// down, [`CallError::Unavailable`] (not delivered); too many waiting,
    /// [`CallError::Overloaded`]; a failure of the stack is sorted out by
    /// [`CallError::from_stack`].
    pub async fn request(&self, req: ExtRequest) -> Result<Msg, CallError> {
        let kind = req.kind();
        // Over the protocol's frame limit: refused at once, before waiting
        // for a slot (so never a timeout), and never sent.
        let len = prost::Message::encoded_len(&req) + crate::client::CORRELATION_ID_MAX_LEN;
        if len > crate::codec::MAX_FRAME_LEN {
            return Err(CallError::TooLarge {
                service: self.name.to_string(),
                len,
                max: crate::codec::MAX_FRAME_LEN,
            });
        }
        let mut svc = self.service().map_err(|cause| CallError::Unavailable {
            service: self.name.to_string(),
            cause,
            delivered: false,
        })?;
        self.wait_ready(&mut svc)
            .await
            .map_err(|e| self.while_shutting_down(e))?;
        let resp = svc
            .call(req)
            .await
            .map_err(|e| self.while_shutting_down(CallError::from_stack(&self.name, e, true)))?;
        match resp.msg {
            Some(Msg::Error(e)) => Err(CallError::Extension {
                service: self.name.to_string(),
                message: e.message,
            }),
            Some(msg) => Ok(msg),
            None => Err(self.unexpected(kind, ResponseKind::Empty)),
        }
    }

    /// A connection that closed because the host is shutting the service
    /// down is reported as that.
    fn while_shutting_down(&self, e: CallError) -> CallError {
        match e {
            CallError::Unavailable {
                service,
                cause: Unavailable::Connection(_),
                delivered,
            } if matches!(self.service(), Err(Unavailable::ShuttingDown)) => {
                CallError::Unavailable {
                    service,
                    cause: Unavailable::ShuttingDown,
                    delivered,
                }
            }
            e => e,
        }
    }

    /// Waits until `svc` is ready, counting this call as waiting while it is
    /// not.
    async fn wait_ready(&self, svc: &mut ExtensionService) -> Result<(), CallError> {
        let mut queued: Option<Queued<'_>> = None;
        let mut overloaded = None;
        let ready = std::future::poll_fn(|cx| match svc.poll_ready(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => {
                if let (None, Some(max)) = (&queued, self.max_queued) {
                    let before = self.waiting.fetch_add(1, Ordering::AcqRel);
                    queued = Some(Queued(&self.waiting));
                    if before >= max {
                        overloaded = Some(before);
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Pending
            }
        })
        .await;
        drop(queued);
        if let Some(waiting) = overloaded {
            return Err(CallError::Overloaded {
                service: self.name.to_string(),
                waiting,
            });
        }
        ready.map_err(|e| CallError::from_stack(&self.name, e, false))
    }

    /// An answer of a kind the request does not take. The connection
    /// already refuses those; this keeps the mapping total.
    pub(crate) fn unexpected(
        &self,
        request: crate::proto::RequestKind,
        got: ResponseKind,
    ) -> CallError {
        CallError::Protocol {
            service: self.name.to_string(),
            source: ConnectionError::WrongResponse {
                request,
                response: got,
            },
        }
    }
}

/// One call counted as waiting, until dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Routes from tool names to [`Endpoint`]s, with the tool list to hand to
/// an LLM and the collisions that were resolved.
///
/// Collisions are resolved deterministically and visibly: when two services
/// declare the same tool, the one first in service-name order keeps it; the
/// other's is listed in [`conflicts`](Self::conflicts). Names LLM APIs
/// refuse are listed in [`left_out`](Self::left_out) (see
/// [`ToolNames`]). The [`ServiceManager`](crate::manager::ServiceManager)
/// logs each as a warning when it first appears.
#[derive(Debug, Default)]
pub struct RoutingTable {
    routes: HashMap<String, Arc<Endpoint>>,
    tools: Vec<RegisteredTool>,
    conflicts: Vec<Conflict>,
    left_out: Vec<LeftOut>,
    settling: bool,
    closing: bool,
}

impl RoutingTable {
    /// Builds a table from every service's endpoint and tools, whatever
    /// their order, advertising only portable tool names
    /// ([`ToolNames::Portable`]).
    pub fn build<'a>(services: impl IntoIterator<Item = (&'a Arc<Endpoint>, &'a [Tool])>) -> Self {
        Self::build_with(services, ToolNames::Portable)
    }

    /// Builds a table, advertising the tool names `policy` allows; the
    /// others (and a name one extension declared twice, with every one of
    /// its declarations) are listed in [`left_out`](Self::left_out).
    pub fn build_with<'a>(
        services: impl IntoIterator<Item = (&'a Arc<Endpoint>, &'a [Tool])>,
        policy: ToolNames,
    ) -> Self {
        let mut services: Vec<_> = services.into_iter().collect();
        services.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        let mut table = RoutingTable::default();
        let mut owner: HashMap<&str, &str> = HashMap::new();
        for (endpoint, tools) in &services {
            let service = endpoint.name();
            // A name declared twice is left out with every declaration,
            // told once.
            let mut own: HashMap<&str, usize> = HashMap::new();
            for tool in *tools {
                *own.entry(&tool.name).or_default() += 1;
            }
            for tool in *tools {
                let reason = match check_tool_name(&tool.name, policy) {
                    Some(reason) => Some(reason),
                    None => match own.get_mut(tool.name.as_str()) {
                        Some(0) => continue,
                        Some(n) if *n > 1 => {
                            *n = 0;
                            Some(LeftOutReason::DeclaredTwice)
                        }
                        _ => None,
                    },
                };
                if let Some(reason) = reason {
                    table.left_out.push(LeftOut {
                        service: service.to_owned(),
                        tool: tool.name.clone(),
                        reason,
                    });
                    continue;
                }
                if let Some(kept) = owner.get(tool.name.as_str()) {
                    if *kept != service {
                        table.conflicts.push(Conflict {
                            tool: tool.name.clone(),
                            kept: (*kept).to_owned(),
                            dropped: service.to_owned(),
                        });
                    }
                    continue;
                }
                owner.insert(&tool.name, service);
                table.routes.insert(tool.name.clone(), Arc::clone(endpoint));
                table.tools.push(RegisteredTool {
                    service: service.to_owned(),
                    tool: tool.clone(),
                });
            }
        }
        table
    }

    /// Adds tools left out before the table was built (such as those the
    /// handshake rejected for their definitions, see
    /// [`ExtensionInfo::rejected`](crate::handshake::ExtensionInfo::rejected)),
    /// keeping [`left_out`](Self::left_out) in service-name order.
    pub fn with_left_out(mut self, left_out: impl IntoIterator<Item = LeftOut>) -> Self {
        self.left_out.extend(left_out);
        self.left_out.sort_by(|a, b| a.service.cmp(&b.service));
        self
    }

    /// Adds the routes of services that cannot serve now (failed,
    /// stopped): a tool no serving service offers still routes to its
    /// owner, so that a call gets `unavailable` with the owner's state and
    /// reason rather than `unknown_tool`; but it is not advertised in
    /// [`tools`](Self::tools), and a serving service that declares the
    /// same tool keeps it.
    pub fn with_down<'a>(
        mut self,
        services: impl IntoIterator<Item = (&'a Arc<Endpoint>, &'a [Tool])>,
        policy: ToolNames,
    ) -> Self {
        let mut services: Vec<_> = services.into_iter().collect();
        services.sort_by(|a, b| a.0.name().cmp(b.0.name()));
        for (endpoint, tools) in services {
            for tool in tools {
                if check_tool_name(&tool.name, policy).is_none() {
                    self.routes
                        .entry(tool.name.clone())
                        .or_insert_with(|| Arc::clone(endpoint));
                }
            }
        }
        self
    }

    /// Marks the table as settling: some services have not finished their
    /// first start, so a tool missing from it may still appear. The router
    /// holds a call to an unknown tool until the tool appears or a table
    /// that is not settling is installed.
    pub fn settling(mut self, settling: bool) -> Self {
        self.settling = settling;
        self
    }

    /// Marks the table as closing: the services are being shut down, so a
    /// call to a tool it lacks is `unavailable` ("shutting down") rather
    /// than unknown, and calls held while it was settling get the same.
    pub fn closing(mut self, closing: bool) -> Self {
        self.closing = closing;
        self
    }

    /// Whether the services are being shut down.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether some services have not finished their first start.
    pub fn is_settling(&self) -> bool {
        self.settling
    }

    /// The endpoint that owns `tool`.
    pub fn route(&self, tool: &str) -> Option<&Arc<Endpoint>> {
        self.routes.get(tool)
    }

    /// Every routed tool with its owner, in service-name order.
    pub fn tools(&self) -> &[RegisteredTool] {
        &self.tools
    }

    /// Tools declared by more than one service, and who kept them.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// Declared tools that are not advertised, and why.
    pub fn left_out(&self) -> &[LeftOut] {
        &self.left_out
    }
}

//! The service manager: starts every configured extension, routes tool
//! calls, keeps extensions alive, and stops them all.
//!
//! [`ServiceManager`] keeps the reference's shape (`new(configs,
//! config_dir, daemon_socket)`, [`spawn_all`], [`handshake_all`],
//! [`shutdown_all`]) and adds a one-call [`start`]. Handshakes run
//! concurrently; one failing or hanging extension never delays the others
//! beyond its own timeout.
//!
//! Each service is supervised per its `restart` policy: `never`,
//! `on_failure` (non-zero exit, crash, lost connection), `always`. Restarts
//! back off exponentially from [`RestartLimits::backoff_base`] (100 ms, so
//! the first comes within 250 ms) to a cap, and a crash-loop breaker
//! ([`RestartLimits::max_restarts`] in [`RestartLimits::window`], 5 in 60 s
//! by default) leaves the service failed with its reason. A restart re-runs
//! the handshake and atomically replaces the service's routes and schemas.
//! Calls during an outage fail at once with [`CallError::Unavailable`];
//! tool calls are never replayed.
//!
//! A connection that ends is noticed when it happens, idle or not: the
//! service leaves `ready` at once, a process that lives on without its
//! connection is stopped with its `shutdown_grace` (SIGTERM, the grace,
//! SIGKILL), and then the policy applies.
//!
//! [`ServiceManager::builder`] takes user layers that wrap every
//! per-extension stack, each restart's included (see
//! [`Builder::layer`]).
//!
//! # Example
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use exthost::config::{RestartPolicy, ServiceConfig};
//! use exthost::manager::ServiceManager;
//! use exthost::router::ToolCall;
//! use tower::ServiceExt;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut configs = BTreeMap::new();
//! configs.insert(
//!     "search".to_owned(),
//!     ServiceConfig::krate("search-ext").with_restart(RestartPolicy::OnFailure),
//! );
//! let manager = ServiceManager::new(&configs, "/var/lib/agent".as_ref(), "/run/agent.sock".into());
//! let report = manager.start().await;
//! for (name, error) in &report.failed {
//!     eprintln!("{name} did not start: {error}");
//! }
//! for t in manager.tools() {
//!     println!("{}: {} ({})", t.service, t.tool.name, t.tool.description);
//! }
//! let answer = manager.router().oneshot(ToolCall::new("search", r#"{"q":"tower"}"#)).await?;
//! println!("{}", answer.text());
//! manager.shutdown_all().await;
//! # Ok(()) }
//! ```
//!
//! [`spawn_all`]: ServiceManager::spawn_all
//! [`handshake_all`]: ServiceManager::handshake_all
//! [`shutdown_all`]: ServiceManager::shutdown_all
//! [`start`]: ServiceManager::start
//! [`CallError::Unavailable`]: crate::CallError::Unavailable
//! [`Builder::layer`]: Builder::layer

mod builder;
mod compat;
mod slot;
mod supervisor;

pub use builder::Builder;
pub use supervisor::RestartLimits;

use supervisor::{Command, Control};

pub use crate::status::{DownReason, ServiceState, ServiceStatus};

pub(crate) use slot::Slot;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ServiceConfig;
use crate::connector::{Connector, StartError, Started};
use crate::process::StopOutcome;
use crate::proto::{ext_response::Msg, ExtRequest, RequestKind};
use crate::registry::{Conflict, LeftOut, LeftOutReason, RegisteredTool, ToolNames};
use crate::router::{kind_of, CallError, Router, RoutingTable, Unavailable};
use crate::tool::SchemaProblem;

/// A service's first start, as `handshake_all` waits for it.
type Settling = (String, oneshot::Receiver<Result<(), Arc<StartError>>>);

/// What the supervisors share: the services, the connector that starts
/// them, and the router whose table they keep current.
#[derive(Debug)]
pub(crate) struct Services {
    pub(crate) connector: Connector,
    pub(crate) slots: BTreeMap<String, Arc<Slot>>,
    pub(crate) router: Router,
    pub(crate) limits: RestartLimits,
    pub(crate) tool_names: ToolNames,
    pub(crate) shutdown: CancellationToken,
    /// Services whose first start has not settled yet; while any has not,
    /// the routing table is settling.
    pub(crate) unsettled: AtomicUsize,
}

impl Services {
    /// Installs a started incarnation and, if its tools changed, swaps in a
    /// new routing table.
    pub(crate) fn install(&self, slot: &Arc<Slot>, generation: u64, started: Started) {
        match slot.install(generation, started) {
            // Its tools may be new, or it may be back from failed.
            Ok(_) => self.rebuild_table(),
            Err(stale) => {
                tracing::warn!(service = %slot.name, "a newer start won; stopping the older one");
                let grace = slot.config.shutdown_grace();
                tokio::spawn(async move {
                    stale.stop(grace).await;
                });
            }
        }
    }

    /// One service's first start has settled.
    pub(crate) fn settle_one(&self) {
        if self.unsettled.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.rebuild_table();
        }
    }

    /// Changes a service's status; when it enters or leaves a terminal
    /// state (failed, stopped), the routing table is rebuilt.
    pub(crate) fn set_status(&self, slot: &Slot, change: impl FnOnce(&mut ServiceStatus)) {
        let before = slot.status().state.is_terminal();
        slot.set_status(change);
        if slot.status().state.is_terminal() != before {
            self.rebuild_table();
        }
    }

    /// Builds and installs the routing table from the services that can
    /// serve: a failed or stopped service's tools go to the next service
    /// that declares them, or are not advertised at all. A service that is
    /// restarting keeps its routes (its calls are `unavailable` meanwhile).
    pub(crate) fn rebuild_table(&self) {
        let (mut serving, mut down, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
        for slot in self.slots.values() {
            let live = slot.live.read().expect("slot lock poisoned");
            let tools = live.tools.clone();
            if slot.status().state.is_terminal() {
                down.push((&slot.endpoint, tools));
            } else {
                serving.push((&slot.endpoint, tools));
                rejected.extend(live.rejected.iter().map(|r| LeftOut {
                    service: slot.name.clone(),
                    tool: r.name.clone(),
                    reason: match &r.problem {
                        SchemaProblem::DeclaredTwice => LeftOutReason::DeclaredTwice,
                        problem => LeftOutReason::BadSchema(problem.clone()),
                    },
                }));
            }
        }
        let table = RoutingTable::build_with(
            serving.iter().map(|(e, tools)| (*e, tools.as_slice())),
            self.tool_names,
        )
        .with_left_out(rejected)
        .with_down(
            down.iter().map(|(e, tools)| (*e, tools.as_slice())),
            self.tool_names,
        )
        .settling(self.unsettled.load(Ordering::SeqCst) > 0)
        .closing(self.shutdown.is_cancelled());
        let owners = |t: &RoutingTable| -> std::collections::BTreeSet<(String, String)> {
            t.tools()
                .iter()
                .map(|t| (t.tool.name.clone(), t.service.clone()))
                .collect()
        };
        let previous = self.router.table();
        // Each finding is told once, when it appears.
        for left_out in table.left_out() {
            if !previous.left_out().contains(left_out) {
                tracing::warn!("{left_out}");
            }
        }
        for c in table.conflicts() {
            if !previous.conflicts().contains(c) {
                tracing::warn!(tool = ?c.tool, kept = %c.kept, dropped = %c.dropped, "tool declared by two extensions; the first in name order keeps it");
            }
        }
        let (old, new) = (owners(&previous), owners(&table));
        if old != new {
            let added: Vec<_> = new
                .difference(&old)
                .map(|(t, s)| format!("{t} ({s})"))
                .collect();
            let removed: Vec<_> = old
                .difference(&new)
                .map(|(t, s)| format!("{t} ({s})"))
                .collect();
            tracing::info!(added = ?added, removed = ?removed, "tools changed");
        }
        self.router.install(table);
    }

    fn slot(&self, service: &str) -> Result<&Arc<Slot>, CallError> {
        self.slots
            .get(service)
            .ok_or_else(|| CallError::UnknownService {
                service: service.to_owned(),
                exists: false,
            })
    }
}

/// The manager's own state; dropping it (with the last handle) kills
/// every extension.
#[derive(Debug)]
struct Inner {
    services: Arc<Services>,
    supervisors: Mutex<JoinSet<()>>,
    settling: Mutex<Vec<Settling>>,
    /// Set by the first `spawn_all`: a manager starts its services once.
    begun: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The supervisors go with `self.supervisors` (aborted); nothing
        // restarts what is killed here.
        self.services.shutdown.cancel();
        for slot in self.services.slots.values() {
            if let Some(started) = slot.take(Some(Unavailable::ShuttingDown)) {
                started.kill();
            }
        }
    }
}

/// Why an operator's command ([`ServiceManager::restart`] and the like)
/// was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No such service is managed.
    #[error("unknown service: {0}")]
    UnknownService(String),
    /// The manager has not started its services yet.
    #[error("the services have not been started yet")]
    NotStarted,
    /// The manager is shutting down.
    #[error("shutting down")]
    ShuttingDown,
}

/// What [`ServiceManager::start`] achieved.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct StartReport {
    /// Services that are ready (extensions) or running (gateways).
    pub ready: Vec<String>,
    /// Services that did not start, with why (the same error their status
    /// carries).
    pub failed: Vec<(String, Arc<StartError>)>,
}

/// Starts, routes to, supervises and stops a set of extension services.
///
/// Cheap to clone; clones share the services. A manager starts its
/// services once: calling [`start`](Self::start) (or
/// [`spawn_all`](Self::spawn_all)) again, or after
/// [`shutdown_all`](Self::shutdown_all), does nothing.
///
/// Dropping the last clone kills every extension at once (SIGKILL to each
/// process group) and removes their sockets; call
/// [`shutdown_all`](Self::shutdown_all) first for a graceful stop. Routers
/// outliving the manager then answer `unavailable`.
#[derive(Debug, Clone)]
pub struct ServiceManager {
    inner: Arc<Inner>,
}

impl ServiceManager {
    /// A builder for a manager of the enabled services of `configs`.
    pub fn builder(configs: &BTreeMap<String, ServiceConfig>) -> Builder {
        Builder::new(configs)
    }

    fn shared(&self) -> &Services {
        &self.inner.services
    }

    /// Spawns, handshakes and supervises every enabled service, all
    /// concurrently.
    pub async fn start(&self) -> StartReport {
        self.spawn_all();
        self.handshake_all().await
    }

    /// The router: a `tower::Service<ToolCall>` over every extension.
    pub fn router(&self) -> Router {
        self.shared().router.clone()
    }

    /// The tool schemas of every known extension, each with its owner, in
    /// service-name order: ready to hand to an LLM API.
    pub fn tools(&self) -> Vec<RegisteredTool> {
        self.shared().router.tools()
    }

    /// Tools declared by more than one extension, and who kept them.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.shared().router.conflicts()
    }

    /// Declared tools that are not advertised (an empty name, control
    /// characters, a name outside `^[a-zA-Z0-9_-]{1,64}$` unless
    /// `tool_names` is `any`, a name declared twice, `parameters` that are
    /// not an object schema), each with why, in service-name order.
    pub fn left_out(&self) -> Vec<LeftOut> {
        self.shared().router.table().left_out().to_vec()
    }

    /// The names of the managed (enabled) services.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.shared().slots.keys().map(String::as_str)
    }

    /// The status of one service, with the tools of it that are left out.
    pub fn status(&self, service: &str) -> Option<ServiceStatus> {
        let slot = self.shared().slots.get(service)?;
        Some(self.with_left_out(slot.status(), service))
    }

    /// The status of every service, by name.
    pub fn statuses(&self) -> BTreeMap<String, ServiceStatus> {
        self.shared()
            .slots
            .iter()
            .map(|(n, s)| (n.clone(), self.with_left_out(s.status(), n)))
            .collect()
    }

    fn with_left_out(&self, mut status: ServiceStatus, service: &str) -> ServiceStatus {
        let table = self.shared().router.table();
        status.tools_left_out = table
            .left_out()
            .iter()
            .filter(|l| l.service == service)
            .cloned()
            .collect();
        status
    }

    /// A receiver of one service's status changes.
    pub fn subscribe(&self, service: &str) -> Option<watch::Receiver<ServiceStatus>> {
        self.shared()
            .slots
            .get(service)
            .map(|s| s.status.subscribe())
    }

    /// Waits until `service`'s status satisfies `pred`, and returns it;
    /// `None` for an unknown service.
    pub async fn wait_for(
        &self,
        service: &str,
        mut pred: impl FnMut(&ServiceStatus) -> bool,
    ) -> Option<ServiceStatus> {
        let mut rx = self.subscribe(service)?;
        let status = rx.wait_for(|s| pred(s)).await.ok()?.clone();
        Some(status)
    }

    async fn request(&self, service: &str, req: ExtRequest) -> Result<Msg, CallError> {
        self.shared().slot(service)?.endpoint.request(req).await
    }

    /// Sends a service query to `service` (it must declare the query
    /// capability), under its call timeout.
    pub async fn query(&self, service: &str, query: &str) -> Result<String, CallError> {
        let slot = self.shared().slot(service)?;
        if slot.endpoint.is_ready() && !slot.has_query() {
            return Err(CallError::UnknownService {
                service: service.to_owned(),
                exists: true,
            });
        }
        match self
            .request(service, ExtRequest::service_query(query))
            .await?
        {
            Msg::ServiceQueryResult(r) => Ok(r.result),
            other => Err(slot
                .endpoint
                .unexpected(RequestKind::ServiceQuery, kind_of(other))),
        }
    }

    /// Asks `service` for its configuration's JSON Schema, under its call
    /// timeout.
    pub async fn schema(&self, service: &str) -> Result<String, CallError> {
        let slot = self.shared().slot(service)?;
        match self.request(service, ExtRequest::get_schema()).await? {
            Msg::SchemaResult(r) => Ok(r.schema),
            other => Err(slot
                .endpoint
                .unexpected(RequestKind::GetSchema, kind_of(other))),
        }
    }

    /// Stops `service` if it runs, then starts it at once (no backoff), and
    /// clears its crash-loop breaker: the way back from `failed`. Returns
    /// its status once the start has settled (ready, or down with why).
    ///
    /// # Errors
    ///
    /// [`ControlError`] for an unknown service, before
    /// [`start`](Self::start), or during shutdown.
    pub async fn restart(&self, service: &str) -> Result<ServiceStatus, ControlError> {
        self.command(service, Command::Restart).await
    }

    /// Stops `service` gracefully (`shutdown`, SIGTERM, SIGKILL); it stays
    /// `stopped`, whatever its restart policy, until
    /// [`start_service`](Self::start_service) or [`restart`](Self::restart).
    ///
    /// # Errors
    ///
    /// As for [`restart`](Self::restart).
    pub async fn stop_service(&self, service: &str) -> Result<ServiceStatus, ControlError> {
        self.command(service, Command::Stop).await
    }

    /// Starts `service` if it is not running (stopped, failed, or waiting
    /// to restart), clearing its breaker; a running service is left alone.
    ///
    /// # Errors
    ///
    /// As for [`restart`](Self::restart).
    pub async fn start_service(&self, service: &str) -> Result<ServiceStatus, ControlError> {
        self.command(service, Command::Start).await
    }

    async fn command(
        &self,
        service: &str,
        command: Command,
    ) -> Result<ServiceStatus, ControlError> {
        let shared = self.shared();
        let slot = shared
            .slots
            .get(service)
            .ok_or_else(|| ControlError::UnknownService(service.to_owned()))?;
        if shared.shutdown.is_cancelled() {
            return Err(ControlError::ShuttingDown);
        }
        if !self.inner.begun.load(Ordering::SeqCst) {
            return Err(ControlError::NotStarted);
        }
        let (done, finished) = oneshot::channel();
        slot.control
            .send(Control { command, done })
            .map_err(|_| ControlError::ShuttingDown)?;
        finished.await.map_err(|_| ControlError::ShuttingDown)?;
        Ok(slot.status())
    }

    /// Stops supervising and shuts every service down gracefully, all in
    /// parallel: `shutdown`, then SIGTERM, then SIGKILL, each after the
    /// service's grace period. Returns how each ended.
    ///
    /// A restart in progress is finished (at most its handshake timeout)
    /// and then stopped the same way.
    pub async fn shutdown_all(&self) -> BTreeMap<String, StopOutcome> {
        let services = self.shared();
        services.shutdown.cancel();
        // Calls held for tools not known yet are answered now.
        services.rebuild_table();
        let mut supervisors =
            std::mem::take(&mut *self.inner.supervisors.lock().expect("lock poisoned"));
        while supervisors.join_next().await.is_some() {}
        let stops = services.slots.values().filter_map(|slot| {
            let started = slot.take(Some(Unavailable::ShuttingDown))?;
            let grace = slot.config.shutdown_grace();
            Some(async move {
                let outcome = started.stop(grace).await;
                slot.set_status(|s| {
                    s.state = ServiceState::Stopped;
                    s.pid = None;
                });
                (slot.name.clone(), outcome)
            })
        });
        futures_util::future::join_all(stops)
            .await
            .into_iter()
            .filter_map(|(name, outcome)| Some((name, outcome?)))
            .collect()
    }
}

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
//! println!("{answer}");
//! manager.shutdown_all().await;
//! # Ok(()) }
//! ```
//!
//! [`spawn_all`]: ServiceManager::spawn_all
//! [`handshake_all`]: ServiceManager::handshake_all
//! [`shutdown_all`]: ServiceManager::shutdown_all
//! [`start`]: ServiceManager::start
//! [`CallError::Unavailable`]: crate::CallError::Unavailable

mod slot;
mod supervisor;

pub use slot::{ServiceState, ServiceStatus};
pub use supervisor::RestartLimits;

pub(crate) use slot::Slot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ServiceConfig;
use crate::connector::{Connector, Spawned, Started, Target};
use crate::error::{CallError, StartError};
use crate::process::{Paths, StopOutcome};
use crate::proto::{ext_response::Msg, ExtRequest, ExtResponse};
use crate::registry::{Conflict, RegisteredTool, Table};
use crate::router::{Router, ToolCall};
use crate::stack::ExtensionService;

/// A service spawned by `spawn_all`, waiting for `handshake_all`.
type SpawnedSlot = (Arc<Slot>, Result<Spawned, StartError>);

pub(crate) struct Shared {
    pub(crate) connector: Connector,
    pub(crate) slots: BTreeMap<String, Arc<Slot>>,
    pub(crate) table: RwLock<Arc<Table<Slot>>>,
    pub(crate) limits: RestartLimits,
    pub(crate) shutdown: CancellationToken,
    supervisors: Mutex<JoinSet<()>>,
    spawned: Mutex<Vec<SpawnedSlot>>,
    /// Set by the first `spawn_all`: a manager starts its services once.
    begun: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("services", &self.slots.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn table(&self) -> Arc<Table<Slot>> {
        self.table.read().expect("table lock poisoned").clone()
    }

    /// Installs a started incarnation and, if its tools changed, swaps in a
    /// new routing table.
    pub(crate) fn install(&self, slot: &Arc<Slot>, generation: u64, started: Started) {
        match slot.install(generation, started) {
            Ok(true) => self.rebuild_table(),
            Ok(false) => {}
            Err(stale) => {
                tracing::warn!(service = %slot.name, "a newer start won; stopping the older one");
                tokio::spawn(async move {
                    let stale = *stale;
                    let svc = stale.extension.map(|e| e.service);
                    stale.process.stop(svc, Duration::ZERO).await;
                });
            }
        }
    }

    fn rebuild_table(&self) {
        let lives: Vec<_> = self
            .slots
            .values()
            .map(|slot| {
                (
                    slot,
                    slot.live.read().expect("slot lock poisoned").tools.clone(),
                )
            })
            .collect();
        let table = Table::build(
            lives
                .iter()
                .map(|(slot, tools)| (slot.name.as_str(), tools.as_slice(), *slot)),
        );
        *self.table.write().expect("table lock poisoned") = Arc::new(table);
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

/// What [`ServiceManager::start`] achieved.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct StartReport {
    /// Services that are ready (extensions) or running (gateways).
    pub ready: Vec<String>,
    /// Services that did not start, with why.
    pub failed: Vec<(String, StartError)>,
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
    shared: Arc<Shared>,
    _kill_on_drop: Arc<KillOnDrop>,
}

/// Kills every extension when the last [`ServiceManager`] clone goes.
#[derive(Debug)]
struct KillOnDrop(Arc<Shared>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.shutdown.cancel();
        for slot in self.0.slots.values() {
            if let Some(started) = slot.take() {
                let _ = started.process.signal(nix::sys::signal::Signal::SIGKILL);
                if let Some(socket) = started.process.socket() {
                    let _ = std::fs::remove_file(socket);
                }
            }
        }
    }
}

impl ServiceManager {
    /// A manager for the enabled services of `configs`, with sockets in
    /// `<config_dir>/services` and logs in `<config_dir>/logs`, as the
    /// reference laid them out. Starts nothing yet.
    pub fn new(
        configs: &BTreeMap<String, ServiceConfig>,
        config_dir: &Path,
        daemon_socket: PathBuf,
    ) -> Self {
        Self::with_paths(configs, Paths::under(config_dir, daemon_socket))
    }

    /// A manager with explicit socket and log folders.
    pub fn with_paths(configs: &BTreeMap<String, ServiceConfig>, paths: Paths) -> Self {
        Self::with_limits(configs, paths, RestartLimits::default())
    }

    /// A manager with explicit restart pacing.
    pub fn with_limits(
        configs: &BTreeMap<String, ServiceConfig>,
        paths: Paths,
        limits: RestartLimits,
    ) -> Self {
        let slots = configs
            .iter()
            .filter(|(_, c)| c.enabled)
            .map(|(name, c)| (name.clone(), Arc::new(Slot::new(name.clone(), c.clone()))))
            .collect();
        let shared = Arc::new(Shared {
            connector: Connector::new(paths),
            slots,
            table: RwLock::new(Arc::new(Table::default())),
            limits,
            shutdown: CancellationToken::new(),
            supervisors: Mutex::new(JoinSet::new()),
            spawned: Mutex::new(Vec::new()),
            begun: AtomicBool::new(false),
        });
        ServiceManager {
            _kill_on_drop: Arc::new(KillOnDrop(shared.clone())),
            shared,
        }
    }

    /// Spawns every enabled service's process. Failures are kept and
    /// reported by [`handshake_all`](Self::handshake_all).
    pub fn spawn_all(&self) {
        if self.shared.begun.swap(true, Ordering::SeqCst) || self.shared.shutdown.is_cancelled() {
            tracing::warn!("spawn_all: this manager has already started its services");
            return;
        }
        let mut spawned = self.shared.spawned.lock().expect("lock poisoned");
        for slot in self.shared.slots.values() {
            let target = Target::new(slot.name.clone(), slot.config.clone());
            spawned.push((slot.clone(), self.shared.connector.spawn(target)));
        }
    }

    /// Connects to every spawned service and runs the handshakes, all
    /// concurrently; then supervises them. Returns what started.
    pub async fn handshake_all(&self) -> StartReport {
        let spawned = std::mem::take(&mut *self.shared.spawned.lock().expect("lock poisoned"));
        let readies = spawned.into_iter().map(|(slot, spawned)| async move {
            let generation = slot.next_generation();
            let result = match spawned {
                Ok(s) => s.ready().await,
                Err(e) => Err(e),
            };
            (slot, generation, result)
        });
        let results = futures_util::future::join_all(readies).await;
        let mut report = StartReport::default();
        let mut supervisors = self.shared.supervisors.lock().expect("lock poisoned");
        for (slot, generation, result) in results {
            let first_error = match result {
                Ok(started) => {
                    self.shared.install(&slot, generation, started);
                    report.ready.push(slot.name.clone());
                    None
                }
                Err(e) => {
                    tracing::warn!(service = %slot.name, error = %e, "service did not start");
                    let text = e.to_string();
                    report.failed.push((slot.name.clone(), e));
                    Some(text)
                }
            };
            supervisors.spawn(supervisor::supervise(
                self.shared.clone(),
                slot,
                first_error,
            ));
        }
        report
    }

    /// Spawns, handshakes and supervises every enabled service, all
    /// concurrently.
    pub async fn start(&self) -> StartReport {
        self.spawn_all();
        self.handshake_all().await
    }

    /// The router: a `tower::Service<ToolCall>` over every extension.
    pub fn router(&self) -> Router {
        Router::new(self.shared.clone())
    }

    /// The tool schemas of every known extension, each with its owner, in
    /// service-name order: ready to hand to an LLM API.
    pub fn tools(&self) -> Vec<RegisteredTool> {
        self.shared.table().tools.clone()
    }

    /// Tools declared by more than one extension, and who kept them.
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.shared.table().conflicts.clone()
    }

    /// The names of the managed (enabled) services.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.shared.slots.keys().map(String::as_str)
    }

    /// The status of one service.
    pub fn status(&self, service: &str) -> Option<ServiceStatus> {
        self.shared.slots.get(service).map(|s| s.status())
    }

    /// The status of every service, by name.
    pub fn statuses(&self) -> BTreeMap<String, ServiceStatus> {
        self.shared
            .slots
            .iter()
            .map(|(n, s)| (n.clone(), s.status()))
            .collect()
    }

    /// A receiver of one service's status changes.
    pub fn subscribe(&self, service: &str) -> Option<watch::Receiver<ServiceStatus>> {
        self.shared.slots.get(service).map(|s| s.status.subscribe())
    }

    /// Waits until `service`'s status satisfies `pred`, and returns it.
    pub async fn wait_for(
        &self,
        service: &str,
        mut pred: impl FnMut(&ServiceStatus) -> bool,
    ) -> Option<ServiceStatus> {
        let mut rx = self.subscribe(service)?;
        let status = rx.wait_for(|s| pred(s)).await.ok()?.clone();
        Some(status)
    }

    /// Calls a tool and answers with the reference's strings: the result,
    /// or `service error: …`, `service unavailable: …`, `service timeout:
    /// …`; `None` when no extension offers the tool.
    pub async fn dispatch_tool(
        &self,
        name: &str,
        args: &str,
        agent: &str,
        task_id: Option<u64>,
    ) -> Option<String> {
        let call = ToolCall::new(name, args).agent(agent).task_id(task_id);
        match self.router().oneshot(call).await {
            Ok(result) => Some(result),
            Err(CallError::UnknownTool { .. }) => None,
            Err(CallError::Timeout { service, .. }) => Some(format!("service timeout: {service}")),
            Err(e) => Some(e.to_string()),
        }
    }

    async fn request(&self, service: &str, req: ExtRequest) -> Result<Msg, CallError> {
        let slot = self.shared.slot(service)?;
        let svc = slot.service().ok_or_else(|| unavailable(slot))?;
        call_slot(slot, svc, req).await
    }

    /// Sends a service query to `service` (it must declare the query
    /// capability), under its call timeout.
    pub async fn query(&self, service: &str, query: &str) -> Result<String, CallError> {
        let slot = self.shared.slot(service)?;
        if slot.service().is_some() && !slot.has_query() {
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
            other => Err(unexpected(service, other)),
        }
    }

    /// Asks `service` for its configuration's JSON Schema, under its call
    /// timeout.
    pub async fn schema(&self, service: &str) -> Result<String, CallError> {
        match self.request(service, ExtRequest::get_schema()).await? {
            Msg::SchemaResult(r) => Ok(r.schema),
            other => Err(unexpected(service, other)),
        }
    }

    /// Stops supervising and shuts every service down gracefully, all in
    /// parallel: `shutdown`, then SIGTERM, then SIGKILL, each after the
    /// service's grace period. Returns how each ended.
    ///
    /// A restart in progress is finished (at most its handshake timeout)
    /// and then stopped the same way.
    pub async fn shutdown_all(&self) -> BTreeMap<String, StopOutcome> {
        self.shared.shutdown.cancel();
        let mut supervisors =
            std::mem::take(&mut *self.shared.supervisors.lock().expect("lock poisoned"));
        while supervisors.join_next().await.is_some() {}
        let stops = self.shared.slots.values().filter_map(|slot| {
            let started = slot.take()?;
            let grace = slot.config.shutdown_grace();
            Some(async move {
                let svc = started.extension.map(|e| e.service);
                let outcome = started.process.stop(svc, grace).await;
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
            .collect()
    }
}

/// Sends `req` through `svc`, the stack of `slot`'s extension, and returns
/// the answer's message; an `error` answer is [`CallError::Extension`], a
/// failure of the stack is mapped by [`CallError::from_stack`].
pub(crate) async fn call_slot(
    slot: &Slot,
    svc: ExtensionService,
    req: ExtRequest,
) -> Result<Msg, CallError> {
    let resp = svc
        .oneshot(req)
        .await
        .map_err(|e| CallError::from_stack(&slot.name, slot.config.call_timeout(), e))?;
    match resp.msg {
        Some(Msg::Error(e)) => Err(CallError::Extension {
            service: slot.name.clone(),
            message: e.message,
        }),
        Some(msg) => Ok(msg),
        None => Err(CallError::Protocol {
            service: slot.name.clone(),
            reason: "empty response".to_owned(),
        }),
    }
}

/// An answer of a kind the request does not take. The connection already
/// refuses those; this keeps the mapping total.
pub(crate) fn unexpected(service: &str, msg: Msg) -> CallError {
    let resp = ExtResponse {
        msg: Some(msg),
        ..Default::default()
    };
    CallError::Protocol {
        service: service.to_owned(),
        reason: format!("unexpected `{}` response", resp.kind_name()),
    }
}

pub(crate) fn unavailable(slot: &Slot) -> CallError {
    let status = slot.status();
    let reason = match (status.state, &status.error) {
        // Taken out of service a moment before its status says so.
        (ServiceState::Ready, _) => "going down".to_owned(),
        (state, Some(e)) => format!("{}: {e}", state.as_str()),
        (state, None) => state.as_str().to_owned(),
    };
    CallError::Unavailable {
        service: slot.name.clone(),
        reason,
        delivered: false,
    }
}

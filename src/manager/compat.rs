//! The reference-compatible surface: `new(configs, config_dir,
//! daemon_socket)`, the two-phase `spawn_all` / `handshake_all`, and
//! `dispatch_tool` with the reference's strings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tower::ServiceExt;

use tokio::sync::oneshot;

use super::{supervisor, RestartLimits, ServiceManager, StartReport};
use crate::config::ServiceConfig;
use crate::connector::Target;
use crate::process::Paths;
use crate::router::{CallError, ToolCall};

impl ServiceManager {
    /// A manager for the enabled services of `configs`, with sockets in
    /// `<config_dir>/services` and logs in `<config_dir>/logs`, as the
    /// reference laid them out. Starts nothing yet.
    pub fn new(
        configs: &BTreeMap<String, ServiceConfig>,
        config_dir: &Path,
        daemon_socket: PathBuf,
    ) -> Self {
        Self::builder(configs)
            .config_dir(config_dir, daemon_socket)
            .build()
    }

    /// A manager with explicit socket and log folders.
    pub fn with_paths(configs: &BTreeMap<String, ServiceConfig>, paths: Paths) -> Self {
        Self::builder(configs).paths(paths).build()
    }

    /// A manager with explicit restart pacing.
    pub fn with_limits(
        configs: &BTreeMap<String, ServiceConfig>,
        paths: Paths,
        limits: RestartLimits,
    ) -> Self {
        Self::builder(configs).paths(paths).limits(limits).build()
    }

    /// Spawns every enabled service's process, and a supervisor per
    /// service that runs its handshake and keeps it alive. Failures are
    /// kept and reported by [`handshake_all`](Self::handshake_all).
    ///
    /// Each service is routed the moment it is ready. From here until
    /// every service's first start has settled, the router holds calls to
    /// tools it does not know yet instead of failing them (see
    /// [`Router`](crate::router::Router)). Must be called inside a tokio
    /// runtime.
    pub fn spawn_all(&self) {
        let shared = self.shared();
        if self.inner.begun.swap(true, Ordering::SeqCst) || shared.shutdown.is_cancelled() {
            tracing::warn!("spawn_all: this manager has already started its services");
            return;
        }
        shared.unsettled.store(shared.slots.len(), Ordering::SeqCst);
        shared.rebuild_table();
        let mut settling = self.inner.settling.lock().expect("lock poisoned");
        let mut supervisors = self.inner.supervisors.lock().expect("lock poisoned");
        for slot in shared.slots.values() {
            let target = Target::new(slot.name.clone(), slot.config.clone());
            let spawned = shared.connector.spawn(target);
            let commands = slot.commands.lock().expect("lock poisoned").take();
            let commands = commands.expect("a service is supervised once");
            let (settled, outcome) = oneshot::channel();
            settling.push((slot.name.clone(), outcome));
            supervisors.spawn(supervisor::supervise(
                self.inner.services.clone(),
                slot.clone(),
                spawned,
                commands,
                settled,
            ));
        }
    }

    /// Waits until every service spawned by [`spawn_all`](Self::spawn_all)
    /// has finished its first start (handshakes run concurrently); returns
    /// what started.
    pub async fn handshake_all(&self) -> StartReport {
        let settling = std::mem::take(&mut *self.inner.settling.lock().expect("lock poisoned"));
        let mut report = StartReport::default();
        for (name, outcome) in settling {
            match outcome.await {
                Ok(Ok(())) => report.ready.push(name),
                Ok(Err(e)) => report.failed.push((name, e)),
                // The supervisor was aborted: the manager is being dropped.
                Err(_) => {}
            }
        }
        report
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
            Ok(result) => Some(result.into_text()),
            Err(CallError::UnknownTool { .. }) => None,
            Err(CallError::Timeout { service, .. }) => Some(format!("service timeout: {service}")),
            Err(e) => Some(e.to_string()),
        }
    }
}

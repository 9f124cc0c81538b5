//! The reference-compatible surface: `new(configs, config_dir,
//! daemon_socket)`, the two-phase `spawn_all` / `handshake_all`, and
//! `dispatch_tool` with the reference's strings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tower::ServiceExt;

use super::{supervisor, RestartLimits, ServiceManager, StartReport};
use crate::config::ServiceConfig;
use crate::connector::Target;
use crate::process::Paths;
use crate::router::{CallError, ToolCall};
use crate::status::DownReason;

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

    /// Spawns every enabled service's process. Failures are kept and
    /// reported by [`handshake_all`](Self::handshake_all).
    pub fn spawn_all(&self) {
        let shared = self.shared();
        if self.inner.begun.swap(true, Ordering::SeqCst) || shared.shutdown.is_cancelled() {
            tracing::warn!("spawn_all: this manager has already started its services");
            return;
        }
        let mut spawned = self.inner.spawned.lock().expect("lock poisoned");
        for slot in shared.slots.values() {
            let target = Target::new(slot.name.clone(), slot.config.clone());
            spawned.push((slot.clone(), shared.connector.spawn(target)));
        }
    }

    /// Connects to every spawned service and runs the handshakes, all
    /// concurrently; then supervises them. Returns what started.
    pub async fn handshake_all(&self) -> StartReport {
        let spawned = std::mem::take(&mut *self.inner.spawned.lock().expect("lock poisoned"));
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
        let mut supervisors = self.inner.supervisors.lock().expect("lock poisoned");
        for (slot, generation, result) in results {
            let first_error = match result {
                Ok(started) => {
                    self.shared().install(&slot, generation, started);
                    report.ready.push(slot.name.clone());
                    None
                }
                Err(e) => {
                    tracing::warn!(service = %slot.name, error = %e, "service did not start");
                    let e = Arc::new(e);
                    report.failed.push((slot.name.clone(), e.clone()));
                    Some(DownReason::StartFailed(e))
                }
            };
            let commands = slot.commands.lock().expect("lock poisoned").take();
            let commands = commands.expect("a service is supervised once");
            supervisors.spawn(supervisor::supervise(
                self.inner.services.clone(),
                slot,
                first_error,
                commands,
            ));
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
            Ok(result) => Some(result),
            Err(CallError::UnknownTool { .. }) => None,
            Err(CallError::Timeout { service, .. }) => Some(format!("service timeout: {service}")),
            Err(e) => Some(e.to_string()),
        }
    }
}

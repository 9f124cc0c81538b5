//! One service's live state: its current incarnation, last known tools and
//! status.

use std::sync::RwLock;

use serde::Serialize;
use tokio::sync::watch;

use crate::config::ServiceConfig;
use crate::connector::Started;
use crate::stack::ExtensionService;
use crate::tool::Tool;

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// Being started for the first time.
    Starting,
    /// Handshaken and taking calls.
    Ready,
    /// Down, and being started again.
    Restarting,
    /// Down for good (policy, crash loop, or a start that failed).
    Failed,
    /// Stopped by the host, or exited cleanly with no restart due.
    Stopped,
}

impl ServiceState {
    /// The state's name: `starting`, `ready`, `restarting`, `failed` or
    /// `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Starting => "starting",
            ServiceState::Ready => "ready",
            ServiceState::Restarting => "restarting",
            ServiceState::Failed => "failed",
            ServiceState::Stopped => "stopped",
        }
    }
}

/// A service's status, as callers and the `exthost` command see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    /// Where it is in its life.
    pub state: ServiceState,
    /// The current process id, while one runs.
    pub pid: Option<u32>,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Why it is failed, restarting or stopped, if it went down.
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) generation: u64,
    pub(crate) started: Option<Started>,
    /// The tools it declared last time it was ready; its routes keep them
    /// through an outage, so callers get `unavailable`, not `unknown tool`.
    pub(crate) tools: Vec<Tool>,
    pub(crate) query: bool,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) config: ServiceConfig,
    pub(crate) live: RwLock<Live>,
    pub(crate) status: watch::Sender<ServiceStatus>,
}

impl Slot {
    pub(crate) fn new(name: String, config: ServiceConfig) -> Self {
        let (status, _) = watch::channel(ServiceStatus {
            state: ServiceState::Starting,
            pid: None,
            restarts: 0,
            error: None,
        });
        Slot {
            name,
            config,
            live: RwLock::new(Live::default()),
            status,
        }
    }

    /// The request stack, while the service is ready.
    pub(crate) fn service(&self) -> Option<ExtensionService> {
        let live = self.live.read().expect("slot lock poisoned");
        let ext = live.started.as_ref()?.extension.as_ref()?;
        Some(ext.service.clone())
    }

    pub(crate) fn started(&self) -> Option<Started> {
        self.live
            .read()
            .expect("slot lock poisoned")
            .started
            .clone()
    }

    pub(crate) fn has_query(&self) -> bool {
        self.live.read().expect("slot lock poisoned").query
    }

    /// A new generation for the next start.
    pub(crate) fn next_generation(&self) -> u64 {
        let mut live = self.live.write().expect("slot lock poisoned");
        live.generation += 1;
        live.generation
    }

    /// Installs `started` as generation `generation`, unless a newer
    /// generation has begun since (an older, slower start never overwrites
    /// a newer one). Returns whether it was installed and whether the tool
    /// list changed.
    pub(crate) fn install(&self, generation: u64, started: Started) -> Result<bool, Box<Started>> {
        let mut live = self.live.write().expect("slot lock poisoned");
        if generation < live.generation {
            return Err(Box::new(started));
        }
        live.generation = generation;
        let (tools, query) = match &started.extension {
            Some(ext) => (ext.info.tools.clone(), ext.info.has_query()),
            None => (Vec::new(), false),
        };
        let changed = tools != live.tools;
        live.tools = tools;
        live.query = query;
        let pid = started.process.pid();
        live.started = Some(started);
        drop(live);
        self.set_status(|s| {
            s.state = ServiceState::Ready;
            s.pid = Some(pid);
            s.error = None;
        });
        Ok(changed)
    }

    /// Takes the current incarnation out: calls fail at once from now on.
    pub(crate) fn take(&self) -> Option<Started> {
        self.live
            .write()
            .expect("slot lock poisoned")
            .started
            .take()
    }

    pub(crate) fn status(&self) -> ServiceStatus {
        self.status.borrow().clone()
    }

    pub(crate) fn set_status(&self, change: impl FnOnce(&mut ServiceStatus)) {
        self.status.send_modify(change);
        let s = self.status.borrow();
        tracing::info!(
            service = %self.name,
            state = ?s.state,
            pid = s.pid,
            restarts = s.restarts,
            error = s.error.as_deref(),
            "service status"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceKind;
    use crate::process::{self, Paths};

    fn started(dir: &std::path::Path, name: &str) -> Started {
        let mut cfg = ServiceConfig::command("/bin/true");
        cfg.kind = ServiceKind::Gateway;
        let paths = Paths::under(dir, dir.join("d.sock"));
        Started {
            name: name.to_owned(),
            process: process::spawn(name, &cfg, &paths).unwrap(),
            extension: None,
        }
    }

    #[tokio::test]
    async fn an_older_generation_never_overwrites_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let slot = Slot::new("svc".into(), ServiceConfig::command("/bin/true"));
        let old = slot.next_generation();
        let new = slot.next_generation();
        let newer = started(dir.path(), "svc");
        let newer_pid = newer.process.pid();
        assert!(slot.install(new, newer).is_ok());
        // The older, slower start finishes last: it is refused.
        let stale = started(dir.path(), "svc");
        let stale_pid = stale.process.pid();
        let refused = slot.install(old, stale).unwrap_err();
        assert_eq!(refused.process.pid(), stale_pid);
        assert_eq!(slot.started().unwrap().process.pid(), newer_pid);
        assert_eq!(slot.status().pid, Some(newer_pid));
    }
}

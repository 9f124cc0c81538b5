//! One service's live state: its current incarnation, last known tools and
//! status.

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, watch};

use super::supervisor::Control;

use crate::config::ServiceConfig;
use crate::connector::Started;
use crate::router::{Endpoint, Unavailable};
use crate::status::{ServiceState, ServiceStatus};
use crate::tool::{RejectedTool, Tool};

#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) generation: u64,
    pub(crate) started: Option<Started>,
    /// The tools it declared last time it was ready; its routes keep them
    /// through an outage, so callers get `unavailable`, not `unknown tool`.
    pub(crate) tools: Vec<Tool>,
    /// The tools it declared that were rejected for their definitions.
    pub(crate) rejected: Vec<RejectedTool>,
    pub(crate) query: bool,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) config: ServiceConfig,
    /// What the router routes to; kept in step with `live` and `status`.
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) live: RwLock<Live>,
    pub(crate) status: watch::Sender<ServiceStatus>,
    /// Operators' commands to the supervisor.
    pub(crate) control: mpsc::UnboundedSender<Control>,
    /// Taken by the supervisor when it starts.
    pub(crate) commands: Mutex<Option<mpsc::UnboundedReceiver<Control>>>,
}

impl Slot {
    pub(crate) fn new(name: String, config: ServiceConfig) -> Self {
        let (status, _) = watch::channel(ServiceStatus {
            state: ServiceState::Starting,
            pid: None,
            restarts: 0,
            error: None,
            tools_left_out: Vec::new(),
            tools_hidden: 0,
            restrictions: Vec::new(),
        });
        let endpoint = Endpoint::new(name.as_str())
            .with_max_queued(config.max_queued)
            .with_kind(config.kind)
            .with_prefix(config.prefix.as_deref());
        let (control, commands) = mpsc::unbounded_channel();
        Slot {
            name,
            config,
            endpoint: Arc::new(endpoint),
            live: RwLock::new(Live::default()),
            status,
            control,
            commands: Mutex::new(Some(commands)),
        }
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
        let (tools, rejected, query) = match &started.extension {
            Some(ext) => (
                self.routed(ext.info.tools.clone()),
                ext.info.rejected.clone(),
                ext.info.has_query(),
            ),
            None => (Vec::new(), Vec::new(), false),
        };
        let changed = tools != live.tools || rejected != live.rejected;
        live.tools = tools;
        live.rejected = rejected;
        live.query = query;
        let pid = started.pid();
        let hidden = started
            .extension
            .as_ref()
            .map_or(0, |ext| ext.hidden_tools.len());
        let mut restrictions = started
            .process
            .as_ref()
            .map(|p| p.restrictions().to_vec())
            .unwrap_or_default();
        // Listed by the spawn for a process; here for a remote server.
        if let Some(tools) = self.config.tools.as_ref().map(ToString::to_string) {
            if !restrictions.contains(&tools) {
                restrictions.push(tools);
            }
        }
        if let Some(ext) = &started.extension {
            self.endpoint.set_ready(ext.service.clone());
        }
        live.started = Some(started);
        drop(live);
        self.set_status(|s| {
            s.state = ServiceState::Ready;
            s.pid = pid;
            s.error = None;
            s.tools_hidden = hidden;
            s.restrictions = restrictions;
        });
        Ok(changed)
    }

    /// `tools` under the names the router gives them: with the service's
    /// `prefix`, if any.
    fn routed(&self, mut tools: Vec<Tool>) -> Vec<Tool> {
        if let Some(prefix) = self.endpoint.prefix() {
            for tool in &mut tools {
                tool.name.insert_str(0, prefix);
            }
        }
        tools
    }

    /// Replaces the tools of generation `generation` with a fresh list
    /// (an MCP server's, after it said its list changed), unless a newer
    /// generation has begun. Returns whether anything changed.
    #[cfg_attr(not(feature = "mcp"), allow(dead_code))]
    pub(crate) fn update_tools(
        &self,
        generation: u64,
        tools: Vec<Tool>,
        unreadable: Vec<crate::tool::RejectedTool>,
    ) -> bool {
        let (tools, hidden) = self.config.filter_tools(tools);
        let (tools, mut rejected) = crate::tool::partition_checked(tools);
        rejected.extend(unreadable);
        let tools = self.routed(tools);
        let mut live = self.live.write().expect("slot lock poisoned");
        if generation != live.generation || live.started.is_none() {
            return false;
        }
        let changed = live.tools != tools || live.rejected != rejected;
        if changed {
            live.tools = tools;
            live.rejected = rejected;
        }
        drop(live);
        // A change in hidden tools alone still updates their count.
        if self.status().tools_hidden != hidden.len() {
            self.set_status(|s| s.tools_hidden = hidden.len());
        }
        changed
    }

    /// Takes the current incarnation out: calls fail at once from now on,
    /// with `cause` (or the status, until it changes).
    pub(crate) fn take(&self, cause: Option<Unavailable>) -> Option<Started> {
        let mut live = self.live.write().expect("slot lock poisoned");
        let status = self.status();
        self.endpoint
            .set_unavailable(cause.unwrap_or(Unavailable::NotReady {
                state: status.state,
                reason: status.error,
            }));
        live.started.take()
    }

    pub(crate) fn status(&self) -> ServiceStatus {
        self.status.borrow().clone()
    }

    /// Changes the status; calls that find the service not ready quote it.
    pub(crate) fn set_status(&self, change: impl FnOnce(&mut ServiceStatus)) {
        self.status.send_modify(change);
        let s = self.status.borrow();
        // Ready only through `install`; a service being shut down says so.
        let shutting_down = matches!(self.endpoint.service(), Err(Unavailable::ShuttingDown));
        if s.state != ServiceState::Ready && !shutting_down {
            self.endpoint.set_unavailable(Unavailable::NotReady {
                state: s.state,
                reason: s.error.clone(),
            });
        }
        tracing::info!(
            service = %self.name,
            state = %s.state,
            pid = s.pid,
            restarts = s.restarts,
            error = s.error.as_ref().map(tracing::field::display),
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
            process: Some(process::spawn(name, &cfg, &paths).unwrap()),
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
        let newer_pid = newer.pid();
        assert!(slot.install(new, newer).is_ok());
        // The older, slower start finishes last: it is refused.
        let stale = started(dir.path(), "svc");
        let stale_pid = stale.pid();
        let refused = slot.install(old, stale).unwrap_err();
        assert_eq!(refused.pid(), stale_pid);
        assert_eq!(slot.started().unwrap().pid(), newer_pid);
        assert_eq!(slot.status().pid, newer_pid);
    }
}

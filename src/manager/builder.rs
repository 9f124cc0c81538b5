//! Configures a [`ServiceManager`]: folders, restart pacing, user layers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Layer, Service};

use super::{Inner, RestartLimits, ServiceManager, Services, Slot};
use crate::config::ServiceConfig;
use crate::connector::Connector;
use crate::process::Paths;
use crate::proto::{ExtRequest, ExtResponse};
use crate::registry::ToolNames;
use crate::router::Router;
use crate::stack::{ExtensionLayers, ExtensionService};

/// Builds a [`ServiceManager`].
///
/// # Example
///
/// ```no_run
/// use std::collections::BTreeMap;
/// use exthost::config::ServiceConfig;
/// use exthost::manager::ServiceManager;
/// use exthost::process::Paths;
///
/// # #[tokio::main] async fn main() {
/// let configs = BTreeMap::from([("search".to_owned(), ServiceConfig::krate("search-ext"))]);
/// let manager = ServiceManager::builder(&configs)
///     .paths(Paths::runtime_default())
///     // Sheds calls when the extension's in-flight slots are all taken.
///     .layer(tower::load_shed::LoadShedLayer::new())
///     .build();
/// manager.start().await;
/// # }
/// ```
pub struct Builder {
    configs: BTreeMap<String, ServiceConfig>,
    paths: Paths,
    limits: RestartLimits,
    tool_names: ToolNames,
    layers: Option<ExtensionLayers>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("services", &self.configs.keys().collect::<Vec<_>>())
            .field("paths", &self.paths)
            .field("limits", &self.limits)
            .field("tool_names", &self.tool_names)
            .field("layers", &self.layers.is_some())
            .finish()
    }
}

impl Builder {
    pub(super) fn new(configs: &BTreeMap<String, ServiceConfig>) -> Self {
        Builder {
            configs: configs.clone(),
            paths: Paths::runtime_default(),
            limits: RestartLimits::default(),
            tool_names: ToolNames::default(),
            layers: None,
        }
    }

    /// Where sockets and logs go (default: [`Paths::runtime_default`]).
    pub fn paths(mut self, paths: Paths) -> Self {
        self.paths = paths;
        self
    }

    /// Sockets in `<config_dir>/services`, logs in `<config_dir>/logs`, as
    /// the reference laid them out; gateways get `daemon_socket`.
    pub fn config_dir(
        self,
        config_dir: &Path,
        daemon_socket: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.paths(Paths::under(config_dir, daemon_socket))
    }

    /// How restarts are paced and when the crash-loop breaker trips.
    pub fn limits(mut self, limits: RestartLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Which tool names are advertised (default: only those that fit
    /// `^[a-zA-Z0-9_-]{1,64}$`; see [`ToolNames`]).
    pub fn tool_names(mut self, policy: ToolNames) -> Self {
        self.tool_names = policy;
        self
    }

    /// Adds a layer to every extension's stack, between its timeout and its
    /// connection, so it sees every call to every extension, restarts
    /// included. Layers added first are outermost.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<ExtensionService> + Send + Sync + 'static,
        L::Service: Service<ExtRequest, Response = ExtResponse> + Clone + Send + Sync + 'static,
        <L::Service as Service<ExtRequest>>::Error: Into<BoxError>,
        <L::Service as Service<ExtRequest>>::Future: Send + 'static,
    {
        self.layers = Some(crate::stack::add_layer(self.layers.take(), layer));
        self
    }

    /// Builds the manager. Starts nothing yet.
    pub fn build(self) -> ServiceManager {
        let connector = Connector::new(self.paths).with_layers(self.layers);
        let slots = self
            .configs
            .into_iter()
            .filter(|(_, c)| c.enabled)
            .map(|(name, c)| (name.clone(), Arc::new(Slot::new(name, c))))
            .collect();
        let services = Arc::new(Services {
            connector,
            slots,
            router: Router::new(),
            limits: self.limits,
            tool_names: self.tool_names,
            shutdown: CancellationToken::new(),
            unsettled: AtomicUsize::new(0),
        });
        ServiceManager {
            inner: Arc::new(Inner {
                services,
                supervisors: Mutex::new(JoinSet::new()),
                settling: Mutex::new(Vec::new()),
                begun: AtomicBool::new(false),
            }),
        }
    }
}

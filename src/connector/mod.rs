//! The connector: from a service's configuration to a ready extension.
//!
//! [`Connector`] is a `tower::Service<Target>`, usable wherever tower
//! expects a `MakeService`. Its future spawns the process, waits for its
//! socket by retrying the connect itself (1 ms, doubling to 25 ms; no
//! polling of the file), stops waiting the moment the child exits, checks
//! the peer's credentials, runs the handshake, and yields a [`Started`]
//! extension: its process handle, what it declared, a handle to the
//! connection itself, and its per-extension stack, boxed (an
//! [`ExtensionService`]) with any layers given to
//! [`Connector::layer`] inside it. Any failure stops the process it spawned
//! and says why, with the exit status and the end of the log file where
//! there is one.
//!
//! Each handshake step is bounded by the service's `handshake_timeout`
//! alone: the handshake runs over the bare connection, not through the call
//! stack and its `call_timeout`.
//!
//! An MCP service (`kind = "mcp"`, feature `mcp`) is readied the same way
//! with MCP's own steps: a `command` is spawned with its stdin and stdout
//! piped to the host (stderr to its log), and `initialize` and the full
//! `tools/list` run over them, each under `handshake_timeout`; a `url` is
//! reached over Streamable HTTP and has no process. Its [`Connected::link`]
//! is [`Link::Mcp`] and its stack wraps an
//! [`McpConnection`](crate::mcp::McpConnection).
//!
//! # Example
//!
//! ```no_run
//! use exthost::config::ServiceConfig;
//! use exthost::connector::{Connector, Target};
//! use exthost::process::Paths;
//! use tower::ServiceExt;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let connector = Connector::new(Paths::runtime_default());
//! let target = Target::new("search", ServiceConfig::krate("search-ext"));
//! let started = connector.oneshot(target).await?;
//! let ext = started.extension.expect("an extension, not a gateway");
//! println!("{} offers {} tools", started.name, ext.info.tools.len());
//! # Ok(()) }
//! ```

mod error;
#[cfg(feature = "mcp")]
mod mcp;
mod peer;

pub use error::StartError;

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::UnixStream;
use tower::{BoxError, Layer, Service};

use crate::client::Connection;
use crate::config::{ServiceConfig, ServiceKind};
use crate::handshake::{handshake, ExtensionInfo};
use crate::process::{self, Claim, Paths, ProcessHandle, SpawnError};
use crate::proto::{ExtRequest, ExtResponse};
use crate::stack::{ExtensionLayers, ExtensionService, StackBuilder};

const LOG_TAIL_LINES: usize = 20;

/// How long an exited process's last output may take to reach its log
/// (longer only if something it forked still holds its stdout).
const OUTPUT_SETTLE: Duration = Duration::from_millis(500);

/// What to start: a service's name and configuration.
#[derive(Debug, Clone)]
pub struct Target {
    /// The service name (the `<name>` of `[services.<name>]`).
    pub name: String,
    /// Its configuration.
    pub config: ServiceConfig,
}

impl Target {
    /// A target.
    pub fn new(name: impl Into<String>, config: ServiceConfig) -> Self {
        Target {
            name: name.into(),
            config,
        }
    }
}

/// A started service.
#[derive(Debug, Clone)]
pub struct Started {
    /// The service name.
    pub name: String,
    /// Its process; `None` for a remote MCP server (`url`).
    pub process: Option<ProcessHandle>,
    /// For extensions and MCP servers: what they declared, the connection
    /// and the request stack. `None` for gateways, which are not
    /// handshaken.
    pub extension: Option<Connected>,
}

impl Started {
    /// Its process id, if it has a process.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ProcessHandle::pid)
    }

    /// Stops it gracefully and leaves nothing of it: a native extension is
    /// sent `shutdown`; an MCP server over stdio has its stdin closed; then
    /// each gets `grace` to exit before SIGTERM to its process group,
    /// `grace` again, and SIGKILL (see [`ProcessHandle::stop`]). A remote
    /// MCP server's session is ended (`DELETE`). Returns how the process
    /// ended, if there was one.
    pub async fn stop(&self, grace: Duration) -> Option<process::StopOutcome> {
        let link = self.extension.as_ref().map(|e| &e.link);
        match (&self.process, link) {
            (Some(process), Some(Link::Native(conn))) => {
                Some(process.stop(Some(conn), grace).await)
            }
            #[cfg(feature = "mcp")]
            (Some(process), Some(Link::Mcp(mcp))) => {
                let ask = async {
                    mcp.close(grace).await;
                    let _ = process.exited().await;
                };
                Some(process.stop_asking(Some(ask), grace).await)
            }
            (Some(process), None) => Some(process.stop(None, grace).await),
            #[cfg(feature = "mcp")]
            (None, Some(Link::Mcp(mcp))) => {
                mcp.close(grace).await;
                None
            }
            (None, _) => None,
        }
    }

    /// Stops what is left of an incarnation that has already ended (its
    /// connection broke or its process exited): no request to exit, just
    /// SIGTERM, `grace`, SIGKILL of what remains of its process group. Any
    /// MCP session is closed too.
    pub async fn stop_ended(&self, grace: Duration) -> Option<process::StopOutcome> {
        #[cfg(feature = "mcp")]
        if let Some(Link::Mcp(mcp)) = self.extension.as_ref().map(|e| &e.link) {
            mcp.close(Duration::ZERO).await;
        }
        match &self.process {
            Some(process) => Some(process.stop(None, grace).await),
            None => None,
        }
    }

    /// Kills its whole process group at once and removes its socket,
    /// without waiting (for a host going away).
    pub fn kill(&self) {
        if let Some(process) = &self.process {
            process.kill_group();
            process.remove_socket();
        }
    }
}

/// A handshaken extension connection or MCP session.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Connected {
    /// What the extension declared. For an MCP server: the server's name
    /// and version from `initialize`, and its tools.
    pub info: ExtensionInfo,
    /// The connection itself, for what is not a request: whether it broke
    /// ([`Link::broken`]), its load, and stopping.
    pub link: Link,
    /// Its per-extension stack: `Trace ▶ Timeout ▶ [the connector's layers]
    /// ▶ connection`.
    pub service: ExtensionService,
    /// The tools it declared that the service's `tools` filter hides: not
    /// in `info.tools`, never registered, never called.
    pub hidden_tools: Vec<String>,
}

/// The connection under a service's stack, for what is not a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Link {
    /// A native extension's connection.
    Native(Connection),
    /// An MCP session.
    #[cfg(feature = "mcp")]
    Mcp(crate::mcp::McpConnection),
}

impl Link {
    /// Resolves when the connection breaks or the session ends, with why.
    pub async fn broken(&self) -> crate::client::ConnectionError {
        match self {
            Link::Native(conn) => conn.broken().await,
            #[cfg(feature = "mcp")]
            Link::Mcp(mcp) => mcp.broken().await,
        }
    }

    /// The native connection, if this is one.
    pub fn native(&self) -> Option<&Connection> {
        match self {
            Link::Native(conn) => Some(conn),
            #[cfg(feature = "mcp")]
            Link::Mcp(_) => None,
        }
    }
}

/// Starts services: spawn, connect, check, handshake.
#[derive(Clone)]
pub struct Connector {
    paths: Arc<Paths>,
    /// The services folder, claimed at the first spawn of an extension.
    claim: Arc<OnceLock<Result<Claim, ClaimFailed>>>,
    layers: Option<ExtensionLayers>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("paths", &self.paths)
            .field("layers", &self.layers.is_some())
            .finish()
    }
}

impl Connector {
    /// A connector that puts sockets and logs where `paths` says.
    pub fn new(paths: Paths) -> Self {
        Connector {
            paths: Arc::new(paths),
            claim: Arc::default(),
            layers: None,
        }
    }

    /// Adds a layer to every per-extension stack this connector builds,
    /// between the timeout and the connection (see
    /// [`StackBuilder::layer`]). Layers added first are outermost.
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

    /// Adds already boxed layers inside those this connector has.
    pub(crate) fn with_layers(mut self, layers: Option<ExtensionLayers>) -> Self {
        self.layers = crate::stack::nest(self.layers.take(), layers);
        self
    }

    /// The stack builder for `name` with `config`'s limits and this
    /// connector's layers.
    pub fn stack(&self, name: &str, config: &ServiceConfig) -> StackBuilder {
        StackBuilder::new(name)
            .timeout(config.call_timeout())
            .max_in_flight(config.max_in_flight())
            .stuck_margin(Some(config.stuck_margin()))
            .handshake_timeout(config.handshake_timeout())
            .layers(self.layers.clone())
    }

    /// Runs the handshake over `io`, an already connected byte stream, under
    /// `config`'s `handshake_timeout` (each step), and builds the stack.
    /// For extensions reached some other way than by spawning them.
    ///
    /// # Errors
    ///
    /// [`StartError::Handshake`] naming the step and the limit that fired.
    pub async fn connect<T>(
        &self,
        name: &str,
        config: &ServiceConfig,
        io: T,
    ) -> Result<Connected, StartError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let stack = self.stack(name, config);
        let connection = stack.connection(io);
        // Over the bare connection (traced): each step is bounded by the
        // handshake timeout alone, not by the stack's call timeout.
        let mut traced = crate::trace::Trace::new(connection.clone(), Arc::from(name));
        let mut info = handshake(&mut traced, &config.config, config.handshake_timeout())
            .await
            .map_err(|source| StartError::Handshake {
                service: name.to_owned(),
                source,
            })?;
        config.warn_unmatched_tool_patterns(name, &info.tools);
        let (tools, hidden_tools) = config.filter_tools(std::mem::take(&mut info.tools));
        info.tools = tools;
        let service = stack.service(connection.clone());
        Ok(Connected {
            info,
            link: Link::Native(connection),
            service,
            hidden_tools,
        })
    }

    /// Where sockets and logs go.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// Starts one service: [`spawn`](Self::spawn), then
    /// [`Spawned::ready`].
    pub async fn start(&self, target: Target) -> Result<Started, StartError> {
        self.spawn(target)?.ready().await
    }

    /// Where this connector's sockets go: `services_dir` itself, or, when
    /// another host (or connector) already uses it, a folder of this
    /// connector's own inside it, so that two hosts started from one
    /// configuration never touch each other's sockets.
    ///
    /// # Errors
    ///
    /// The services folder cannot be created, made private or locked.
    pub fn services_dir(&self) -> Result<&Path, SpawnError> {
        let claim = self.claim.get_or_init(|| {
            Claim::new(&self.paths).map_err(|(what, e)| ClaimFailed {
                what,
                errno: e.raw_os_error(),
                kind: e.kind(),
                message: e.to_string(),
            })
        });
        match claim {
            Ok(claim) => Ok(&claim.paths().services_dir),
            Err(failed) => {
                let source = match failed.errno {
                    Some(errno) => std::io::Error::from_raw_os_error(errno),
                    None => std::io::Error::new(failed.kind, failed.message.clone()),
                };
                Err(if process::is_resource_exhausted(&source) {
                    SpawnError::Resources {
                        service: String::new(),
                        what: failed.what,
                        source,
                    }
                } else {
                    SpawnError::Io {
                        service: String::new(),
                        what: failed.what,
                        source,
                    }
                })
            }
        }
    }

    /// The first half of [`start`](Self::start): spawns the process (for
    /// a remote MCP server, nothing). The first spawn raises the host's
    /// soft descriptor limit to its hard limit ([`process::raise_fd_limit`]).
    pub fn spawn(&self, target: Target) -> Result<Spawned, StartError> {
        process::raise_fd_limit();
        let (process, pipes) = match target.config.kind {
            ServiceKind::Extension => {
                let mut paths = (*self.paths).clone();
                paths.services_dir = self
                    .services_dir()
                    .map_err(|e| with_service(e, &target.name))?
                    .to_owned();
                (
                    Some(process::spawn(&target.name, &target.config, &paths)?),
                    None,
                )
            }
            ServiceKind::Gateway => (
                Some(process::spawn(&target.name, &target.config, &self.paths)?),
                None,
            ),
            #[cfg(feature = "mcp")]
            ServiceKind::Mcp => {
                target
                    .config
                    .validate(&target.name)
                    .map_err(SpawnError::Config)?;
                if target.config.command.is_some() {
                    let (process, stdin, stdout) =
                        process::spawn_stdio(&target.name, &target.config, &self.paths)?;
                    (Some(process), Some((stdin, stdout)))
                } else {
                    (None, None)
                }
            }
            #[cfg(not(feature = "mcp"))]
            ServiceKind::Mcp => {
                return Err(SpawnError::Config(crate::config::ConfigError::Invalid {
                    service: target.name.clone(),
                    field: "kind",
                    problem: "is \"mcp\", and this exthost was built without the `mcp` feature"
                        .to_owned(),
                })
                .into())
            }
        };
        Ok(Spawned {
            target,
            process,
            pipes,
            connector: self.clone(),
        })
    }
}

/// Why the services folder could not be claimed, kept for every later
/// spawn.
#[derive(Debug)]
struct ClaimFailed {
    what: &'static str,
    errno: Option<i32>,
    kind: std::io::ErrorKind,
    message: String,
}

/// Names the service in an error raised before it was known.
fn with_service(e: SpawnError, name: &str) -> SpawnError {
    match e {
        SpawnError::Io { what, source, .. } => SpawnError::Io {
            service: name.to_owned(),
            what,
            source,
        },
        SpawnError::Resources { what, source, .. } => SpawnError::Resources {
            service: name.to_owned(),
            what,
            source,
        },
        e => e,
    }
}

/// A spawned service that is not ready yet.
#[derive(Debug)]
pub struct Spawned {
    target: Target,
    process: Option<ProcessHandle>,
    /// An MCP server's stdin and stdout.
    #[cfg_attr(not(feature = "mcp"), allow(dead_code))]
    pipes: Option<(tokio::process::ChildStdin, tokio::process::ChildStdout)>,
    connector: Connector,
}

impl Spawned {
    /// Its process (`None` for a remote MCP server).
    pub fn process(&self) -> Option<&ProcessHandle> {
        self.process.as_ref()
    }

    /// The second half of [`Connector::start`]: waits for the socket,
    /// checks the peer and runs the handshake (extensions), or opens the
    /// MCP session and lists its tools (MCP servers). On failure the
    /// process is stopped.
    pub async fn ready(self) -> Result<Started, StartError> {
        let Spawned {
            target: Target { name, config },
            process,
            pipes,
            connector,
        } = self;
        match config.kind {
            ServiceKind::Gateway => Ok(Started {
                name,
                process,
                extension: None,
            }),
            #[cfg(feature = "mcp")]
            ServiceKind::Mcp => {
                let result = mcp::ready(&connector, &name, &config, process.as_ref(), pipes).await;
                match result {
                    Ok(connected) => Ok(Started {
                        name,
                        process,
                        extension: Some(connected),
                    }),
                    Err(e) => {
                        if let Some(process) = &process {
                            process.stop(None, Duration::ZERO).await;
                        }
                        Err(e)
                    }
                }
            }
            _ => {
                let _ = pipes;
                let process = process.expect("extensions have a process");
                match connect_and_handshake(&connector, &name, &config, &process).await {
                    Ok(connected) => Ok(Started {
                        name,
                        process: Some(process),
                        extension: Some(connected),
                    }),
                    Err(e) => {
                        // Leave nothing behind.
                        process.stop(None, Duration::ZERO).await;
                        Err(e)
                    }
                }
            }
        }
    }
}

/// Connects to `proc`'s socket, retrying the connect itself (1 ms,
/// doubling to 25 ms) while the socket is not there or not listening yet,
/// until it succeeds, the process exits, or `limit` passes.
///
/// # Errors
///
/// Any other failure to connect is reported at once, never retried:
/// [`StartError::Resources`] when the host is out of descriptors or memory
/// (`EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`), [`StartError::Io`] otherwise.
/// [`StartError::Timeout`] when `limit` passes; [`StartError::ExitedEarly`]
/// when the process exits first.
pub async fn wait_for_socket(
    name: &str,
    proc: &ProcessHandle,
    limit: Duration,
) -> Result<UnixStream, StartError> {
    let socket = proc.socket().expect("extensions have a socket").to_owned();
    let connect = async {
        let mut delay = Duration::from_millis(1);
        loop {
            match UnixStream::connect(&socket).await {
                Ok(stream) => return Ok(stream),
                // Not bound yet, or bound but not yet listening (or its
                // backlog is full for a moment).
                Err(e) if not_listening_yet(&e) => tokio::time::sleep(delay).await,
                Err(source) if process::is_resource_exhausted(&source) => {
                    return Err(StartError::Resources {
                        service: name.to_owned(),
                        what: "connect to its socket",
                        source,
                    })
                }
                Err(source) => {
                    return Err(StartError::Io {
                        service: name.to_owned(),
                        what: "connect to its socket",
                        source,
                    })
                }
            }
            delay = (delay * 2).min(Duration::from_millis(25));
        }
    };
    tokio::select! {
        stream = tokio::time::timeout(limit, connect) => stream.unwrap_or_else(|_| Err(StartError::Timeout {
            service: name.to_owned(),
            after: limit,
            log_tail: proc.log_tail(LOG_TAIL_LINES),
        })),
        status = proc.exited() => Err(exited_early(name, proc, status).await),
    }
}

/// Whether a failed connect means the extension is not listening yet.
fn not_listening_yet(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::NotFound
            | ErrorKind::ConnectionRefused
            | ErrorKind::WouldBlock
            | ErrorKind::Interrupted
    )
}

/// A process that exited before it was ready, with the end of its log once
/// its last output is written there.
async fn exited_early(
    name: &str,
    proc: &ProcessHandle,
    status: std::process::ExitStatus,
) -> StartError {
    proc.output_closed(OUTPUT_SETTLE).await;
    StartError::ExitedEarly {
        service: name.to_owned(),
        status,
        log_tail: proc.log_tail(LOG_TAIL_LINES),
    }
}

async fn connect_and_handshake(
    connector: &Connector,
    name: &str,
    config: &ServiceConfig,
    proc: &ProcessHandle,
) -> Result<Connected, StartError> {
    let stream = wait_for_socket(name, proc, config.handshake_timeout()).await?;
    peer::check_peer(name, &stream, proc.pid())?;
    proc.socket_bound();

    let connected = tokio::select! {
        connected = connector.connect(name, config, stream) => connected,
        status = proc.exited() => return Err(exited_early(name, proc, status).await),
    };
    let connected = match connected {
        Ok(connected) => connected,
        Err(e) => {
            // A process that exits mid-handshake closes the socket a moment
            // before its exit is reaped: report the exit if it follows.
            if let Some(status) = proc.exited_within(process::EXIT_AFTER_CLOSE).await {
                return Err(exited_early(name, proc, status).await);
            }
            return Err(e);
        }
    };
    tracing::info!(service = %name, tools = connected.info.tools.len(), hidden = connected.hidden_tools.len(), pid = proc.pid(), "extension ready");
    Ok(connected)
}

impl Service<Target> for Connector {
    type Response = Started;
    type Error = StartError;
    type Future = Pin<Box<dyn Future<Output = Result<Started, StartError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StartError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Target) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.start(target).await })
    }
}

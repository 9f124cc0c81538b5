//! The connector: from a service's configuration to a ready extension.
//!
//! [`Connector`] is a `tower::Service<Target>`, usable wherever tower
//! expects a `MakeService`. Its future spawns the process, waits for its
//! socket by retrying the connect itself (1 ms, doubling to 25 ms; no
//! polling of the file), stops waiting the moment the child exits, checks
//! the peer's credentials, runs the handshake, and yields a [`Started`]
//! extension: its process handle, what it declared, and its per-extension
//! stack. Any failure stops the process it spawned and says why, with the
//! exit status and the end of the log file where there is one.
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
//! println!("{} offers {} tools", started.name, started.extension.unwrap().info.tools.len());
//! # Ok(()) }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::UnixStream;
use tower::Service;

use crate::config::{ServiceConfig, ServiceKind};
use crate::error::StartError;
use crate::handshake::{handshake, ExtensionInfo};
use crate::process::{self, Paths, ProcessHandle};
use crate::stack::{ExtensionService, StackBuilder};

const LOG_TAIL_LINES: usize = 20;

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
    /// Its process.
    pub process: ProcessHandle,
    /// For extensions: the handshake's result and the request stack.
    /// `None` for gateways, which are not handshaken.
    pub extension: Option<Connected>,
}

/// A handshaken extension connection.
#[derive(Debug, Clone)]
pub struct Connected {
    /// What the extension declared.
    pub info: ExtensionInfo,
    /// Its per-extension stack.
    pub service: ExtensionService,
}

/// Starts services: spawn, connect, check, handshake.
#[derive(Debug, Clone)]
pub struct Connector {
    paths: Arc<Paths>,
}

impl Connector {
    /// A connector that puts sockets and logs where `paths` says.
    pub fn new(paths: Paths) -> Self {
        Connector {
            paths: Arc::new(paths),
        }
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

    /// The first half of [`start`](Self::start): spawns the process.
    pub fn spawn(&self, target: Target) -> Result<Spawned, StartError> {
        let process = process::spawn(&target.name, &target.config, &self.paths)?;
        Ok(Spawned { target, process })
    }
}

/// A spawned service that is not ready yet.
#[derive(Debug)]
pub struct Spawned {
    target: Target,
    process: ProcessHandle,
}

impl Spawned {
    /// Its process.
    pub fn process(&self) -> &ProcessHandle {
        &self.process
    }

    /// The second half of [`Connector::start`]: waits for the socket,
    /// checks the peer and runs the handshake (extensions only). On failure
    /// the process is stopped.
    pub async fn ready(self) -> Result<Started, StartError> {
        let Spawned {
            target: Target { name, config },
            process,
        } = self;
        if config.kind == ServiceKind::Gateway {
            return Ok(Started {
                name,
                process,
                extension: None,
            });
        }
        match connect_and_handshake(&name, &config, &process).await {
            Ok(connected) => Ok(Started {
                name,
                process,
                extension: Some(connected),
            }),
            Err(e) => {
                // Leave nothing behind.
                process.stop(None::<ExtensionService>, Duration::ZERO).await;
                Err(e)
            }
        }
    }
}

/// Connects to `proc`'s socket, retrying the connect itself (1 ms,
/// doubling to 25 ms) until it succeeds, the process exits, or `limit`
/// passes.
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
                Ok(stream) => return stream,
                // Not bound yet, or bound but not yet listening.
                Err(_) => tokio::time::sleep(delay).await,
            }
            delay = (delay * 2).min(Duration::from_millis(25));
        }
    };
    tokio::select! {
        stream = tokio::time::timeout(limit, connect) => stream.map_err(|_| StartError::Timeout {
            service: name.to_owned(),
            after: limit,
            log_tail: proc.log_tail(LOG_TAIL_LINES),
        }),
        status = proc.exited() => Err(StartError::ExitedEarly {
            service: name.to_owned(),
            status,
            log_tail: proc.log_tail(LOG_TAIL_LINES),
        }),
    }
}

async fn connect_and_handshake(
    name: &str,
    config: &ServiceConfig,
    proc: &ProcessHandle,
) -> Result<Connected, StartError> {
    let limit = config.handshake_timeout();
    let early_exit = |status| StartError::ExitedEarly {
        service: name.to_owned(),
        status,
        log_tail: proc.log_tail(LOG_TAIL_LINES),
    };

    let stream = wait_for_socket(name, proc, limit).await?;
    process::check_peer(name, &stream, proc.pid())?;

    let mut service = StackBuilder::new(name)
        .timeout(config.call_timeout())
        .max_in_flight(config.max_in_flight())
        .stuck_margin(Some(config.stuck_margin()))
        .build(stream);
    let info = tokio::select! {
        info = handshake(&mut service, &config.config, limit) => info,
        status = proc.exited() => return Err(early_exit(status)),
    };
    let info = match info {
        Ok(info) => info,
        Err(source) => {
            // A process that exits mid-handshake closes the socket a moment
            // before its exit is reaped: report the exit if it follows.
            if let Some(status) = proc.exited_within(process::EXIT_AFTER_CLOSE).await {
                return Err(early_exit(status));
            }
            return Err(StartError::Handshake {
                service: name.to_owned(),
                source,
            });
        }
    };
    tracing::info!(service = %name, tools = info.tools.len(), pid = proc.pid(), "extension ready");
    Ok(Connected { info, service })
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

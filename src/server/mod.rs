//! The extension's side of the protocol, for extension authors.
//!
//! An author describes the extension with [`Extension`] (its service name,
//! tools, whether it answers service queries, its configuration schema) and
//! writes the tools as one [`tower::Service`] taking a [`Call`] and
//! returning the result text. The server answers the protocol around it:
//!
//! - `hello` → `ready` with the capabilities, `register_tools` →
//!   `tool_schemas`, `get_schema` → `schema_result`, all without calling the
//!   service;
//! - `configure`, `tool_call` and `service_query` go to the service as
//!   [`Call::Configure`], [`Call::Tool`] and [`Call::Query`]; an `Err` becomes
//!   an `error` response with the error's text;
//! - a call of a tool the extension did not declare, or a query when no query
//!   capability was declared, gets an `error` response naming it, and the
//!   service never sees it;
//! - `shutdown` gets no answer: once every earlier answer is written, the
//!   server removes its socket and [`Extension::serve`] returns
//!   [`Stopped::Shutdown`].
//!
//! Pipelined requests are processed concurrently and answered in order.
//! Undecodable or oversized input closes that connection.
//!
//! # Example
//!
//! A complete extension binary, started by the host as
//! `my-extension serve --socket PATH`:
//!
//! ```no_run
//! use exthost::server::{Call, Extension};
//! use exthost::Tool;
//! use serde_json::json;
//! use tower::service_fn;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let tools = service_fn(|call: Call| async move {
//!         match call {
//!             Call::Tool(t) if t.name == "shout" => Ok(t.args.to_uppercase()),
//!             Call::Configure(_) => Ok(String::new()),
//!             _ => Err("not supported"),
//!         }
//!     });
//!     Extension::new("shouter")
//!         .tool(Tool::new("shout", "Upper-cases its arguments", json!({"type": "object"})))
//!         .run(tools)
//!         .await?;
//!     Ok(())
//! }
//! ```

mod args;
mod protocol;

pub use args::{ArgsError, ServeArgs};

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service};

use crate::proto::{Capability, ExtToolCall, PROTOCOL_VERSION};
use crate::socket::remove_stale_socket;
use crate::tool::Tool;
use protocol::{Protocol, ServerTransport};

/// One request for the extension's own code.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Call {
    /// Run a declared tool; the result text is the answer.
    Tool(ExtToolCall),
    /// A service query (only when the query capability is declared).
    Query(String),
    /// The service's configuration, as JSON text; an `Ok` accepts it.
    Configure(String),
}

/// How [`Extension::serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// The host sent `shutdown`.
    Shutdown,
    /// The stop future passed to [`Extension::serve_until`] completed
    /// (SIGTERM or SIGINT for [`Extension::run`]).
    Signal,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The command line was not `serve --socket PATH`.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// The socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Accepting a connection failed.
    #[error("accepting a connection failed: {0}")]
    Accept(#[source] io::Error),
    /// Installing a signal handler failed.
    #[error("installing a signal handler failed: {0}")]
    Signal(#[source] io::Error),
}

/// Describes an extension and serves the protocol for it.
#[derive(Debug, Clone)]
pub struct Extension {
    meta: Arc<Meta>,
}

#[derive(Debug, Clone)]
pub(crate) struct Meta {
    pub(crate) service: String,
    pub(crate) version: String,
    pub(crate) tools: Vec<Tool>,
    pub(crate) names: HashSet<String>,
    pub(crate) query: bool,
    pub(crate) schema: String,
}

impl Extension {
    /// An extension named `service`, with no tools yet.
    pub fn new(service: impl Into<String>) -> Self {
        Extension {
            meta: Arc::new(Meta {
                service: service.into(),
                version: PROTOCOL_VERSION.to_owned(),
                tools: Vec::new(),
                names: HashSet::new(),
                query: false,
                schema: "{}".to_owned(),
            }),
        }
    }

    fn meta(&mut self) -> &mut Meta {
        Arc::make_mut(&mut self.meta)
    }

    /// Declares a tool.
    pub fn tool(mut self, tool: Tool) -> Self {
        let meta = self.meta();
        meta.names.insert(tool.name.clone());
        meta.tools.push(tool);
        self
    }

    /// Declares several tools.
    pub fn tools(self, tools: impl IntoIterator<Item = Tool>) -> Self {
        tools.into_iter().fold(self, Extension::tool)
    }

    /// Declares the query capability: `service_query` reaches the service
    /// as [`Call::Query`].
    pub fn query(mut self, enabled: bool) -> Self {
        self.meta().query = enabled;
        self
    }

    /// The configuration's JSON Schema, answered to `get_schema` (default `{}`).
    pub fn config_schema(mut self, schema: &serde_json::Value) -> Self {
        self.meta().schema = schema.to_string();
        self
    }

    /// The protocol version announced in `ready` (default
    /// [`PROTOCOL_VERSION`]; change it only to test hosts).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.meta().version = version.into();
        self
    }

    /// The capabilities announced in `ready`.
    pub fn capabilities(&self) -> Vec<Capability> {
        self.meta.capabilities()
    }

    /// Parses `serve --socket PATH` from the process's arguments, serves
    /// there until `shutdown`, SIGTERM or SIGINT, then removes the socket.
    pub async fn run<S>(self, service: S) -> Result<Stopped, ServeError>
    where
        S: Service<Call, Response = String> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let args = ServeArgs::from_env()?;
        let stop = stop_signal().map_err(ServeError::Signal)?;
        self.serve_until(&args.socket, service, stop).await
    }

    /// Serves on a Unix socket at `path` until `shutdown`, then removes it.
    pub async fn serve<S>(self, path: impl AsRef<Path>, service: S) -> Result<Stopped, ServeError>
    where
        S: Service<Call, Response = String> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.serve_until(path, service, std::future::pending())
            .await
    }

    /// Serves on a Unix socket at `path` until `shutdown` or until `stop`
    /// completes, then removes the socket.
    ///
    /// A stale socket file at `path` is replaced; any other file there is an
    /// error. The socket is made accessible to its owner only.
    pub async fn serve_until<S, F>(
        self,
        path: impl AsRef<Path>,
        service: S,
        stop: F,
    ) -> Result<Stopped, ServeError>
    where
        S: Service<Call, Response = String> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        F: Future<Output = ()>,
    {
        let path = path.as_ref();
        let listener = bind(path).map_err(|source| ServeError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let _remove = RemoveOnDrop(path.to_owned());
        let token = CancellationToken::new();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(Stopped::Shutdown),
                _ = &mut stop => return Ok(Stopped::Signal),
                accepted = listener.accept() => {
                    let (io, _) = accepted.map_err(ServeError::Accept)?;
                    let conn = self.connection(io, service.clone(), token.clone());
                    tokio::spawn(async move {
                        if let Err(error) = conn.await {
                            tracing::warn!(%error, "extension connection failed");
                        }
                    });
                }
            }
        }
    }

    /// Serves the protocol on one already-connected byte stream until the
    /// host closes it or sends `shutdown`.
    ///
    /// Returns an error when the connection failed (an undecodable or
    /// oversized frame, an i/o error); the stream is closed either way.
    pub fn serve_connection<T, S>(
        &self,
        io: T,
        service: S,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: Service<Call, Response = String> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.connection(io, service, CancellationToken::new())
    }

    fn connection<T, S>(
        &self,
        io: T,
        service: S,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), BoxError>> + Send + 'static
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: Service<Call, Response = String> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let transport = ServerTransport::new(io, shutdown);
        let protocol = Protocol::new(self.meta.clone(), service);
        async move {
            tokio_tower::pipeline::Server::new(transport, protocol)
                .await
                .map_err(|e| -> BoxError {
                    match e {
                        tokio_tower::pipeline::server::Error::BrokenTransportRecv(e) => e.into(),
                        tokio_tower::pipeline::server::Error::BrokenTransportSend(e) => e.into(),
                        tokio_tower::pipeline::server::Error::Service(e) => e,
                    }
                })
        }
    }
}

impl Meta {
    pub(crate) fn capabilities(&self) -> Vec<Capability> {
        let mut caps = vec![Capability::tools(self.tools.iter().map(|t| t.name.clone()))];
        if self.query {
            caps.push(Capability::query());
        }
        caps
    }
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Completes on SIGTERM or SIGINT.
fn stop_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

//! The per-extension middleware stack: tracing, a deadline and an in-flight
//! limit around one [`Connection`].
//!
//! [`StackBuilder`] assembles, outermost first:
//!
//! ```text
//! Trace ▶ Timeout ▶ [your layers] ▶ Connection (max_in_flight, stuck detection)
//! ```
//!
//! - [`Trace`]: a span per request (see [`crate::trace`]).
//! - [`Timeout`]: 30 s by default. The deadline covers the wait for an
//!   in-flight slot (in `poll_ready`) as well as the extension's work, and
//!   its error is [`TimedOut`], never confused with a timeout of your own.
//! - The in-flight limit (1 by default) lives in the [`Connection`], because
//!   it must count the answers the extension still owes, not the callers
//!   still waiting: a timed-out request keeps its slot until its answer
//!   arrives. tower's `ConcurrencyLimit` releases the slot when the caller
//!   gives up, which would let requests pile up behind a silent extension.
//!   A full connection is not ready, so `tower::load_shed` among your layers
//!   sheds.
//! - A connection whose oldest request is unanswered for the timeout plus
//!   `stuck_margin` (5 s by default) is reset.
//!
//! [`ExtensionLayer`] is the Trace ▶ Timeout pair as a tower [`Layer`], for
//! use over any `Service<ExtRequest>`. The stack comes out boxed, as an
//! [`ExtensionService`]: nothing outside this module names its concrete
//! type, so layers can be added without breaking anyone. It is `Clone` and
//! cheap to clone: share it between tasks freely. No `Buffer` is needed, so
//! no extra task sits on the hot path.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use exthost::proto::{ExtRequest, ExtResponse};
//! use exthost::server::{Call, Extension};
//! use exthost::stack::StackBuilder;
//! use exthost::Tool;
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let (host_io, ext_io) = tokio::io::duplex(4096);
//! let ext = Extension::new("demo").tool(Tool::new("echo", "Echo", serde_json::json!({})));
//! tokio::spawn(ext.serve_connection(ext_io, service_fn(|call: Call| async move {
//!     match call {
//!         Call::Tool(t) => Ok::<_, std::convert::Infallible>(t.args),
//!         _ => Ok(String::new()),
//!     }
//! })));
//!
//! let svc = StackBuilder::new("demo")
//!     .timeout(Duration::from_secs(5))
//!     .max_in_flight(4)
//!     .layer(tower::load_shed::LoadShedLayer::new()) // yours, anywhere
//!     .build(host_io);
//! let resp = svc.clone().oneshot(ExtRequest::tool_call("echo", "{}")).await?;
//! assert_eq!(resp, ExtResponse::tool_result("{}"));
//! # Ok(())
//! # }
//! ```

mod timeout;

pub use timeout::{ResponseFuture, TimedOut, Timeout, TimeoutLayer};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tower::layer::util::Stack;
use tower::util::{BoxCloneSyncService, BoxCloneSyncServiceLayer};
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::client::Connection;
use crate::proto::{ExtRequest, ExtResponse};
use crate::trace::Trace;

/// The default deadline of one call: 30 s.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long past its deadline an unanswered request may stay before the
/// connection counts as stuck and is reset: 5 s by default.
pub const DEFAULT_STUCK_MARGIN: Duration = Duration::from_secs(5);

/// One extension's request service, boxed: what [`StackBuilder::build`] and
/// the [`Connector`](crate::connector::Connector) return, and what user
/// layers wrap.
///
/// Errors are [`BoxError`]s: a [`TimedOut`], a
/// [`ConnectionError`](crate::client::ConnectionError), or whatever a user
/// layer returned; [`CallError`](crate::CallError) sorts them out.
pub type ExtensionService = BoxCloneSyncService<ExtRequest, ExtResponse, BoxError>;

/// Layers that wrap every per-extension stack, boxed so they can be stored
/// and applied to each new connection (see [`StackBuilder::layer`]).
pub type ExtensionLayers =
    BoxCloneSyncServiceLayer<ExtensionService, ExtRequest, ExtResponse, BoxError>;

/// The tracing and deadline layers of the per-extension stack, for use over
/// any `Service<ExtRequest>`: `Trace ▶ Timeout ▶ inner`.
#[derive(Debug, Clone)]
pub struct ExtensionLayer {
    service: Arc<str>,
    timeout: Duration,
}

impl ExtensionLayer {
    /// Spans name the extension `service`; calls time out after `timeout`.
    pub fn new(service: impl Into<Arc<str>>, timeout: Duration) -> Self {
        ExtensionLayer {
            service: service.into(),
            timeout,
        }
    }
}

impl<S> Layer<S> for ExtensionLayer {
    type Service = Trace<Timeout<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace::new(Timeout::new(inner, self.timeout), self.service.clone())
    }
}

/// Builds the per-extension stack.
#[derive(Clone)]
pub struct StackBuilder {
    service: Arc<str>,
    timeout: Duration,
    max_in_flight: usize,
    stuck_margin: Option<Duration>,
    handshake_timeout: Duration,
    layers: Option<ExtensionLayers>,
}

impl fmt::Debug for StackBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackBuilder")
            .field("service", &self.service)
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("stuck_margin", &self.stuck_margin)
            .field("layers", &self.layers.is_some())
            .finish()
    }
}

impl StackBuilder {
    /// A builder for the extension named `service`, with the defaults: 30 s
    /// timeout, one request in flight, 5 s stuck margin, no user layers.
    pub fn new(service: impl Into<Arc<str>>) -> Self {
        StackBuilder {
            service: service.into(),
            timeout: DEFAULT_CALL_TIMEOUT,
            max_in_flight: 1,
            stuck_margin: Some(DEFAULT_STUCK_MARGIN),
            handshake_timeout: crate::handshake::DEFAULT_HANDSHAKE_TIMEOUT,
            layers: None,
        }
    }

    /// The deadline of each call, the wait for an in-flight slot included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many requests the extension may owe answers to at once.
    ///
    /// # Panics
    ///
    /// If `n` is zero.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        assert!(n > 0, "max_in_flight must be at least 1");
        self.max_in_flight = n;
        self
    }

    /// The handshake's step timeout (default 10 s): a handshake request is
    /// stuck only past it plus the stuck margin.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How long past the timeout an unanswered request may wait before the
    /// connection is reset; `None` never resets it.
    pub fn stuck_margin(mut self, margin: Option<Duration>) -> Self {
        self.stuck_margin = margin;
        self
    }

    /// Adds a layer between the timeout and the connection, so that the
    /// deadline and the span cover what it does. Layers added first are
    /// outermost, as with `tower::ServiceBuilder`.
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<ExtensionService> + Send + Sync + 'static,
        L::Service: Service<ExtRequest, Response = ExtResponse> + Clone + Send + Sync + 'static,
        <L::Service as Service<ExtRequest>>::Error: Into<BoxError>,
        <L::Service as Service<ExtRequest>>::Future: Send + 'static,
    {
        self.layers = Some(add_layer(self.layers.take(), layer));
        self
    }

    /// Adds already boxed layers, such as those a
    /// [`Connector`](crate::connector::Connector) carries.
    pub fn layers(mut self, layers: Option<ExtensionLayers>) -> Self {
        self.layers = nest(self.layers.take(), layers);
        self
    }

    /// The extension's name, as the spans show it.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// The call deadline in force.
    pub fn call_timeout(&self) -> Duration {
        self.timeout
    }

    /// Just the connection, configured as this builder says. Must be called
    /// inside a tokio runtime.
    pub fn connection<T>(&self, io: T) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Connection::builder()
            .max_in_flight(self.max_in_flight)
            .stuck_after(self.stuck_margin.map(|m| self.timeout + m))
            .stuck_after_handshake(self.stuck_margin.map(|m| self.handshake_timeout + m))
            .build(io)
    }

    /// The stack over an existing connection: `Trace ▶ Timeout ▶ [your
    /// layers] ▶ connection`.
    pub fn service(&self, connection: Connection) -> ExtensionService {
        let outer = ExtensionLayer::new(self.service.clone(), self.timeout);
        match &self.layers {
            None => BoxCloneSyncService::new(outer.layer(connection)),
            Some(layers) => {
                let inner = BoxCloneSyncService::new(connection.map_err(BoxError::from));
                BoxCloneSyncService::new(outer.layer(layers.layer(inner)))
            }
        }
    }

    /// The stack over any `Service<ExtRequest>` (an
    /// [`McpConnection`](crate::mcp::McpConnection), a test double):
    /// `Trace ▶ Timeout ▶ [your layers] ▶ inner`.
    pub fn wrap<S>(&self, inner: S) -> ExtensionService
    where
        S: Service<ExtRequest, Response = ExtResponse, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let outer = ExtensionLayer::new(self.service.clone(), self.timeout);
        match &self.layers {
            None => BoxCloneSyncService::new(outer.layer(inner)),
            Some(layers) => {
                BoxCloneSyncService::new(outer.layer(layers.layer(BoxCloneSyncService::new(inner))))
            }
        }
    }

    /// The whole stack over `io`. Must be called inside a tokio runtime.
    pub fn build<T>(&self, io: T) -> ExtensionService
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.service(self.connection(io))
    }
}

/// `outer` around `inner`, where there are both.
pub(crate) fn nest(
    outer: Option<ExtensionLayers>,
    inner: Option<ExtensionLayers>,
) -> Option<ExtensionLayers> {
    match (outer, inner) {
        (Some(outer), Some(inner)) => Some(BoxCloneSyncServiceLayer::new(Stack::new(inner, outer))),
        (outer, None) => outer,
        (None, inner) => inner,
    }
}

/// `outer` (if any) around `layer`, boxed.
pub(crate) fn add_layer<L>(outer: Option<ExtensionLayers>, layer: L) -> ExtensionLayers
where
    L: Layer<ExtensionService> + Send + Sync + 'static,
    L::Service: Service<ExtRequest, Response = ExtResponse> + Clone + Send + Sync + 'static,
    <L::Service as Service<ExtRequest>>::Error: Into<BoxError>,
    <L::Service as Service<ExtRequest>>::Future: Send + 'static,
{
    let boxed = BoxCloneSyncServiceLayer::new(tower::layer::layer_fn(move |inner| {
        layer.layer(inner).map_err(Into::<BoxError>::into)
    }));
    nest(outer, Some(boxed)).expect("one layer at least")
}

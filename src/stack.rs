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
//! - [`Timeout`]: 30 s by default. The deadline covers queueing as well as
//!   the extension's work: the connection waits for an in-flight slot inside
//!   the call, not in `poll_ready`.
//! - The in-flight limit (1 by default) lives in the [`Connection`], because
//!   it must count the answers the extension still owes, not the callers
//!   still waiting: a timed-out request keeps its slot until its answer
//!   arrives. tower's `ConcurrencyLimit` releases the slot when the caller
//!   gives up, which would let requests pile up behind a silent extension.
//! - A connection whose oldest request is unanswered for the timeout plus
//!   `stuck_margin` (5 s by default) is reset.
//!
//! The result, [`ExtensionService`], is `Clone` and cheap to clone: share it
//! between tasks freely. No `Buffer` is needed, so no extra task sits on the
//! hot path.
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
//!     .build(host_io);
//! let resp = svc.clone().oneshot(ExtRequest::tool_call("echo", "{}")).await?;
//! assert_eq!(resp, ExtResponse::tool_result("{}"));
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tower::timeout::Timeout;
use tower::Layer;

use crate::client::Connection;
use crate::trace::Trace;

/// The default deadline of one call: 30 s.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long past its deadline an unanswered request may stay before the
/// connection counts as stuck and is reset: 5 s by default.
pub const DEFAULT_STUCK_MARGIN: Duration = Duration::from_secs(5);

/// The per-extension stack [`StackBuilder::build`] returns.
pub type ExtensionService = Trace<Timeout<Connection>>;

/// Builds the per-extension stack.
#[derive(Debug, Clone)]
pub struct StackBuilder {
    service: Arc<str>,
    timeout: Duration,
    max_in_flight: usize,
    stuck_margin: Option<Duration>,
}

impl StackBuilder {
    /// A builder for the extension named `service`, with the defaults: 30 s
    /// timeout, one request in flight, 5 s stuck margin.
    pub fn new(service: impl Into<Arc<str>>) -> Self {
        StackBuilder {
            service: service.into(),
            timeout: DEFAULT_CALL_TIMEOUT,
            max_in_flight: 1,
            stuck_margin: Some(DEFAULT_STUCK_MARGIN),
        }
    }

    /// The deadline of each call, queueing included.
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

    /// How long past the timeout an unanswered request may wait before the
    /// connection is reset; `None` never resets it.
    pub fn stuck_margin(mut self, margin: Option<Duration>) -> Self {
        self.stuck_margin = margin;
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

    /// Just the connection, configured as this builder says.
    pub fn connection<T>(&self, io: T) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Connection::builder()
            .max_in_flight(self.max_in_flight)
            .stuck_after(self.stuck_margin.map(|m| self.timeout + m))
            .build(io)
    }

    /// The whole stack over `io`. Must be called inside a tokio runtime.
    pub fn build<T>(&self, io: T) -> ExtensionService
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.build_layered(io, tower::layer::util::Identity::new())
    }

    /// The whole stack with `layer` inserted between the timeout and the
    /// connection, so that the deadline covers what it adds.
    pub fn build_layered<T, L>(&self, io: T, layer: L) -> Trace<Timeout<L::Service>>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        L: Layer<Connection>,
    {
        let inner = layer.layer(self.connection(io));
        Trace::new(Timeout::new(inner, self.timeout), self.service.clone())
    }
}

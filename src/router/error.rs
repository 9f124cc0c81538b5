//! Why a call failed: [`CallError`], with its typed causes.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;

use crate::client::ConnectionError;
use crate::stack::TimedOut;
use crate::status::{DownReason, ServiceState};

/// Why a tool call, query or schema request failed.
///
/// Match on it instead of parsing strings; [`CallError::kind`] gives the
/// stable snake_case name (`unknown_tool`, `timeout`, …) that the `exthost`
/// command prints, [`source`](StdError::source) the typed cause, and
/// [`CallError::is_retry_safe`] whether the request certainly never reached
/// an extension.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No ready or known extension offers this tool.
    #[error("unknown tool: {tool}")]
    UnknownTool {
        /// The tool asked for.
        tool: String,
    },
    /// No such service, or it does not answer this kind of request.
    #[error("unknown service: {service}{}", if *.exists { " (it does not answer service queries)" } else { "" })]
    UnknownService {
        /// The service asked for.
        service: String,
        /// Whether the service exists but lacks the query capability.
        exists: bool,
    },
    /// The stack's call deadline passed (waiting for an in-flight slot
    /// included).
    #[error("service timeout: {service} ({after:?})")]
    Timeout {
        /// The service called.
        service: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// More calls are waiting for the service than its `max_queued`
    /// allows, or a load-shedding layer refused the call. It was never sent.
    #[error("service overloaded: {service} ({waiting} calls already waiting)")]
    Overloaded {
        /// The service.
        service: String,
        /// How many calls were waiting (0 when a layer shed it).
        waiting: usize,
    },
    /// The request is over the frame limit: refused before anything was
    /// written, so nothing reached the extension (and retrying the same
    /// request fails the same way).
    #[error(
        "request too large for {service}: {len} bytes exceed the {max}-byte frame limit; not sent"
    )]
    TooLarge {
        /// The service.
        service: String,
        /// The request's encoded length, in bytes.
        len: usize,
        /// The frame limit, in bytes.
        max: usize,
    },
    /// The arguments cannot be sent to the tool (for an MCP server: they
    /// are not a JSON object). Nothing was sent.
    #[error("bad arguments for {service}: {source}")]
    BadArguments {
        /// The service.
        service: String,
        /// What is wrong.
        #[source]
        source: crate::tool::BadArguments,
    },
    /// The extension is not running, crashed, or is restarting.
    #[error("service unavailable: {service} ({cause})")]
    Unavailable {
        /// The service.
        service: String,
        /// Why.
        #[source]
        cause: Unavailable,
        /// Whether the request may have reached the extension before it
        /// went away (and so may have had effects).
        delivered: bool,
    },
    /// The extension answered with an `error` response.
    #[error("service error: {message}")]
    Extension {
        /// The service.
        service: String,
        /// The extension's message.
        message: String,
    },
    /// The extension broke the protocol: its connection was reset, or, for
    /// an unusable answer ([`ConnectionError::UnusableAnswer`]), only this
    /// call failed.
    #[error("{service}: {source}")]
    Protocol {
        /// The service.
        service: String,
        /// What it did.
        #[source]
        source: ConnectionError,
    },
    /// A layer of the user's own inside the per-extension stack failed the
    /// call (a rate limiter, a circuit breaker, a timeout of its own, …).
    /// Whether it reached the extension is unknown.
    #[error("layer error for {service}: {source}")]
    Layer {
        /// The service.
        service: String,
        /// The layer's error; downcast it to its type.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },
}

/// Why a service could not take a call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The service is not ready; `reason` says why it last went down, if it
    /// did. `state` is `Ready` in the instant between a failure being seen
    /// and the status saying so ("going down").
    #[error("{}", describe(*.state, .reason.as_ref()))]
    NotReady {
        /// Its state when the call arrived.
        state: ServiceState,
        /// Why it went down.
        #[source]
        reason: Option<DownReason>,
    },
    /// The host is shutting the service down.
    #[error("shutting down")]
    ShuttingDown,
    /// The connection failed while the call was on it.
    #[error(transparent)]
    Connection(ConnectionError),
}

fn describe(state: ServiceState, reason: Option<&DownReason>) -> String {
    match (state, reason) {
        (ServiceState::Ready, _) => "going down".to_owned(),
        (state, Some(e)) => format!("{state}: {e}"),
        (state, None) => state.as_str().to_owned(),
    }
}

impl CallError {
    /// The error's stable name: `unknown_tool`, `unknown_service`,
    /// `timeout`, `overloaded`, `too_large`, `bad_arguments`, `unavailable`, `extension`,
    /// `protocol` or `layer`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::UnknownTool { .. } => "unknown_tool",
            CallError::UnknownService { .. } => "unknown_service",
            CallError::Timeout { .. } => "timeout",
            CallError::Overloaded { .. } => "overloaded",
            CallError::TooLarge { .. } => "too_large",
            CallError::BadArguments { .. } => "bad_arguments",
            CallError::Unavailable { .. } => "unavailable",
            CallError::Extension { .. } => "extension",
            CallError::Protocol { .. } => "protocol",
            CallError::Layer { .. } => "layer",
        }
    }

    /// Whether retrying cannot repeat an effect: the request certainly
    /// never reached an extension (unknown tool or service, overloaded, or
    /// unavailable before it was sent).
    pub fn is_retry_safe(&self) -> bool {
        match self {
            CallError::UnknownTool { .. }
            | CallError::UnknownService { .. }
            | CallError::Overloaded { .. }
            | CallError::TooLarge { .. }
            | CallError::BadArguments { .. } => true,
            CallError::Unavailable { delivered, .. } => !delivered,
            CallError::Timeout { .. }
            | CallError::Extension { .. }
            | CallError::Protocol { .. }
            | CallError::Layer { .. } => false,
        }
    }

    /// The service the call went to, if it got that far.
    pub fn service(&self) -> Option<&str> {
        match self {
            CallError::UnknownTool { .. } => None,
            CallError::UnknownService { service, .. }
            | CallError::Timeout { service, .. }
            | CallError::Overloaded { service, .. }
            | CallError::TooLarge { service, .. }
            | CallError::BadArguments { service, .. }
            | CallError::Unavailable { service, .. }
            | CallError::Extension { service, .. }
            | CallError::Protocol { service, .. }
            | CallError::Layer { service, .. } => Some(service),
        }
    }

    /// Sorts out an error from `service`'s per-extension stack: the stack's
    /// own [`TimedOut`], a [`ConnectionError`], tower's load-shedding
    /// `Overloaded`, or a foreign error from a user layer, kept whole.
    /// `sent` says whether the request was handed to the stack (`false`
    /// for an error from `poll_ready`).
    pub fn from_stack(service: &str, e: BoxError, sent: bool) -> Self {
        let service = service.to_owned();
        let e = match e.downcast::<TimedOut>() {
            Ok(t) => {
                return CallError::Timeout {
                    service,
                    after: t.after(),
                }
            }
            Err(e) => e,
        };
        let e = match e.downcast::<ConnectionError>() {
            Ok(conn) => {
                return match *conn {
                    ConnectionError::RequestTooLarge { len, max } => {
                        CallError::TooLarge { service, len, max }
                    }
                    conn if conn.is_protocol_violation() => CallError::Protocol {
                        service,
                        source: conn,
                    },
                    conn => CallError::Unavailable {
                        service,
                        cause: Unavailable::Connection(conn),
                        delivered: sent,
                    },
                }
            }
            Err(e) => e,
        };
        let e = match e.downcast::<crate::tool::BadArguments>() {
            Ok(bad) => {
                return CallError::BadArguments {
                    service,
                    source: *bad,
                }
            }
            Err(e) => e,
        };
        if e.is::<tower::load_shed::error::Overloaded>() {
            return CallError::Overloaded {
                service,
                waiting: 0,
            };
        }
        CallError::Layer {
            service,
            source: Arc::from(e),
        }
    }
}

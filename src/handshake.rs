//! The host's handshake: `hello`, `configure`, `register_tools`.
//!
//! [`handshake`] runs the three steps over any request service, each under
//! its own timeout, and returns what the extension declared as an
//! [`ExtensionInfo`]. Every failure is a typed [`HandshakeError`]
//! naming the step; unparseable tool schemas are errors naming the tool, and
//! tools declared in the capabilities but missing from the schemas (or the
//! reverse) are reported in [`ExtensionInfo::mismatches`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use exthost::handshake::handshake;
//! use exthost::server::{Call, Extension};
//! use exthost::{client::Connection, Tool};
//! use tower::service_fn;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (host_io, ext_io) = tokio::io::duplex(4096);
//! let ext = Extension::new("demo").tool(Tool::new("echo", "Echo", serde_json::json!({})));
//! tokio::spawn(ext.serve_connection(ext_io, service_fn(|_call: Call| async {
//!     Ok::<_, std::convert::Infallible>(String::new())
//! })));
//!
//! let mut conn = Connection::new(host_io);
//! let ext = handshake(&mut conn, &serde_json::json!({"key": "value"}), Duration::from_secs(10)).await?;
//! assert_eq!(ext.service, "demo");
//! assert_eq!(ext.tools[0].name, "echo");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use tower::{BoxError, Service, ServiceExt};

use crate::proto::{
    capability::Cap, ext_response::Msg, Capability, ExtRequest, ExtResponse, PROTOCOL_VERSION,
};
use crate::tool::{BadToolSchema, Tool};

/// The default time allowed for each handshake step: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handshake step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `hello` → `ready`.
    Hello,
    /// `configure` → `configured`.
    Configure,
    /// `register_tools` → `tool_schemas`.
    RegisterTools,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Hello => "hello",
            Step::Configure => "configure",
            Step::RegisterTools => "register_tools",
        })
    }
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A step got no answer in time.
    #[error("handshake timed out at `{step}` after {after:?}")]
    Timeout {
        /// The step that timed out.
        step: Step,
        /// The time allowed.
        after: Duration,
    },
    /// The extension answered a step with an `error` response.
    #[error("extension refused `{step}`: {message}")]
    Refused {
        /// The step refused.
        step: Step,
        /// The extension's message.
        message: String,
    },
    /// The extension answered a step with the wrong kind of response.
    #[error("unexpected `{got}` response to `{step}`")]
    Unexpected {
        /// The step.
        step: Step,
        /// The kind of response that arrived.
        got: &'static str,
    },
    /// The extension speaks an incompatible protocol version.
    #[error("incompatible protocol version: host speaks {ours}, extension speaks {theirs:?}")]
    Version {
        /// The host's version.
        ours: &'static str,
        /// The extension's version.
        theirs: String,
    },
    /// A tool's `parameters` are not valid JSON.
    #[error(transparent)]
    BadSchema(#[from] BadToolSchema),
    /// The service's configuration could not be serialized.
    #[error("service configuration is not serializable: {0}")]
    Config(#[source] serde_json::Error),
    /// The connection failed during a step.
    #[error("connection failed during `{step}`: {source}")]
    Transport {
        /// The step.
        step: Step,
        /// The cause, typically a [`ConnectionError`](crate::client::ConnectionError).
        #[source]
        source: BoxError,
    },
}

/// A disagreement between an extension's capabilities and its schemas.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToolMismatch {
    /// Named in the `tools` capability, but no schema was sent.
    MissingSchema(String),
    /// A schema was sent, but the `tools` capability does not name it.
    Undeclared(String),
}

impl fmt::Display for ToolMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolMismatch::MissingSchema(t) => write!(f, "tool `{t}` is declared but has no schema"),
            ToolMismatch::Undeclared(t) => write!(f, "tool `{t}` has a schema but is not declared"),
        }
    }
}

/// What an extension declared during its handshake.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExtensionInfo {
    /// The service name from `ready`.
    pub service: String,
    /// The protocol version from `ready`.
    pub version: String,
    /// The capabilities from `ready`.
    pub capabilities: Vec<Capability>,
    /// The tool schemas from `tool_schemas`: the tools the host offers.
    pub tools: Vec<Tool>,
    /// Disagreements between the capabilities and the schemas.
    pub mismatches: Vec<ToolMismatch>,
}

impl ExtensionInfo {
    /// Whether the extension answers `service_query`.
    pub fn has_query(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c.cap, Some(Cap::Query(_))))
    }

    /// The tool names the `tools` capability declares.
    pub fn declared_tools(&self) -> impl Iterator<Item = &str> {
        self.capabilities
            .iter()
            .flat_map(|c| match &c.cap {
                Some(Cap::Tools(list)) => list.names.as_slice(),
                _ => &[],
            })
            .map(String::as_str)
    }
}

/// Whether an extension speaking `theirs` can talk to this host.
///
/// Versions are `MAJOR.MINOR`; they are compatible when the majors match
/// and, before 1.0, the minors match too.
pub fn version_compatible(theirs: &str) -> bool {
    fn parse(v: &str) -> Option<(u32, u32)> {
        let (major, minor) = v.trim().split_once('.')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    }
    match (parse(PROTOCOL_VERSION), parse(theirs)) {
        (Some((om, on)), Some((tm, tn))) => om == tm && (om > 0 || on == tn),
        _ => false,
    }
}

async fn step<S>(
    svc: &mut S,
    step: Step,
    req: ExtRequest,
    timeout: Duration,
) -> Result<ExtResponse, HandshakeError>
where
    S: Service<ExtRequest, Response = ExtResponse>,
    S::Error: Into<BoxError>,
{
    let call = async { svc.ready().await?.call(req).await };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(HandshakeError::Timeout {
            step,
            after: timeout,
        }),
        Ok(Err(e)) => {
            let source: BoxError = e.into();
            if source.is::<tower::timeout::error::Elapsed>() {
                return Err(HandshakeError::Timeout {
                    step,
                    after: timeout,
                });
            }
            Err(HandshakeError::Transport { step, source })
        }
        Ok(Ok(resp)) => match resp.msg {
            Some(Msg::Error(e)) => Err(HandshakeError::Refused {
                step,
                message: e.message,
            }),
            _ => Ok(resp),
        },
    }
}

fn unexpected(step: Step, resp: &ExtResponse) -> HandshakeError {
    HandshakeError::Unexpected {
        step,
        got: resp.kind_name(),
    }
}

/// Runs the handshake over `svc`: `hello`, then `configure` with `config`
/// as JSON text, then `register_tools`, each step under `step_timeout`.
pub async fn handshake<S>(
    svc: &mut S,
    config: &serde_json::Value,
    step_timeout: Duration,
) -> Result<ExtensionInfo, HandshakeError>
where
    S: Service<ExtRequest, Response = ExtResponse>,
    S::Error: Into<BoxError>,
{
    let config = serde_json::to_string(config).map_err(HandshakeError::Config)?;

    let resp = step(
        svc,
        Step::Hello,
        ExtRequest::hello(PROTOCOL_VERSION),
        step_timeout,
    )
    .await?;
    let Some(Msg::Ready(ready)) = resp.msg else {
        return Err(unexpected(Step::Hello, &resp));
    };
    if !version_compatible(&ready.version) {
        return Err(HandshakeError::Version {
            ours: PROTOCOL_VERSION,
            theirs: ready.version,
        });
    }

    let resp = step(
        svc,
        Step::Configure,
        ExtRequest::configure(config),
        step_timeout,
    )
    .await?;
    if !matches!(resp.msg, Some(Msg::Configured(_))) {
        return Err(unexpected(Step::Configure, &resp));
    }

    let resp = step(
        svc,
        Step::RegisterTools,
        ExtRequest::register_tools(),
        step_timeout,
    )
    .await?;
    let Some(Msg::ToolSchemas(schemas)) = resp.msg else {
        return Err(unexpected(Step::RegisterTools, &resp));
    };
    let tools = schemas
        .tools
        .into_iter()
        .map(Tool::from_def)
        .collect::<Result<Vec<_>, _>>()?;

    let mut ext = ExtensionInfo {
        service: ready.service,
        version: ready.version,
        capabilities: ready.capabilities,
        tools,
        mismatches: Vec::new(),
    };
    let declared: BTreeSet<&str> = ext.declared_tools().collect();
    let schemas: BTreeSet<&str> = ext.tools.iter().map(|t| t.name.as_str()).collect();
    let mut mismatches: Vec<ToolMismatch> = declared
        .difference(&schemas)
        .map(|t| ToolMismatch::MissingSchema((*t).to_owned()))
        .collect();
    mismatches.extend(
        schemas
            .difference(&declared)
            .map(|t| ToolMismatch::Undeclared((*t).to_owned())),
    );
    for m in &mismatches {
        tracing::warn!(service = %ext.service, "{m}");
    }
    ext.mismatches = mismatches;
    Ok(ext)
}

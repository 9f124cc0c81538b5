//! The host's handshake: `hello`, `configure`, `register_tools`.
//!
//! [`handshake`] runs the three steps over any request service, each under
//! its own time limit, and returns what the extension declared as an
//! [`ExtensionInfo`]. Every failure is a typed [`HandshakeError`]
//! naming the step; unparseable tool schemas are errors naming the tool, and
//! tools declared in the capabilities but missing from the schemas (or the
//! reverse) are reported in [`ExtensionInfo::mismatches`].
//!
//! The steps are also public on their own — [`hello`], [`configure`] and
//! [`register_tools`] — for tools that need to look at each answer, such as
//! the [conformance checks](crate::conformance). [`handshake`] is exactly
//! these three in order, with the version check of [`Ready::check_version`]
//! after `hello`.
//!
//! # Time limits
//!
//! Each step is given `step_timeout`. [`HandshakeError::Timeout`] means that
//! limit passed, and names the step and the limit. A service with a time
//! limit of its own (a `tower::timeout::Timeout` layer, say) may give up
//! first: that is the service failing, reported as
//! [`HandshakeError::Transport`] with the service's error (tower's
//! `Elapsed`) as the source, never as the handshake's own timeout.
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
//!
//! The same, one step at a time:
//!
//! ```
//! use std::time::Duration;
//! use exthost::handshake::{configure, hello, register_tools};
//! use exthost::server::{Call, Extension};
//! use exthost::{client::Connection, Tool};
//! use tower::service_fn;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (host_io, ext_io) = tokio::io::duplex(4096);
//! # let ext = Extension::new("demo").tool(Tool::new("echo", "Echo", serde_json::json!({})));
//! # tokio::spawn(ext.serve_connection(ext_io, service_fn(|_call: Call| async {
//! #     Ok::<_, std::convert::Infallible>(String::new())
//! # })));
//! let mut conn = Connection::new(host_io);
//! let limit = Duration::from_secs(10);
//! let ready = hello(&mut conn, limit).await?;
//! ready.check_version()?;
//! assert_eq!(ready.declared_tools().collect::<Vec<_>>(), ["echo"]);
//! configure(&mut conn, &serde_json::json!({}), limit).await?;
//! let defs = register_tools(&mut conn, limit).await?;
//! assert_eq!(defs[0].name, "echo");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use tower::{BoxError, Service, ServiceExt};

use crate::proto::{
    capability::Cap, ext_response::Msg, Capability, ExtRequest, ExtResponse, ResponseKind, ToolDef,
    PROTOCOL_VERSION,
};
use crate::tool::{BadToolSchema, RejectedTool, Tool};

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
    /// The step's own time limit passed without an answer.
    #[error("handshake timed out at `{step}` after {after:?}")]
    Timeout {
        /// The step that timed out.
        step: Step,
        /// The step's time limit: the `step_timeout` it was given.
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
        got: ResponseKind,
    },
    /// The extension speaks an incompatible protocol version.
    #[error("incompatible protocol version: host speaks {ours}, extension speaks {theirs:?}")]
    Version {
        /// The host's version.
        ours: &'static str,
        /// The extension's version.
        theirs: String,
    },
    /// A tool's `parameters` are not valid JSON. No longer returned by
    /// [`handshake`], which leaves such a tool out alone (see
    /// [`ExtensionInfo::rejected`]); kept for callers that parse schemas
    /// themselves.
    #[error(transparent)]
    BadSchema(#[from] BadToolSchema),
    /// The service's configuration could not be serialized.
    #[error("service configuration is not serializable: {0}")]
    Config(#[source] serde_json::Error),
    /// The request service failed during a step: the connection broke, or
    /// a layer of the service gave up.
    #[error("`{step}` failed: {source}")]
    Transport {
        /// The step.
        step: Step,
        /// The service's error: typically a
        /// [`ConnectionError`](crate::client::ConnectionError), or tower's
        /// [`Elapsed`](tower::timeout::error::Elapsed) when the service's
        /// own time limit passed before the step's.
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

/// What an extension answered to `hello`: the first step's result.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Ready {
    /// The service name.
    pub service: String,
    /// The protocol version the extension speaks.
    pub version: String,
    /// Its capabilities.
    pub capabilities: Vec<Capability>,
}

impl Ready {
    /// Whether the extension answers `service_query`.
    pub fn has_query(&self) -> bool {
        has_query(&self.capabilities)
    }

    /// The tool names the `tools` capability declares.
    pub fn declared_tools(&self) -> impl Iterator<Item = &str> {
        declared_tools(&self.capabilities)
    }

    /// Fails with [`HandshakeError::Version`] unless the extension's
    /// version is [compatible](version_compatible) with this host's.
    pub fn check_version(&self) -> Result<(), HandshakeError> {
        if version_compatible(&self.version) {
            Ok(())
        } else {
            Err(HandshakeError::Version {
                ours: PROTOCOL_VERSION,
                theirs: self.version.clone(),
            })
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
    /// The tool schemas from `tool_schemas` that the host offers: each
    /// one's `parameters` an object schema (see
    /// [`SchemaProblem`](crate::SchemaProblem)).
    pub tools: Vec<Tool>,
    /// The tools declared with a definition LLM APIs refuse, each with
    /// why; left out alone, while the rest of the extension works.
    pub rejected: Vec<RejectedTool>,
    /// Disagreements between the capabilities and the schemas.
    pub mismatches: Vec<ToolMismatch>,
}

impl ExtensionInfo {
    /// Whether the extension answers `service_query`.
    pub fn has_query(&self) -> bool {
        has_query(&self.capabilities)
    }

    /// The tool names the `tools` capability declares.
    pub fn declared_tools(&self) -> impl Iterator<Item = &str> {
        declared_tools(&self.capabilities)
    }
}

fn has_query(capabilities: &[Capability]) -> bool {
    capabilities
        .iter()
        .any(|c| matches!(c.cap, Some(Cap::Query(_))))
}

fn declared_tools(capabilities: &[Capability]) -> impl Iterator<Item = &str> {
    capabilities
        .iter()
        .flat_map(|c| match &c.cap {
            Some(Cap::Tools(list)) => list.names.as_slice(),
            _ => &[],
        })
        .map(String::as_str)
}

/// The disagreements between the tools a `ready` declares and the tools
/// `schemas` describes: declared ones without a schema first, then
/// undeclared ones, each in name order.
pub(crate) fn tool_mismatches(ready: &Ready, schemas: &[ToolDef]) -> Vec<ToolMismatch> {
    let declared: BTreeSet<&str> = ready.declared_tools().collect();
    let sent: BTreeSet<&str> = schemas.iter().map(|t| t.name.as_str()).collect();
    let mut mismatches: Vec<ToolMismatch> = declared
        .difference(&sent)
        .map(|t| ToolMismatch::MissingSchema((*t).to_owned()))
        .collect();
    mismatches.extend(
        sent.difference(&declared)
            .map(|t| ToolMismatch::Undeclared((*t).to_owned())),
    );
    mismatches
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

/// Sends `req` over `svc` and waits for the answer, up to `limit`.
///
/// Only the expiry of `limit` is a [`HandshakeError::Timeout`]; any error of
/// the service, its own timeout included, is a
/// [`HandshakeError::Transport`] carrying that error.
async fn step<S>(
    svc: &mut S,
    step: Step,
    req: ExtRequest,
    limit: Duration,
) -> Result<ExtResponse, HandshakeError>
where
    S: Service<ExtRequest, Response = ExtResponse>,
    S::Error: Into<BoxError>,
{
    let call = async { svc.ready().await?.call(req).await };
    match tokio::time::timeout(limit, call).await {
        Err(_) => Err(HandshakeError::Timeout { step, after: limit }),
        Ok(Err(e)) => Err(HandshakeError::Transport {
            step,
            source: e.into(),
        }),
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
        got: resp.kind(),
    }
}

/// The first step: sends `hello` with this host's [`PROTOCOL_VERSION`] and
/// returns the extension's `ready`, within `step_timeout`.
///
/// The version is returned, not judged: call [`Ready::check_version`] (as
/// [`handshake`] does) to refuse an incompatible extension.
pub async fn hello<S>(svc: &mut S, step_timeout: Duration) -> Result<Ready, HandshakeError>
where
    S: Service<ExtRequest, Response = ExtResponse>,
    S::Error: Into<BoxError>,
{
    let req = ExtRequest::hello(PROTOCOL_VERSION);
    let resp = step(svc, Step::Hello, req, step_timeout).await?;
    match resp.msg {
        Some(Msg::Ready(ready)) => Ok(Ready {
            service: ready.service,
            version: ready.version,
            capabilities: ready.capabilities,
        }),
        _ => Err(unexpected(Step::Hello, &resp)),
    }
}

/// The second step: sends `configure` with `config` as JSON text and waits
/// for `configured`, within `step_timeout`.
pub async fn configure<S>(
    svc: &mut S,
    config: &serde_json::Value,
    step_timeout: Duration,
) -> Result<(), HandshakeError>
where
    S: Service<ExtRequest, Response = ExtResponse>,
    S::Error: Into<BoxError>,
{
    let config = serde_json::to_string(config).map_err(HandshakeError::Config)?;
    let req = ExtRequest::configure(config);
    let resp = step(svc, Step::Configure, req, step_timeout).await?;
    match resp.msg {
        Some(Msg::Configured(_)) => Ok(()),
        _ => Err(unexpected(Step::Configure, &resp)),
    }
}

/// The third step: sends `register_tools` and returns the tool schemas as
/// sent, within `step_timeout`.
///
/// The schemas are not parsed here; [`Tool::from_def`] parses one, and
/// [`handshake`] parses them all.
pub async fn register_tools<S>(
    svc: &mut S,
    step_timeout: Duration,
) -> Result<Vec<ToolDef>, HandshakeError>
where
    S: Service<ExtRequest, Response = ExtResponse>,
    S::Error: Into<BoxError>,
{
    let req = ExtRequest::register_tools();
    let resp = step(svc, Step::RegisterTools, req, step_timeout).await?;
    match resp.msg {
        Some(Msg::ToolSchemas(schemas)) => Ok(schemas.tools),
        _ => Err(unexpected(Step::RegisterTools, &resp)),
    }
}

/// Runs the handshake over `svc`: [`hello`] (and the version check), then
/// [`configure`] with `config`, then [`register_tools`], each step under
/// `step_timeout`.
///
/// A tool whose `parameters` are not JSON or not an object schema is left
/// out alone, listed in [`ExtensionInfo::rejected`] with why; so is a name
/// the extension declared more than once, with every one of its
/// definitions ([`SchemaProblem::DeclaredTwice`](crate::SchemaProblem::DeclaredTwice)).
/// The handshake goes on.
pub async fn handshake<S>(
    svc: &mut S,
    config: &serde_json::Value,
    step_timeout: Duration,
) -> Result<ExtensionInfo, HandshakeError>
where
    S: Service<ExtRequest, Response = ExtResponse>,
    S::Error: Into<BoxError>,
{
    let ready = hello(svc, step_timeout).await?;
    ready.check_version()?;
    configure(svc, config, step_timeout).await?;
    let defs = register_tools(svc, step_timeout).await?;

    let mismatches = tool_mismatches(&ready, &defs);
    let (tools, rejected) =
        crate::tool::split_checked(defs.into_iter().map(Tool::from_def_checked));
    for m in &mismatches {
        tracing::warn!(service = %ready.service, "{m}");
    }
    Ok(ExtensionInfo {
        service: ready.service,
        version: ready.version,
        capabilities: ready.capabilities,
        tools,
        rejected,
        mismatches,
    })
}

//! A tower-based host for AI-agent tool extensions running as separate
//! processes.
//!
//! An agent server embeds exthost as its tool backend. Each extension is a
//! process that serves a small protobuf protocol on a Unix socket; exthost
//! connects to it, runs the handshake, learns its tools, and turns the
//! connection into a [`tower::Service`] that callers share. Every piece is a
//! tower service or layer, so users can put their own middleware (retry,
//! metrics, rate limits) anywhere in the stack.
//!
//! The modules follow the data flow:
//!
//! - [`proto`]: the wire messages, generated from `proto/ext.proto`.
//! - [`codec`]: 4-byte big-endian length + protobuf framing, 16 MiB maximum.
//! - [`client`]: one extension connection as a `Service<ExtRequest>`; each
//!   caller writes its own request and reads its own answer (no task hop);
//!   answers can never be mixed up.
//! - `mcp` (feature `mcp`, on by default): one MCP server session (stdio
//!   or Streamable HTTP, through the official SDK `rmcp`) as a
//!   `Service<ExtRequest>` like a native connection, so MCP servers and
//!   native extensions share one stack, router and supervisor.
//! - [`trace`] and [`stack`]: the per-extension stack (tracing, timeout,
//!   in-flight limit).
//! - [`handshake`]: `hello`, `configure`, `register_tools`.
//! - [`server`]: the extension's side, for extension authors.
//! - [`conformance`]: the checks `exthost check` runs, for extension
//!   authors' own tests.
//! - [`config`], [`process`] and [`connector`]: from a service's
//!   configuration to a running, handshaken extension process, and back.
//! - [`status`]: where a service is in its life, and why it went down.
//! - [`registry`] and [`router`]: the tool list, and one
//!   `Service<ToolCall>` over every extension's boxed stack; the router
//!   holds only its routing table.
//! - [`manager`]: starts, supervises and restarts the services per their
//!   policy, and keeps the router's table current.
//! - `mcp_server` (feature `mcp`): every hosted tool served to MCP clients
//!   (what `exthost mcp` runs).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use exthost::handshake::handshake;
//! use exthost::proto::{ExtRequest, ExtResponse};
//! use exthost::server::{Call, Extension};
//! use exthost::stack::StackBuilder;
//! use exthost::Tool;
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), exthost::BoxError> {
//! // The extension side, here in-process over an in-memory pipe.
//! let (host_io, ext_io) = tokio::io::duplex(4096);
//! let ext = Extension::new("greeter")
//!     .tool(Tool::new("greet", "Says hello", serde_json::json!({"type": "object"})));
//! tokio::spawn(ext.serve_connection(ext_io, service_fn(|call: Call| async move {
//!     match call {
//!         Call::Tool(t) => Ok::<_, std::convert::Infallible>(format!("hello, {}", t.args)),
//!         _ => Ok(String::new()),
//!     }
//! })));
//!
//! // The host side: the handshake over the bare connection (each step
//! // under its own limit), then calls through the stack.
//! let stack = StackBuilder::new("greeter").timeout(Duration::from_secs(5));
//! let conn = stack.connection(host_io);
//! let info = handshake(&mut conn.clone(), &serde_json::json!({}), Duration::from_secs(10)).await?;
//! assert_eq!(info.tools[0].name, "greet");
//! let svc = stack.service(conn);
//! let resp = svc.oneshot(ExtRequest::tool_call("greet", "world")).await?;
//! assert_eq!(resp, ExtResponse::tool_result("hello, world"));
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

pub mod client;
pub mod codec;
pub mod config;
pub mod conformance;
pub mod connector;
pub mod handshake;
pub mod manager;
#[cfg(feature = "mcp")]
pub mod mcp;
#[cfg(feature = "mcp")]
pub mod mcp_server;
pub mod process;
pub mod proto;
pub mod registry;
pub mod router;
pub mod server;
mod socket;
pub mod stack;
pub mod status;
mod tool;
pub mod trace;

pub use connector::StartError;
pub use router::CallError;
pub use tool::{
    check_parameters, BadArguments, BadToolSchema, Content, RejectedTool, SchemaProblem, Tool,
    ToolOutput,
};
pub use tower::BoxError;

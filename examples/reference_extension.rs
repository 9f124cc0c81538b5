//! An extension written to the reference protocol alone, as a test fixture.
//!
//! It speaks the wire protocol by hand (4-byte big-endian length, then one
//! protobuf message) and does only what the reference protocol asks, the
//! way extensions written for the reference do:
//!
//! - `hello` → `ready` (version 0.2, service `reference`, one tool `echo`,
//!   the query capability); `configure` → `configured`; `register_tools`
//!   → `tool_schemas`; `service_query` → `service_query_result`;
//! - a call of `echo` → `tool_result` with its arguments; a call of any
//!   other tool → a `tool_result` text saying so, not an `error` (as the
//!   reference's own extension answers);
//! - `get_schema` → `error`: it has no configuration schema;
//! - no correlation ids: its answers never carry one;
//! - `shutdown` → no answer; it removes its socket and exits 0.
//!
//! Started like any extension: `reference_extension serve --socket PATH`.

use std::path::PathBuf;

use exthost::codec::ServerCodec;
use exthost::proto::{ext_request::Msg, Capability, ExtResponse, ToolDef};
use futures::{SinkExt, StreamExt};
use tokio::net::UnixListener;
use tokio_util::codec::Framed;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let socket = socket_arg()?;
    let listener = UnixListener::bind(&socket)?;
    loop {
        let (io, _) = listener.accept().await?;
        let mut framed = Framed::new(io, ServerCodec::new());
        while let Some(req) = framed.next().await {
            let resp = match req?.msg {
                Some(Msg::Hello(_)) => ExtResponse::ready(
                    "0.2",
                    "reference",
                    vec![Capability::tools(["echo"]), Capability::query()],
                ),
                Some(Msg::Configure(_)) => ExtResponse::configured(),
                Some(Msg::RegisterTools(_)) => ExtResponse::tool_schemas(vec![ToolDef {
                    name: "echo".into(),
                    description: "Returns its arguments unchanged".into(),
                    parameters: br#"{"type":"object"}"#.to_vec(),
                    strict: false,
                }]),
                Some(Msg::ToolCall(call)) if call.name == "echo" => {
                    ExtResponse::tool_result(call.args)
                }
                Some(Msg::ToolCall(call)) => {
                    ExtResponse::tool_result(format!("Unknown tool: {}", call.name))
                }
                Some(Msg::ServiceQuery(q)) => {
                    ExtResponse::service_query_result(format!("reference: {}", q.query))
                }
                Some(Msg::GetSchema(_)) => ExtResponse::error("get_schema is not supported"),
                Some(Msg::Shutdown(_)) => {
                    std::fs::remove_file(&socket)?;
                    return Ok(());
                }
                None => ExtResponse::error("empty request"),
            };
            framed.send(resp).await?;
        }
    }
}

/// The `PATH` of `serve --socket PATH`.
fn socket_arg() -> Result<PathBuf, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [serve, flag, path] if serve == "serve" && flag == "--socket" => Ok(path.into()),
        _ => Err(format!(
            "usage: reference_extension serve --socket PATH (got {args:?})"
        )),
    }
}

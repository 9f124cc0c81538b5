//! A purpose-built misbehaving extension, for reliability tests of the
//! host. Started like any extension (`hostile_extension serve --socket
//! PATH`); `HOSTILE_MODE` picks the misbehaviour. It handshakes correctly
//! (offering one tool, `h_call`) unless the mode says otherwise, then:
//!
//! - `garbage`: answers a tool call with an undecodable frame;
//! - `oversized`: answers with a 64 MiB length prefix;
//! - `wrong_kind`: answers with a `configured` response;
//! - `double`: answers every tool call twice (both answers carrying the
//!   call's correlation id);
//! - `half_frame`: writes half a frame, then closes and exits 1;
//! - `skip_one`: never answers the first tool call, answers later ones (an
//!   old extension: no correlation ids);
//! - `no_read`: after the handshake, never reads again;
//! - `flood`: after the handshake, sends unsolicited answers without end;
//! - `exit_handshake`: exits with status 7 when it receives `hello`;
//! - `no_bind`: never binds its socket;
//! - `no_ids`: behaves, but never echoes correlation ids (an extension
//!   written before they existed).
//!
//! Any other mode (or none) answers tool calls by echoing their arguments.

use exthost::codec::ServerCodec;
use exthost::proto::{ext_request::Msg, Capability, ExtResponse, PROTOCOL_VERSION};
use exthost::server::ServeArgs;
use exthost::Tool;
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;

/// `skip_one` and `no_ids` play old extensions that know no correlation
/// ids; the others echo them, as `exthost::server` does.
fn echoes_ids(mode: &str) -> bool {
    mode != "skip_one" && mode != "no_ids"
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = ServeArgs::from_env()?;
    let mode = std::env::var("HOSTILE_MODE").unwrap_or_default();
    if mode == "no_bind" {
        std::future::pending::<()>().await;
    }
    let listener = tokio::net::UnixListener::bind(&args.socket)?;
    let (io, _) = listener.accept().await?;
    let mut framed = Framed::new(io, ServerCodec::new());
    let mut calls = 0u64;
    while let Some(req) = framed.next().await {
        let req = req?;
        let id = req.correlation_id;
        let mut resp = match req.msg {
            Some(Msg::Hello(_)) => {
                if mode == "exit_handshake" {
                    std::process::exit(7);
                }
                ExtResponse::ready(
                    PROTOCOL_VERSION,
                    "hostile",
                    vec![Capability::tools(["h_call"])],
                )
            }
            Some(Msg::Configure(_)) => ExtResponse::configured(),
            Some(Msg::RegisterTools(_)) => {
                let tool = Tool::new("h_call", "Misbehaves", serde_json::json!({}));
                let mut resp = ExtResponse::tool_schemas(vec![tool.to_def()]);
                if echoes_ids(&mode) {
                    resp.correlation_id = id;
                }
                framed.send(resp).await?;
                if mode == "flood" {
                    loop {
                        framed.send(ExtResponse::tool_result("unsolicited")).await?;
                    }
                }
                if mode == "no_read" {
                    std::future::pending::<()>().await;
                }
                continue;
            }
            Some(Msg::Shutdown(_)) => {
                let _ = std::fs::remove_file(&args.socket);
                return Ok(());
            }
            Some(Msg::GetSchema(_)) => ExtResponse::schema_result("{}"),
            Some(Msg::ToolCall(call)) if call.name != "h_call" => {
                ExtResponse::error(format!("unknown tool: {}", call.name))
            }
            Some(Msg::ToolCall(call)) => {
                calls += 1;
                let raw = framed.get_mut();
                match mode.as_str() {
                    "garbage" => {
                        raw.write_all(b"\x00\x00\x00\x03\xff\xff\xff").await?;
                        continue;
                    }
                    "oversized" => {
                        raw.write_all(&(64u32 << 20).to_be_bytes()).await?;
                        raw.write_all(b"\x1a\x00").await?;
                        continue;
                    }
                    "wrong_kind" => ExtResponse::configured(),
                    "double" => {
                        let mut first = ExtResponse::tool_result(call.args.clone());
                        first.correlation_id = id;
                        framed.send(first).await?;
                        ExtResponse::tool_result(call.args)
                    }
                    "half_frame" => {
                        raw.write_all(b"\x00\x00\x00\x10\x1a\x0e").await?;
                        raw.flush().await?;
                        std::process::exit(1);
                    }
                    "skip_one" if calls == 1 => continue,
                    _ => ExtResponse::tool_result(call.args),
                }
            }
            _ => ExtResponse::error("unsupported"),
        };
        if echoes_ids(&mode) {
            resp.correlation_id = resp.correlation_id.or(id);
        }
        framed.send(resp).await?;
    }
    Ok(())
}

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
//!   written before they existed);
//! - `close_idle`: answers the first tool call, then closes its connection
//!   and keeps running (its handler died, the process did not);
//! - `close_after_handshake`: the same right after the handshake, before
//!   any call;
//! - `bad_schemas`: offers `h_call` and, beside it, tools whose parameters
//!   are no object schema (`h_string`: `{"type":"string"}`, `h_null`:
//!   `null`, `h_array`: `[1,2]`, `h_invalid`: `{"type":"object",
//!   "properties":3}`, `h_not_json`: bytes that are not JSON), and declares
//!   `h_twice` twice with two different definitions, `h_dup` first with
//!   `{"type":"string"}` then with `{"type":"object"}`; `h_bad_ref`'s
//!   schema has a `$ref` to nothing, `h_bad_pattern`'s a `pattern` that is
//!   not a regular expression.
//!
//! With `HOSTILE_ONCE` set to a file path, only the first run misbehaves:
//! it creates the file, and a run that finds it behaves.
//!
//! With `HOSTILE_TERM_GATE` set to a socket path, SIGTERM makes it connect
//! there, write `term` and a newline, wait until the other end closes, and
//! exit 0: tests see that it was given time to stop.
//!
//! Any other mode (or none) answers tool calls by echoing their arguments.

use exthost::codec::ServerCodec;
use exthost::proto::{ext_request::Msg, Capability, ExtResponse, PROTOCOL_VERSION};
use exthost::server::ServeArgs;
use exthost::Tool;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;

/// `skip_one` and `no_ids` play old extensions that know no correlation
/// ids; the others echo them, as `exthost::server` does.
fn echoes_ids(mode: &str) -> bool {
    mode != "skip_one" && mode != "no_ids"
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = ServeArgs::from_env()?;
    let mut mode = std::env::var("HOSTILE_MODE").unwrap_or_default();
    if let Some(once) = std::env::var_os("HOSTILE_ONCE") {
        // Only the first incarnation misbehaves.
        if std::fs::File::create_new(once).is_err() {
            mode.clear();
        }
    }
    if let Some(gate) = std::env::var_os("HOSTILE_TERM_GATE") {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::spawn(async move {
            term.recv().await;
            if let Ok(mut s) = tokio::net::UnixStream::connect(gate).await {
                let _ = s.write_all(b"term\n").await;
                let _ = s.read_to_end(&mut Vec::new()).await;
            }
            std::process::exit(0);
        });
    }
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
                    vec![if mode == "bad_schemas" {
                        Capability::tools([
                            "h_call",
                            "h_string",
                            "h_null",
                            "h_array",
                            "h_invalid",
                            "h_not_json",
                            "h_twice",
                            "h_dup",
                            "h_bad_ref",
                            "h_bad_pattern",
                        ])
                    } else {
                        Capability::tools(["h_call"])
                    }],
                )
            }
            Some(Msg::Configure(_)) => ExtResponse::configured(),
            Some(Msg::RegisterTools(_)) => {
                let tool = Tool::new("h_call", "Misbehaves", serde_json::json!({}));
                let mut defs = vec![tool.to_def()];
                if mode == "bad_schemas" {
                    defs.extend(bad_schemas());
                }
                let mut resp = ExtResponse::tool_schemas(defs);
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
                if mode == "close_after_handshake" {
                    return linger_closed(framed).await;
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
        if mode == "close_idle" && calls == 1 {
            return linger_closed(framed).await;
        }
    }
    Ok(())
}

/// Closes the connection while the host owes nothing and waits for
/// nothing; the process lives on.
async fn linger_closed<T>(framed: T) -> Result<(), Box<dyn std::error::Error>> {
    drop(framed);
    std::future::pending().await
}

/// The tools of `bad_schemas` mode besides `h_call`.
fn bad_schemas() -> Vec<exthost::proto::ToolDef> {
    use serde_json::json;
    let def = |name: &str, params: &[u8]| exthost::proto::ToolDef {
        name: name.to_owned(),
        description: "A tool with a bad definition".to_owned(),
        parameters: params.to_vec(),
        strict: false,
    };
    let tool = |name: &str, params: serde_json::Value| Tool::new(name, "Declared twice", params);
    vec![
        def("h_string", br#"{"type":"string"}"#),
        def("h_null", b"null"),
        def("h_array", b"[1,2]"),
        def("h_invalid", br#"{"type":"object","properties":3}"#),
        def("h_not_json", b"{not json"),
        tool("h_twice", json!({"type": "object"})).to_def(),
        tool(
            "h_twice",
            json!({"type": "object", "properties": {"x": {"type": "string"}}}),
        )
        .to_def(),
        def("h_dup", br#"{"type":"string"}"#),
        def("h_dup", br#"{"type":"object"}"#),
        def("h_bad_ref", br##"{"type":"object","$ref":"#/$defs/nope"}"##),
        def(
            "h_bad_pattern",
            br#"{"type":"object","properties":{"s":{"type":"string","pattern":"(unclosed"}}}"#,
        ),
    ]
}

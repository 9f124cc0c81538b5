//! An MCP server built on `rmcp`, for tests and demos of exthost's MCP host.
//!
//! It is a real third-party-style MCP server (rmcp's `ServerHandler`, no
//! exthost code), so the host's tests can exercise the handshake, listing,
//! every kind of tool result, `isError`, cancellation, crashes, list changes
//! and shutdown against real processes.
//!
//! # Running it
//!
//! ```text
//! cargo run --example mcp_server                          # stdio (the default)
//! cargo run --example mcp_server -- --http 127.0.0.1:0    # Streamable HTTP
//! ```
//!
//! - **stdio**: stdin/stdout carry newline-delimited JSON-RPC; nothing else is
//!   ever written to stdout. The process exits 0 at end of stdin.
//! - **Streamable HTTP** (`--http ADDR`, e.g. `127.0.0.1:0` for any free
//!   port): the endpoint is `/mcp`. Once the socket is bound the server writes
//!   one line, `listening on http://IP:PORT/mcp` (with the real port), to
//!   stdout and flushes it; tests read that line. rmcp's default Host-header
//!   check accepts only `localhost`, `127.0.0.1` and `::1`, so bind loopback.
//!   SIGTERM or SIGINT stops it (exit 0).
//!
//! Logs go to stderr only (`RUST_LOG` filters them, default `info`). The first
//! line is always `mcp_server: started pid=<pid>`, so tests can find it in the
//! host's log file.
//!
//! # Tools
//!
//! Every tool has a description and an object input schema:
//!
//! - `echo {text: string, structured?: boolean}`: one text block equal to
//!   `text`; with `"structured": true` also `structuredContent`
//!   `{"text": text}`.
//! - `sleep {ms: integer}`: sleeps `ms` milliseconds, then answers
//!   `slept <ms>`. When the request carries a progress token, it first
//!   sends one progress notification (0 of `ms`, message
//!   `sleeping <ms> ms`). If the client cancels the request
//!   (`notifications/cancelled`) it stops at once and appends the line
//!   `cancelled sleep <ms>` to the file named by `MCP_CANCEL_LOG` (if set)
//!   and to stderr.
//! - `fail {message: string}`: a result with `isError: true` and one text
//!   block, `message`.
//! - `crash {}`: the process exits with status 3 at once, without answering.
//! - `image {}`: an image block (a 1x1 PNG, `image/png`), an audio block (a
//!   tiny WAV, `audio/wav`), a text block `an image`, a `resource_link`
//!   (`mcp-server://image.png`) and an embedded text resource
//!   (`mcp-server://note`, text `an embedded note`).
//! - `change_tools {}`: toggles the extra tool `extra {}` (which answers
//!   `extra`) in and out of the tool list, sends
//!   `notifications/tools/list_changed` to the client, then answers
//!   `tools changed`.
//! - `pid {}`: the server's process id, as text.
//! - `getenv {name: string}` (only when `MCP_GETENV` is set): the value of
//!   the environment variable `name`, or `unset`.
//!
//! Arguments of the wrong shape (say `echo` without `text`) and unknown tools
//! are answered with a JSON-RPC `invalid_params` error (-32602), not with a
//! result.
//!
//! # Environment
//!
//! - `MCP_CANCEL_LOG=FILE`: where `sleep` records the cancellations it saw.
//! - `MCP_SPAWN_GRANDCHILD=1`: at start, spawns `sleep 600` as a child that is
//!   never waited for (as a server that forks a helper would) and logs
//!   `grandchild pid=<pid>` to stderr. The helper's stdin, stdout and stderr
//!   are `/dev/null`, so it holds none of the server's pipes. When the server
//!   exits, the helper is left in its process group for the host to clean
//!   up; tests check that nothing is left after shutdown.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, Resource,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value};

/// A 1x1 RGBA PNG.
const PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
/// A WAV file (8 kHz, mono, 16 bit) holding four silent samples.
const WAV_BASE64: &str = "UklGRiwAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQgAAAAAAAAAAAAAAA==";

/// The server. Clones share the `extra` toggle, so in HTTP mode every
/// session sees the same tool list.
#[derive(Clone, Default)]
struct TestServer {
    extra_enabled: Arc<AtomicBool>,
}

/// An input schema: an object with these properties, `required` listing the
/// mandatory ones.
fn schema(properties: Value, required: &[&str]) -> JsonObject {
    let value = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    match value {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal"),
    }
}

fn no_arguments() -> JsonObject {
    schema(json!({}), &[])
}

impl TestServer {
    fn tools(&self) -> Vec<Tool> {
        let mut tools = vec![
            Tool::new(
                "echo",
                "Returns `text` as one text block; with `structured: true` also as \
                 structuredContent {\"text\": text}.",
                schema(
                    json!({
                        "text": {"type": "string", "description": "The text to send back."},
                        "structured": {
                            "type": "boolean",
                            "description": "Also return structuredContent {\"text\": text}.",
                        },
                    }),
                    &["text"],
                ),
            ),
            Tool::new(
                "sleep",
                "Sleeps `ms` milliseconds, then answers `slept <ms>`. Stops early if the \
                 request is cancelled, and records the cancellation.",
                schema(
                    json!({
                        "ms": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "How long to sleep, in milliseconds.",
                        },
                    }),
                    &["ms"],
                ),
            ),
            Tool::new(
                "fail",
                "Answers a tool error (isError: true) whose text is `message`.",
                schema(
                    json!({
                        "message": {"type": "string", "description": "The error text."},
                    }),
                    &["message"],
                ),
            ),
            Tool::new(
                "crash",
                "Exits the server process at once with status 3, without answering.",
                no_arguments(),
            ),
            Tool::new(
                "image",
                "Answers an image (PNG), an audio clip (WAV), a text block, a resource link \
                 and an embedded resource.",
                no_arguments(),
            ),
            Tool::new(
                "change_tools",
                "Adds or removes the tool `extra` and notifies the client that the tool \
                 list changed.",
                no_arguments(),
            ),
            Tool::new("pid", "Answers the server's process id.", no_arguments()),
        ];
        if std::env::var_os("MCP_GETENV").is_some() {
            tools.push(Tool::new(
                "getenv",
                "Answers the value of the environment variable `name`, or `unset`.",
                schema(
                    json!({"name": {"type": "string", "description": "The variable."}}),
                    &["name"],
                ),
            ));
        }
        if self.extra_enabled.load(Ordering::SeqCst) {
            tools.push(Tool::new(
                "extra",
                "Present only after an odd number of `change_tools` calls; answers `extra`.",
                no_arguments(),
            ));
        }
        tools
    }

    async fn call(
        &self,
        name: &str,
        args: &JsonObject,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        match name {
            "echo" => {
                let text = string_arg(args, "text")?;
                let structured = match args.get("structured") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(bad_args("`structured` must be a boolean")),
                };
                let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
                if structured {
                    result.structured_content = Some(json!({ "text": text }));
                }
                Ok(result)
            }
            "sleep" => {
                let ms = args
                    .get("ms")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad_args("`ms` must be a non-negative integer"))?;
                // Progress at the start, for a client that asked for it.
                if let Some(token) = context.meta.get_progress_token() {
                    let progress = ProgressNotificationParam::new(token, 0.0)
                        .with_total(ms as f64)
                        .with_message(format!("sleeping {ms} ms"));
                    let _ = context.peer.notify_progress(progress).await;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {
                        Ok(CallToolResult::success(vec![ContentBlock::text(format!("slept {ms}"))]))
                    }
                    () = context.ct.cancelled() => {
                        record_cancellation(ms);
                        Ok(CallToolResult::error(vec![ContentBlock::text(format!("cancelled sleep {ms}"))]))
                    }
                }
            }
            "fail" => {
                let message = string_arg(args, "message")?;
                Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
            }
            "crash" => {
                eprintln!("mcp_server: crash requested, exiting with status 3");
                std::process::exit(3);
            }
            "image" => Ok(CallToolResult::success(vec![
                ContentBlock::image(PNG_BASE64, "image/png"),
                ContentBlock::audio(WAV_BASE64, "audio/wav"),
                ContentBlock::text("an image"),
                ContentBlock::resource_link(
                    Resource::new("mcp-server://image.png", "image.png")
                        .with_mime_type("image/png")
                        .with_description("The image above, as a link."),
                ),
                ContentBlock::embedded_text("mcp-server://note", "an embedded note"),
            ])),
            "change_tools" => {
                let now = !self.extra_enabled.fetch_xor(true, Ordering::SeqCst);
                eprintln!(
                    "mcp_server: tool `extra` {}",
                    if now { "added" } else { "removed" }
                );
                if let Err(error) = context.peer.notify_tool_list_changed().await {
                    eprintln!("mcp_server: could not send tools/list_changed: {error}");
                }
                Ok(CallToolResult::success(vec![ContentBlock::text(
                    "tools changed",
                )]))
            }
            "pid" => Ok(CallToolResult::success(vec![ContentBlock::text(
                std::process::id().to_string(),
            )])),
            "getenv" if std::env::var_os("MCP_GETENV").is_some() => {
                let name = string_arg(args, "name")?;
                let value = std::env::var(name).unwrap_or_else(|_| "unset".to_owned());
                Ok(CallToolResult::success(vec![ContentBlock::text(value)]))
            }
            "extra" if self.extra_enabled.load(Ordering::SeqCst) => {
                Ok(CallToolResult::success(vec![ContentBlock::text("extra")]))
            }
            other => Err(ErrorData::invalid_params(
                format!("unknown tool `{other}`"),
                None,
            )),
        }
    }
}

fn bad_args(message: &str) -> ErrorData {
    ErrorData::invalid_params(message.to_string(), None)
}

fn string_arg<'a>(args: &'a JsonObject, key: &str) -> Result<&'a str, ErrorData> {
    args.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| bad_args(&format!("`{key}` must be a string")))
}

/// Appends `cancelled sleep <ms>` to `$MCP_CANCEL_LOG` (if set) and stderr.
fn record_cancellation(ms: u64) {
    let line = format!("cancelled sleep {ms}");
    eprintln!("mcp_server: {line}");
    if let Some(path) = std::env::var_os("MCP_CANCEL_LOG") {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| writeln!(file, "{line}"));
        if let Err(error) = written {
            eprintln!(
                "mcp_server: cannot write {}: {error}",
                path.to_string_lossy()
            );
        }
    }
}

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("exthost-test-mcp-server", "0.1.0"))
        .with_instructions("A test server for exthost's MCP host.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools().into_iter().find(|tool| tool.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        self.call(&request.name, &args, context)
            .await
            .map(Into::into)
    }
}

/// Spawns `sleep 600`, never waited for, as a forked helper would be.
fn spawn_grandchild() {
    // Its stdio is /dev/null: it must not hold the protocol pipe (stdout) open,
    // or the host would see no end of stream when this server dies.
    let spawned = tokio::process::Command::new("sleep")
        .arg("600")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => {
            let pid = child.id().unwrap_or(0);
            eprintln!("grandchild pid={pid}");
            // Dropping a tokio `Child` neither kills nor waits for it.
            drop(child);
        }
        Err(error) => eprintln!("mcp_server: cannot spawn grandchild: {error}"),
    }
}

fn usage() -> ! {
    eprintln!("usage: mcp_server [--http IP:PORT]");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    eprintln!("mcp_server: started pid={}", std::process::id());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();

    let mut args = std::env::args().skip(1);
    let http: Option<String> = match args.next().as_deref() {
        None => None,
        Some("--http") => Some(args.next().unwrap_or_else(|| usage())),
        Some(_) => usage(),
    };
    if args.next().is_some() {
        usage();
    }

    if std::env::var_os("MCP_SPAWN_GRANDCHILD").is_some_and(|v| v == "1") {
        spawn_grandchild();
    }

    match http {
        None => serve_stdio().await,
        Some(addr) => serve_http(TestServer::default(), &addr).await,
    }
}

/// Serves over stdin and stdout until stdin ends, then exits the process
/// with status 0.
pub async fn serve_stdio() -> Result<(), Box<dyn std::error::Error>> {
    let running = TestServer::default()
        .serve(rmcp::transport::stdio())
        .await?;
    let reason = running.waiting().await?;
    eprintln!("mcp_server: stdio closed ({reason:?}), exiting");
    // Exit at once: do not let the runtime wait for stdin's reader thread.
    std::process::exit(0);
}

async fn serve_http(server: TestServer, addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let ct = tokio_util::sync::CancellationToken::new();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_cancellation_token(ct.child_token()),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{local}/mcp")?;
        stdout.flush()?;
    }
    eprintln!("mcp_server: listening on http://{local}/mcp");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("mcp_server: signal received, stopping");
            ct.cancel();
        })
        .await?;
    Ok(())
}

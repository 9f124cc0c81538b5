//! `exthost mcp`: every hosted tool served to MCP clients, over stdio or
//! Streamable HTTP (see `exthost::mcp_server`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use exthost::manager::ServiceManager;
use exthost::mcp_server::McpServer;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use crate::output::{self, say, CLOSED_OUTPUT};
use crate::signals::Signals;

/// The largest message a client may send: 32 MiB, as a line of `run`.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// Set in every service's environment by `exthost mcp` (its pid): an
/// `exthost mcp` that finds it was started by one.
const NESTED: &str = "EXTHOST_MCP_PARENT";

/// How `exthost mcp` serves.
pub(crate) struct Options {
    pub(crate) listen: Option<String>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) agent: Option<String>,
}

/// Runs `exthost mcp`: starts every service, serves until the client goes
/// (end of stdin), a signal, or (stdio) a closed stdout; then stops every
/// service gracefully. Exit 0, 7 for a closed stdout, 1 for bad options
/// or configuration.
pub(crate) async fn mcp(config: &Path, options: Options, signals: &mut Signals) -> u8 {
    if let Some(parent) = std::env::var_os(NESTED) {
        say!(
            "exthost: `exthost mcp` was started by the `exthost mcp` of pid {}, whose configuration lists it; refusing to serve (remove that entry from the configuration)",
            parent.to_string_lossy()
        );
        return 1;
    }
    // Refuse bad options before anything is started.
    let http = match &options.listen {
        None => None,
        Some(listen) => match http_options(listen, options.token_file.as_deref()) {
            Ok(http) => Some(http),
            Err(e) => {
                say!("exthost: {e}");
                return 1;
            }
        },
    };
    // Bind before anything is started: a port in use starts nothing.
    let listener = match &http {
        None => None,
        Some(http) => match tokio::net::TcpListener::bind(http.addr).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                say!("exthost: cannot listen on {}: {e}", http.addr);
                return 1;
            }
        },
    };
    let manager = match crate::manager_with(config, |cfg| {
        // A configuration that lists `exthost mcp` itself must not start
        // it again and again: the copy it starts refuses to run.
        for service in cfg.services.values_mut() {
            service
                .env
                .insert(NESTED.to_owned(), std::process::id().to_string());
        }
    }) {
        Ok(manager) => manager,
        Err(code) => return code,
    };
    // Clients list the tools once, right after `initialize`: serve once
    // every service has settled (each bounded by its handshake timeout).
    let report = tokio::select! {
        report = crate::start(&manager) => report,
        signal = signals.recv() => {
            crate::interrupted(&manager, signal).await;
            return 0;
        }
    };
    for (name, e) in &report.failed {
        tracing::warn!(service = %name, error = %e, "service did not start; its tools are not served");
    }
    let mut server = McpServer::new(manager.clone());
    if let Some(agent) = options.agent {
        server = server.agent(agent);
    }
    let notifier = server.notify_changes();
    let code = match (http, listener) {
        (Some(http), Some(listener)) => serve_http(server, http, listener, &manager, signals).await,
        _ => stdio(server, &manager, signals).await,
    };
    notifier.abort();
    code
}

async fn stdio(server: McpServer, manager: &ServiceManager, signals: &mut Signals) -> u8 {
    let closed = output::Closed::silent();
    closed.watch_stdout();
    // One message per line, up to 32 MiB (as `run`); rmcp drops longer
    // lines with an error log.
    let (stdin, stdout) = rmcp::transport::io::stdio_pipes();
    let transport = rmcp::transport::async_rw::AsyncRwTransport::new(stdin, stdout)
        .with_max_line_length(MAX_MESSAGE);
    let running = match server.serve(transport).await {
        Ok(running) => running,
        Err(e) => {
            // The client went away or spoke no MCP before `initialize`.
            tracing::warn!(error = %e, "no MCP session on stdin/stdout");
            manager.shutdown_all().await;
            return if closed.is_closed() && !output::stdin_hung_up() {
                output::log_closed(None);
                CLOSED_OUTPUT
            } else {
                0
            };
        }
    };
    let stop = running.cancellation_token();
    let waiting = running.waiting();
    tokio::pin!(waiting);
    // A client that exits closes both pipes at once: that is the end of
    // its session (0). Only a stdout closed while stdin stays open is a
    // reader that left (7).
    let left = |closed: &output::Closed| {
        if closed.is_closed() && !output::stdin_hung_up() {
            output::log_closed(None);
            CLOSED_OUTPUT
        } else {
            0
        }
    };
    let code = tokio::select! {
        reason = &mut waiting => {
            tracing::info!(?reason, "the MCP client closed the session; shutting down");
            left(&closed)
        }
        signal = signals.recv() => {
            tracing::info!(signal, "signal received; shutting down");
            stop.cancel();
            let _ = waiting.await;
            0
        }
        _ = closed.closed() => {
            stop.cancel();
            let _ = waiting.await;
            left(&closed)
        }
    };
    manager.shutdown_all().await;
    code
}

/// Where and how to listen.
struct Http {
    addr: SocketAddr,
    token: Option<Arc<[u8]>>,
}

fn http_options(listen: &str, token_file: Option<&Path>) -> Result<Http, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: not an ADDR:PORT ({e})"))?;
    let token = match token_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(format!(
                    "--token-file {}: the file is empty",
                    path.display()
                ));
            }
            Some(Arc::from(token.as_bytes()))
        }
    };
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "--listen {addr}: refusing a non-loopback address without --token-file (anyone who can reach it could run every tool)"
        ));
    }
    Ok(Http { addr, token })
}

async fn serve_http(
    server: McpServer,
    http: Http,
    listener: tokio::net::TcpListener,
    manager: &ServiceManager,
    signals: &mut Signals,
) -> u8 {
    let local = listener.local_addr().unwrap_or(http.addr);
    let stop = CancellationToken::new();
    let mut config =
        StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token());
    if !local.ip().is_loopback() {
        // Reached by a name or address we cannot list; the bearer token
        // guards it instead of the Host check.
        config = config.disable_allowed_hosts();
    }
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let mut router = axum::Router::new().nest_service("/mcp", service);
    if let Some(token) = http.token {
        router = router.layer(axum::middleware::from_fn(move |req, next| {
            bearer(token.clone(), req, next)
        }));
    }
    tracing::info!(url = %format!("http://{local}/mcp"), "serving MCP over Streamable HTTP");
    say!("exthost: serving MCP at http://{local}/mcp");
    let shutdown = stop.clone();
    let served = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.cancelled().await;
    });
    let served = served.into_future();
    tokio::pin!(served);
    let code = tokio::select! {
        result = &mut served => match result {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "the HTTP server failed");
                1
            }
        },
        signal = signals.recv() => {
            tracing::info!(signal, "signal received; shutting down");
            // Sessions end and their calls in flight are dropped, which
            // cancels them upstream, before the services stop.
            stop.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut served).await;
            0
        }
    };
    manager.shutdown_all().await;
    code
}

/// Lets a request through only with `Authorization: Bearer <token>`,
/// compared in constant time; else 401.
async fn bearer(
    token: Arc<[u8]>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use subtle::ConstantTimeEq;
    let given = req.headers().get(http_header::AUTHORIZATION).and_then(|v| {
        // The scheme is case-insensitive (RFC 7235).
        let v = v.as_bytes();
        (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..])
    });
    let ok = given.is_some_and(|given| bool::from(given.ct_eq(&token)));
    if ok {
        next.run(req).await
    } else {
        axum::response::Response::builder()
            .status(401)
            .header(http_header::WWW_AUTHENTICATE, "Bearer")
            .body(axum::body::Body::from("a valid bearer token is required\n"))
            .expect("a static response")
    }
}

use axum::http::header as http_header;
use std::future::IntoFuture;

//! The main job: an agent process that spawns real extension processes,
//! lists their tools and calls them.
//!
//! ```text
//! cargo run --example agent                  # the built-in tour, on two mock extensions
//! cargo run --example agent -- --config FILE # the same tour against your extensions
//! ```
//!
//! With no arguments it needs nothing built beforehand: it re-runs its own
//! binary as the mock extension (`agent serve --socket PATH`) and as an MCP
//! server built on rmcp (`agent mcp`, speaking MCP over stdio; the
//! `mcp_server` example). It starts two native extensions and the MCP
//! server side by side, each under its own tool prefix, prints the tool
//! table, calls tools on all three (an MCP result with an image among its
//! content blocks included), shows a timeout, an unknown tool, a crash
//! followed by the automatic restart, and shuts down gracefully.

#[allow(dead_code)]
#[path = "mock_extension.rs"]
mod mock_extension;

#[allow(dead_code)]
#[path = "mcp_server.rs"]
mod mcp_server;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use exthost::config::{HostConfig, RestartPolicy, ServiceConfig};
use exthost::manager::{ServiceManager, ServiceState};
use exthost::process::Paths;
use exthost::router::ToolCall;
use exthost::{Content, ToolOutput};
use tower::ServiceExt;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        // Re-run as an extension by ourselves.
        Some("serve") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(mock_extension::run()),
        Some("mcp") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(mcp_server::serve_stdio()),
        Some("--config") => {
            let file = args.next().ok_or("--config needs a file")?;
            runtime()?.block_on(tour_config(&file))
        }
        None => runtime()?.block_on(tour_builtin()),
        Some(other) => {
            Err(format!("unknown argument {other:?}; usage: agent [--config FILE]").into())
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "exthost=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    Ok(tokio::runtime::Runtime::new()?)
}

async fn tour_builtin() -> Result<(), Error> {
    let me = std::env::current_exe()?;
    let mock = |service: &str, prefix: &str| {
        ServiceConfig::command(&me)
            .with_env("MOCK_SERVICE", service)
            .with_env("MOCK_PREFIX", prefix)
            .with_restart(RestartPolicy::OnFailure)
            .with_call_timeout(Duration::from_secs(1))
    };
    let mut configs = BTreeMap::new();
    configs.insert("alpha".to_owned(), mock("alpha", "a_"));
    configs.insert("beta".to_owned(), mock("beta", "b_"));
    // An MCP server over stdio, its tools routed as `m_<name>`.
    configs.insert(
        "gamma".to_owned(),
        ServiceConfig::mcp_command(&me, ["mcp"])
            .with_prefix("m_")
            .with_restart(RestartPolicy::OnFailure)
            .with_call_timeout(Duration::from_secs(1)),
    );
    let dir = tempfile::Builder::new()
        .prefix("exthost-agent-")
        .tempdir_in("/tmp")?;
    let manager = ServiceManager::with_paths(
        &configs,
        Paths::under(dir.path(), dir.path().join("daemon.sock")),
    );

    let started = Instant::now();
    let report = manager.start().await;
    println!(
        "started {} services in {:.1?}",
        report.ready.len(),
        started.elapsed()
    );
    if !report.failed.is_empty() {
        for (name, e) in &report.failed {
            eprintln!("{name}: {e}");
        }
        return Err("an extension did not start".into());
    }
    print_tools(&manager);

    section("calls on the native extensions and the MCP server");
    let router = manager.router();
    show(
        "a_echo",
        r#"{"greeting":"hello"}"#,
        router
            .clone()
            .oneshot(ToolCall::new("a_echo", r#"{"greeting":"hello"}"#).agent("tour"))
            .await,
    );
    show(
        "m_echo",
        r#"{"text":"hello, MCP"}"#,
        router
            .clone()
            .oneshot(ToolCall::new("m_echo", r#"{"text":"hello, MCP"}"#))
            .await,
    );
    let image = router
        .clone()
        .oneshot(ToolCall::new("m_image", "{}"))
        .await?;
    println!("  m_image {{}} -> {} content blocks:", image.content.len());
    for block in &image.content {
        println!("    {}", describe(block));
    }
    show(
        "m_fail",
        r#"{"message":"no such file"}"#,
        router
            .clone()
            .oneshot(ToolCall::new("m_fail", r#"{"message":"no such file"}"#))
            .await,
    );
    show(
        "m_echo",
        "[1,2]",
        router
            .clone()
            .oneshot(ToolCall::new("m_echo", "[1,2]"))
            .await,
    );
    let old_pid = router.clone().oneshot(ToolCall::new("b_pid", "{}")).await?;
    let old_pid = old_pid.into_text();
    println!("  b_pid {{}} -> {old_pid}");
    show(
        "b_fail",
        "{}",
        router.clone().oneshot(ToolCall::new("b_fail", "{}")).await,
    );
    println!("  query beta -> {}", manager.query("beta", "status").await?);

    section("a timeout (alpha allows 1 s per call)");
    show(
        "a_sleep",
        r#"{"ms":3000}"#,
        router
            .clone()
            .oneshot(ToolCall::new("a_sleep", r#"{"ms":3000}"#))
            .await,
    );

    section("an unknown tool");
    show(
        "no_such_tool",
        "{}",
        router
            .clone()
            .oneshot(ToolCall::new("no_such_tool", "{}"))
            .await,
    );

    section("a crash, then the automatic restart");
    show(
        "b_crash",
        "{}",
        router.clone().oneshot(ToolCall::new("b_crash", "{}")).await,
    );
    let crashed_at = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        manager.wait_for("beta", |s| s.state == ServiceState::Ready && s.restarts > 0),
    )
    .await
    .map_err(|_| "beta was not restarted within 10 s")?
    .ok_or("beta is unknown")?;
    println!(
        "  beta is ready again after {:.1?} (restarts: {})",
        crashed_at.elapsed(),
        status.restarts
    );
    let new_pid = router
        .clone()
        .oneshot(ToolCall::new("b_pid", "{}"))
        .await?
        .into_text();
    println!("  b_pid {{}} -> {new_pid} (was {old_pid})");
    if new_pid == old_pid {
        return Err("the restarted extension has the old pid".into());
    }

    shutdown(&manager).await;
    Ok(())
}

async fn tour_config(file: &str) -> Result<(), Error> {
    let cfg = HostConfig::load(file)?;
    let mut paths = Paths::runtime_default();
    if let Some(d) = cfg.services_dir {
        paths.services_dir = d;
    }
    if let Some(d) = cfg.logs_dir {
        paths.logs_dir = d;
    }
    if let Some(d) = cfg.daemon_socket {
        paths.daemon_socket = d;
    }
    let manager = ServiceManager::with_paths(&cfg.services, paths);
    let started = Instant::now();
    let report = manager.start().await;
    println!(
        "started {} of {} services in {:.1?}",
        report.ready.len(),
        manager.services().count(),
        started.elapsed()
    );
    for (name, e) in &report.failed {
        println!("  failed: {name}: {e}");
    }
    print_tools(&manager);
    section("an unknown tool");
    let router = manager.router();
    show(
        "no_such_tool",
        "{}",
        router.oneshot(ToolCall::new("no_such_tool", "{}")).await,
    );
    section("status");
    for (name, s) in manager.statuses() {
        println!("  {name}: {} (pid {:?})", s.state.as_str(), s.pid);
    }
    shutdown(&manager).await;
    Ok(())
}

fn print_tools(manager: &ServiceManager) {
    section("tools");
    let tools = manager.tools();
    let width = tools.iter().map(|t| t.tool.name.len()).max().unwrap_or(4);
    println!("  {:<8} {:<width$} description", "service", "tool");
    for t in &tools {
        println!(
            "  {:<8} {:<width$} {}",
            t.service, t.tool.name, t.tool.description
        );
    }
    for c in manager.conflicts() {
        println!(
            "  conflict: {} is offered by {} and {}; {} keeps it",
            c.tool, c.kept, c.dropped, c.kept
        );
    }
}

async fn shutdown(manager: &ServiceManager) {
    section("graceful shutdown");
    let started = Instant::now();
    for (name, outcome) in manager.shutdown_all().await {
        println!("  {name}: {outcome:?}");
    }
    println!("  all stopped in {:.1?}", started.elapsed());
}

fn section(title: &str) {
    println!("\n== {title}");
}

/// One line about a content block.
fn describe(block: &Content) -> String {
    match block {
        Content::Text { text } => format!("text: {text}"),
        Content::Image { data, mime_type } => {
            format!("image ({mime_type}, {} base64 bytes)", data.len())
        }
        Content::Audio { data, mime_type } => {
            format!("audio ({mime_type}, {} base64 bytes)", data.len())
        }
        Content::ResourceLink(link) => format!(
            "resource link: {}",
            link.get("uri").unwrap_or(&serde_json::Value::Null)
        ),
        Content::Resource { resource } => format!(
            "embedded resource: {}",
            resource.get("uri").unwrap_or(&serde_json::Value::Null)
        ),
        other => format!("{other:?}"),
    }
}

fn show(tool: &str, args: &str, result: Result<ToolOutput, exthost::CallError>) {
    match result {
        Ok(r) => println!("  {tool} {args} -> {}", r.text()),
        Err(e) => println!("  {tool} {args} -> error [{}]: {e}", e.kind()),
    }
}

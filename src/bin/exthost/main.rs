//! `exthost`: inspect, call, check and run extensions from the shell.
//!
//! ```text
//! exthost tools --config FILE [--json]
//! exthost call  --config FILE TOOL [ARGS] [--agent NAME] [--task-id N] [--timeout DURATION]
//! exthost run   --config FILE          # JSON lines on stdin/stdout
//! exthost check [--config-json JSON] [--timeout DURATION] [--strict] -- PROGRAM [ARGS...]
//! ```
//!
//! Exit codes: 0 success, 1 anything else, 2 to 6 the kinds of call
//! errors, 7 standard output closed (see [`output`]).

mod check;
#[cfg(feature = "mcp")]
mod mcp;
mod output;
mod run;
mod signals;

use output::{say, CLOSED_OUTPUT};

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use exthost::config::HostConfig;
use exthost::manager::{ServiceManager, StartReport};
use exthost::process::Paths;
use exthost::router::ToolCall;
use exthost::CallError;
use tower::ServiceExt;

#[derive(Parser)]
#[command(
    name = "exthost",
    version,
    about = "Inspect, call, check and run tool extensions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start every service, print the tool table, the conflicts and the
    /// failures, then shut down. Exit 1 if an enabled extension failed, 7
    /// if stdout was closed.
    Tools {
        /// The configuration file (TOML, or JSON if it ends in .json).
        #[arg(long)]
        config: PathBuf,
        /// Print a JSON array of {"service", "name", "description", "parameters"}.
        #[arg(long)]
        json: bool,
    },
    /// Start, call one tool, print its result, shut down. Exit codes: 0 ok,
    /// 2 unknown tool, 3 timeout, 4 extension error, 5 unavailable,
    /// 6 protocol violation, 7 standard output closed, 1 anything else.
    Call {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The tool to call.
        tool: String,
        /// Its arguments, as JSON text.
        #[arg(default_value = "{}")]
        args: String,
        /// The calling agent's name.
        #[arg(long, default_value = "exthost")]
        agent: String,
        /// The task id to send with the call.
        #[arg(long)]
        task_id: Option<u64>,
        /// A deadline for the call, such as 500ms or 10s.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Print the whole tool output as JSON: {"content": [blocks],
        /// "structuredContent": ...}, as MCP's CallToolResult.
        #[arg(long)]
        json: bool,
    },
    /// Start and supervise every service, then serve JSON-lines requests on
    /// stdin, answering on stdout. Exit 0, 1 if reading stdin failed, 7 if
    /// stdout was closed.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// At most this many requests read but not yet answered; past it,
        /// stdin is not read until answers are written.
        #[arg(long, default_value_t = 64)]
        max_pending: usize,
        /// At most this many bytes of request lines read but not yet
        /// answered (one line is always let through); past it, stdin is
        /// not read until answers are written.
        #[arg(long, default_value_t = 16 * 1024 * 1024)]
        max_pending_bytes: usize,
    },
    /// Serve every hosted tool (native extensions and MCP servers) as one
    /// MCP server: over stdin/stdout, or with --listen over Streamable HTTP
    /// at http://ADDR:PORT/mcp. Exit 0 when the client leaves or on
    /// SIGTERM/SIGINT, 7 if stdout was closed, 1 for bad options.
    #[cfg(feature = "mcp")]
    Mcp {
        /// The configuration file (exthost TOML/JSON, or an MCP client's
        /// mcpServers/servers JSON).
        #[arg(long)]
        config: PathBuf,
        /// Serve Streamable HTTP on this ADDR:PORT instead of stdio. A
        /// non-loopback address needs --token-file.
        #[arg(long)]
        listen: Option<String>,
        /// A file holding the bearer token every HTTP request must carry
        /// (`Authorization: Bearer <token>`).
        #[arg(long, requires = "listen")]
        token_file: Option<PathBuf>,
        /// The agent name of every call (default: each client's name from
        /// its initialize).
        #[arg(long)]
        agent: Option<String>,
    },
    /// Check that an extension program follows the protocol. Exit 0 when
    /// every required check passes (recommended ones that fail are
    /// warnings), 1 otherwise.
    Check {
        /// The configuration to send in `configure`, as JSON.
        #[arg(long, default_value = "{}")]
        config_json: String,
        /// Time allowed for start-up, each step, and shutdown.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        timeout: Duration,
        /// Recommended checks count too: they print FAIL, and one that
        /// fails makes the exit code 1.
        #[arg(long)]
        strict: bool,
        /// The program and its arguments; `serve --socket PATH` is appended.
        #[arg(last = true, required = true)]
        program: Vec<String>,
    },
}

fn main() -> ExitCode {
    // Usage errors exit 1, not clap's 2: 2 means "unknown tool" for `call`.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::from(e.use_stderr()));
        }
    };
    // `run` shows status changes by default; the one-shot commands only
    // warnings. RUST_LOG overrides both.
    let default_filter = match cli.command {
        Command::Run { .. } => "exthost=info",
        #[cfg(feature = "mcp")]
        Command::Mcp { .. } => "exthost=info,rmcp=warn",
        _ => "exthost=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        // Never panics on a closed stderr: see `QuietStderr`.
        .with_writer(output::QuietStderr)
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // Before the runtime opens its own descriptors; extensions get back
    // the soft limit we had.
    exthost::process::raise_fd_limit();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            say!("exthost: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async {
        // Before anything is spawned: see `signals`.
        let mut signals = match signals::Signals::install() {
            Ok(signals) => signals,
            Err(e) => {
                say!("exthost: cannot handle signals: {e}");
                return 1;
            }
        };
        let signals = &mut signals;
        match cli.command {
            Command::Tools { config, json } => tools(&config, json, signals).await,
            Command::Call {
                config,
                tool,
                args,
                agent,
                task_id,
                timeout,
                json,
            } => {
                let call = ToolCall::new(tool, args).agent(agent).task_id(task_id);
                call_one(&config, call, timeout, json, signals).await
            }
            Command::Run {
                config,
                max_pending,
                max_pending_bytes,
            } => {
                let limits = run::PendingLimits {
                    requests: max_pending,
                    bytes: max_pending_bytes,
                };
                run::run(&config, limits, signals).await
            }
            #[cfg(feature = "mcp")]
            Command::Mcp {
                config,
                listen,
                token_file,
                agent,
            } => {
                let options = mcp::Options {
                    listen,
                    token_file,
                    agent,
                };
                mcp::mcp(&config, options, signals).await
            }
            Command::Check {
                config_json,
                timeout,
                strict,
                program,
            } => check::check(&config_json, timeout, strict, &program).await,
        }
    });
    // A blocking read of stdin (`exthost run`) would hold up a normal
    // runtime shutdown until the next line arrives.
    rt.shutdown_background();
    ExitCode::from(code)
}

/// Loads the configuration, or prints why not.
fn load(path: &Path) -> Result<(HostConfig, Paths), u8> {
    let cfg = HostConfig::load(path).map_err(|e| {
        say!("exthost: {e}");
        1
    })?;
    let paths = Paths::for_host(&cfg);
    Ok((cfg, paths))
}

/// A manager for the configuration at `path`, not started yet.
fn manager(path: &Path) -> Result<ServiceManager, u8> {
    manager_with(path, |_| {})
}

/// A manager for the configuration at `path`, changed by `adjust` first.
fn manager_with(path: &Path, adjust: impl FnOnce(&mut HostConfig)) -> Result<ServiceManager, u8> {
    let (mut cfg, paths) = load(path)?;
    adjust(&mut cfg);
    Ok(ServiceManager::builder(&cfg.services)
        .paths(paths)
        .tool_names(cfg.tool_names.unwrap_or_default())
        .build())
}

/// Starts every service, with a line per service on stderr when it is a
/// terminal.
async fn start(manager: &ServiceManager) -> StartReport {
    start_in_background(manager).await.unwrap_or_default()
}

/// Spawns every service now, so that from here on the router holds calls
/// to tools of services still starting; handshakes them in a task.
fn start_in_background(manager: &ServiceManager) -> tokio::task::JoinHandle<StartReport> {
    let tty = std::io::stderr().is_terminal();
    if tty {
        say!("starting {} services…", manager.services().count());
    }
    manager.spawn_all();
    let manager = manager.clone();
    tokio::spawn(async move { handshaken(&manager, tty).await })
}

async fn handshaken(manager: &ServiceManager, tty: bool) -> StartReport {
    let report = manager.handshake_all().await;
    if tty {
        for name in &report.ready {
            say!("  ready   {name}");
        }
        for (name, _) in &report.failed {
            say!("  failed  {name}");
        }
    }
    report
}

/// Stops everything gracefully after `signal`.
async fn interrupted(manager: &ServiceManager, signal: &str) {
    tracing::info!(signal, "signal received; shutting down");
    manager.shutdown_all().await;
}

pub(crate) fn tools_json(manager: &ServiceManager) -> serde_json::Value {
    manager
        .tools()
        .into_iter()
        .map(|t| {
            serde_json::json!({
                "service": t.service,
                "name": t.tool.name,
                "description": t.tool.description,
                "parameters": t.tool.parameters,
            })
        })
        .collect()
}

async fn tools(path: &Path, json: bool, signals: &mut signals::Signals) -> u8 {
    let mut services = std::collections::BTreeMap::new();
    let manager = match manager_with(path, |cfg| services = cfg.services.clone()) {
        Ok(manager) => manager,
        Err(code) => return code,
    };
    if output::stdout_closed() {
        output::log_closed(None);
        return CLOSED_OUTPUT;
    }
    let report = tokio::select! {
        biased;
        signal = signals.recv() => {
            interrupted(&manager, signal).await;
            return 1;
        }
        report = start(&manager) => report,
    };
    let printed = if json {
        output::out(&format!("{}\n", tools_json(&manager)))
    } else {
        let tools = manager.tools();
        let sw = tools
            .iter()
            .map(|t| t.service.len())
            .chain([7])
            .max()
            .unwrap_or(7);
        let tw = tools
            .iter()
            .map(|t| t.tool.name.len())
            .chain([4])
            .max()
            .unwrap_or(4);
        let mut table = format!("{:<sw$}  {:<tw$}  DESCRIPTION\n", "SERVICE", "TOOL");
        for t in &tools {
            table += &format!(
                "{:<sw$}  {:<tw$}  {}\n",
                t.service, t.tool.name, t.tool.description
            );
        }
        output::out(&table)
    };
    if let Err(e) = printed {
        output::log_closed(Some(&e));
        manager.shutdown_all().await;
        return CLOSED_OUTPUT;
    }
    for left_out in manager.left_out() {
        say!("left out: {left_out}");
    }
    for (name, status) in manager.statuses() {
        if status.tools_hidden > 0 {
            say!(
                "hidden: `{name}`: {} tools hidden by its `tools` filter",
                status.tools_hidden
            );
        }
    }
    print_hashes(&services);
    for c in manager.conflicts() {
        say!(
            "conflict: tool `{}` is declared by `{}` and `{}`; `{}` keeps it",
            c.tool,
            c.kept,
            c.dropped,
            c.kept
        );
    }
    for (name, e) in &report.failed {
        say!("failed: {name}: {e}");
    }
    manager.shutdown_all().await;
    u8::from(!report.failed.is_empty())
}

/// Prints the SHA-256 of each service's binary, for `sha256` pins.
fn print_hashes(services: &std::collections::BTreeMap<String, exthost::config::ServiceConfig>) {
    for (name, config) in services {
        if config.url.is_some() || !config.enabled {
            continue;
        }
        let Ok(binary) = exthost::process::resolve_binary(name, config) else {
            continue;
        };
        match pin_hash(&binary) {
            Ok(Some(hash)) => say!("sha256: `{name}`: {hash}  {}", binary.display()),
            Ok(None) => say!(
                "sha256: `{name}`: a `#!` script, cannot be pinned  {}",
                binary.display()
            ),
            Err(e) => say!("sha256: `{name}`: cannot read {}: {e}", binary.display()),
        }
    }
}

/// The SHA-256 to pin `binary` with, or `None` for a `#!` script, which
/// `sha256` refuses.
fn pin_hash(binary: &std::path::Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut magic = [0; 2];
    let script = std::fs::File::open(binary)?.read_exact(&mut magic).is_ok() && magic == *b"#!";
    if script {
        return Ok(None);
    }
    exthost::process::binary_sha256(binary).map(Some)
}

/// The exit code of a call error.
fn exit_code(e: &CallError) -> u8 {
    match e {
        CallError::UnknownTool { .. } => 2,
        CallError::Timeout { .. } => 3,
        CallError::Extension { .. } => 4,
        CallError::Unavailable { .. } | CallError::Overloaded { .. } => 5,
        CallError::Protocol { .. } => 6,
        _ => 1,
    }
}

/// Calls one tool as soon as its owner is ready (the router holds a call
/// to a tool it does not know yet while services are still starting), then
/// shuts everything down.
async fn call_one(
    path: &Path,
    call: ToolCall,
    timeout: Option<Duration>,
    json: bool,
    signals: &mut signals::Signals,
) -> u8 {
    let manager = match manager(path) {
        Ok(manager) => manager,
        Err(code) => return code,
    };
    // Nobody would read the result: the call is not made.
    if output::stdout_closed() {
        output::log_closed(None);
        return CLOSED_OUTPUT;
    }
    let starting = start_in_background(&manager);
    let tool = call.name.clone();
    let fut = manager.router().oneshot(call);
    let call = async {
        match timeout {
            None => fut.await,
            Some(d) => match tokio::time::timeout(d, fut).await {
                Ok(r) => r,
                Err(_) => Err(CallError::Timeout {
                    service: manager
                        .tools()
                        .into_iter()
                        .find(|t| t.tool.name == tool)
                        .map(|t| t.service)
                        .unwrap_or_else(|| "(not started yet)".to_owned()),
                    after: d,
                }),
            },
        }
    };
    tokio::pin!(call);
    // A signal begins the shutdown at once; the call still gets its answer
    // (its result if it finishes within the grace period, else
    // `unavailable`), printed as usual.
    let result = tokio::select! {
        biased;
        signal = signals.recv() => {
            let ((), result) = tokio::join!(interrupted(&manager, signal), &mut call);
            result
        }
        result = &mut call => result,
    };
    // An unknown tool while some service failed to start: a start failure.
    let start_failed = matches!(result, Err(CallError::UnknownTool { .. }))
        && manager
            .statuses()
            .values()
            .any(|s| s.state != exthost::manager::ServiceState::Ready);
    let code = match result {
        Ok(out) => {
            let text = if json {
                serde_json::to_string(&out).expect("an output always serializes")
            } else {
                out.into_text()
            };
            match output::out(&format!("{text}\n")) {
                Ok(()) => 0,
                Err(e) => {
                    output::log_closed(Some(&e));
                    CLOSED_OUTPUT
                }
            }
        }
        Err(CallError::UnknownTool { tool }) if start_failed => {
            say!("exthost: start failure: no ready service offers `{tool}`, and not every service started (see below)");
            1
        }
        Err(e) => {
            say!("exthost: {} error: {e}", e.kind());
            exit_code(&e)
        }
    };
    manager.shutdown_all().await;
    if let Ok(report) = starting.await {
        for (name, e) in &report.failed {
            say!("failed: {name}: {e}");
        }
    }
    code
}

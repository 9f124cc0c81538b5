//! A mock extension for tests and demos, built on `exthost::server`.
//!
//! Started exactly as a host starts extensions:
//!
//! ```text
//! mock_extension serve --socket PATH
//! ```
//!
//! Tools (each name prefixed with `$MOCK_PREFIX`, empty by default):
//!
//! - `echo`: returns its arguments unchanged;
//! - `sleep`: `{"ms": N}`, sleeps N milliseconds, then answers `slept N ms`;
//! - `fail`: answers with an `error` response;
//! - `crash`: exits the process at once (status 101) without answering;
//! - `pid`: returns the process id;
//! - `wait` (only when `MOCK_NOTIFY_SOCKET` is set): connects to that
//!   socket, writes its arguments and a newline, and answers
//!   `released ARGS` once the other end closes the connection. Tests hold
//!   a call in the extension this way, and release it when they choose;
//! - `limits` (only when `MOCK_LIMITS` is set): returns the process's soft
//!   and hard descriptor limits, `SOFT HARD`;
//! - with `MOCK_CONFINE` set, for tests of confinement: `remove_file
//!   {path}`, `run {path}` (runs a program, answers its exit status),
//!   `read_file`
//!   (`{"path": P}`, answers the file's text or the error), `connect`
//!   (`{"port": N}`, a TCP connection to 127.0.0.1), `alloc` (`{"mib": N}`,
//!   allocates and touches N MiB), `getenv` (`{"name": V}`, the variable's
//!   value or `unset`).
//!
//! `MOCK_CALLS_FILE`, when set, is appended each tool call's name and a
//! newline, before the call runs.
//!
//! Environment: `MOCK_SERVICE` names the service (default `mock`);
//! `MOCK_PREFIX` prefixes the tool names (or `MOCK_PREFIX_FILE`, a file
//! read at start-up, so a restart can change the tools); `MOCK_SHUTDOWN_FILE`, when set, is
//! written with `shutdown` or `signal` when the extension stops, so tests can
//! see how it was stopped; `MOCK_READY_STDOUT`, when set, makes it write
//! `listening` and a newline to stdout once its socket accepts connections.
//! It answers service queries with `{"service": …, "query": …}` and
//! `get_schema` with a small schema.
//!
//! `MOCK_MODE` makes it misbehave, for tests of the host:
//!
//! - `exit`: writes a line to stderr and exits with status 3 at once;
//! - `hang`: accepts connections but never answers anything (and, if
//!   `MOCK_NOTIFY_SOCKET` is set, connects there and writes its pid each
//!   time it accepts one);
//! - `stubborn`: ignores `shutdown` (stays alive after it) and SIGTERM;
//! - `impostor`: does not bind; an orphaned, unrelated process binds its
//!   socket instead;
//! - `wrong_kind`: handshakes normally, then answers every tool call with a
//!   `configured` response (a protocol violation).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use exthost::server::{Call, Extension, Stopped};
use exthost::Tool;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tower::service_fn;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Logs go to stderr, which the host sends to the service's log file.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    run().await
}

/// The whole extension; `examples/agent.rs` runs it too, when it re-runs
/// itself as an extension.
pub async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = exthost::server::ServeArgs::from_env()?;
    match std::env::var("MOCK_MODE").as_deref() {
        Ok("exit") => {
            eprintln!("mock: exiting early as asked");
            std::process::exit(3);
        }
        Ok("hang") => {
            let listener = tokio::net::UnixListener::bind(&args.socket)?;
            let mut held = Vec::new();
            loop {
                held.push(listener.accept().await?);
                // Tell a test that the host is connected, with our pid.
                if let Some(path) = std::env::var_os("MOCK_NOTIFY_SOCKET") {
                    let mut s = tokio::net::UnixStream::connect(path).await?;
                    s.write_all(std::process::id().to_string().as_bytes())
                        .await?;
                }
            }
        }
        Ok("wrong_kind") => return wrong_kind(&args.socket).await,
        Ok("impostor") => {
            // A helper spawns the real server and exits at once, so the
            // server is orphaned: not a descendant of this process.
            std::process::Command::new(std::env::current_exe()?)
                .args(std::env::args_os().skip(1))
                .env("MOCK_MODE", "impostor-helper")
                .status()?;
            std::future::pending::<()>().await;
        }
        Ok("impostor-helper") => {
            std::process::Command::new(std::env::current_exe()?)
                .args(std::env::args_os().skip(1))
                .env("MOCK_MODE", "impostor-server")
                .env("MOCK_ORPHAN_OF", std::process::id().to_string())
                .spawn()?;
            return Ok(());
        }
        Ok("impostor-server") => {
            // Bind only once orphaned, so that the impostor is no
            // descendant of the extension the host spawned: the helper's
            // exit sends SIGUSR1 (caught, so it does not kill us).
            let helper: u32 = std::env::var("MOCK_ORPHAN_OF")?.parse()?;
            let mut orphaned = signal(SignalKind::user_defined1())?;
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGUSR1)?;
            if std::os::unix::process::parent_id() == helper {
                orphaned.recv().await;
            }
        }
        _ => {}
    }
    let stubborn = std::env::var("MOCK_MODE").as_deref() == Ok("stubborn");
    let service = std::env::var("MOCK_SERVICE").unwrap_or_else(|_| "mock".to_owned());
    let prefix = match std::env::var_os("MOCK_PREFIX_FILE") {
        Some(file) => std::fs::read_to_string(file)?.trim().to_owned(),
        None => std::env::var("MOCK_PREFIX").unwrap_or_default(),
    };
    let notify = std::env::var_os("MOCK_NOTIFY_SOCKET").map(PathBuf::from);
    let object = json!({"type": "object"});
    let mut tools = vec![
        ("echo", "Returns its arguments unchanged", object.clone()),
        (
            "sleep",
            "Sleeps for `ms` milliseconds",
            json!({"type": "object", "properties": {"ms": {"type": "integer", "minimum": 0}}, "required": ["ms"]}),
        ),
        ("fail", "Always answers with an error", object.clone()),
        (
            "crash",
            "Exits the extension process without answering",
            object.clone(),
        ),
        ("pid", "Returns the extension's process id", object.clone()),
    ];
    if notify.is_some() {
        tools.push(("wait", "Answers once the test releases it", object.clone()));
    }
    if std::env::var_os("MOCK_LIMITS").is_some() {
        tools.push(("limits", "Returns the descriptor limits", object.clone()));
    }
    if std::env::var_os("MOCK_CONFINE").is_some() {
        tools.extend([
            ("read_file", "Reads the file at `path`", object.clone()),
            (
                "connect",
                "Connects to 127.0.0.1:`port` over TCP",
                object.clone(),
            ),
            ("alloc", "Allocates and touches `mib` MiB", object.clone()),
            ("getenv", "Returns the variable `name`", object.clone()),
            ("remove_file", "Removes the file at `path`", object.clone()),
            (
                "run",
                "Runs the program at `path` and returns its exit status",
                object,
            ),
        ]);
    }
    let calls_file = std::env::var_os("MOCK_CALLS_FILE").map(PathBuf::from);
    let ext = Extension::new(service.clone())
        .tools(
            tools
                .into_iter()
                .map(|(name, desc, params)| Tool::new(format!("{prefix}{name}"), desc, params)),
        )
        .query(true)
        .config_schema(&json!({"type": "object", "properties": {"greeting": {"type": "string"}}}));

    let handler = service_fn(move |call: Call| {
        let (prefix, service, notify) = (prefix.clone(), service.clone(), notify.clone());
        let calls_file = calls_file.clone();
        async move {
            if let (Some(file), Call::Tool(t)) = (&calls_file, &call) {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .map_err(|e| format!("calls file: {e}"))?;
                writeln!(f, "{}", t.name).map_err(|e| format!("calls file: {e}"))?;
            }
            match call {
                Call::Tool(t) => match t.name.strip_prefix(prefix.as_str()).unwrap_or_default() {
                    "echo" => Ok(t.args),
                    "sleep" => {
                        let args: serde_json::Value = serde_json::from_str(&t.args)
                            .map_err(|e| format!("sleep: bad arguments: {e}"))?;
                        let ms = args["ms"].as_u64().ok_or("sleep: `ms` must be a number")?;
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(format!("slept {ms} ms"))
                    }
                    "fail" => Err(format!("{} failed as requested", t.name)),
                    "crash" => std::process::exit(101),
                    "pid" => Ok(std::process::id().to_string()),
                    "limits" => {
                        use nix::sys::resource::{getrlimit, Resource};
                        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
                            .map_err(|e| format!("limits: {e}"))?;
                        Ok(format!("{soft} {hard}"))
                    }
                    "read_file" => {
                        let path = arg(&t.args, "path")?;
                        std::fs::read_to_string(path.as_str().unwrap_or_default())
                            .map_err(|e| format!("read_file: {e}"))
                    }
                    "connect" => {
                        let port = arg(&t.args, "port")?.as_u64().unwrap_or_default() as u16;
                        tokio::net::TcpStream::connect(("127.0.0.1", port))
                            .await
                            .map(|_| "connected".to_owned())
                            .map_err(|e| format!("connect: {e}"))
                    }
                    "alloc" => {
                        let mib = arg(&t.args, "mib")?.as_u64().unwrap_or_default() as usize;
                        let block = vec![1u8; mib << 20];
                        Ok(format!(
                            "allocated {} MiB",
                            std::hint::black_box(block).len() >> 20
                        ))
                    }
                    "remove_file" => {
                        let path = arg(&t.args, "path")?;
                        std::fs::remove_file(path.as_str().unwrap_or_default())
                            .map(|()| "removed".to_owned())
                            .map_err(|e| format!("remove_file: {e}"))
                    }
                    "run" => {
                        let path = arg(&t.args, "path")?;
                        std::process::Command::new(path.as_str().unwrap_or_default())
                            .stdin(std::process::Stdio::null())
                            .stdout(std::process::Stdio::null())
                            .status()
                            .map(|s| s.to_string())
                            .map_err(|e| format!("run: {e}"))
                    }
                    "getenv" => {
                        let name = arg(&t.args, "name")?;
                        Ok(std::env::var(name.as_str().unwrap_or_default())
                            .unwrap_or_else(|_| "unset".to_owned()))
                    }
                    "wait" => {
                        let gate = notify.as_deref().ok_or("wait: no MOCK_NOTIFY_SOCKET")?;
                        held_until_released(gate, &t.args)
                            .await
                            .map_err(|e| format!("wait: {e}"))?;
                        Ok(format!("released {}", t.args))
                    }
                    _ => Err(format!("unknown tool: {}", t.name)),
                },
                Call::Query(query) => Ok(json!({"service": service, "query": query}).to_string()),
                Call::Configure(config) => serde_json::from_str::<serde_json::Value>(&config)
                    .map(|_| String::new())
                    .map_err(|e| format!("configuration is not JSON: {e}")),
                _ => Err("unsupported request".to_owned()),
            }
        }
    });

    // `serve_until` binds its socket before it first polls the stop
    // future: that first poll is when the mock is listening.
    let announce = std::env::var_os("MOCK_READY_STDOUT").is_some();
    let listening = move || -> std::io::Result<()> {
        if announce {
            let mut out = std::io::stdout().lock();
            out.write_all(b"listening\n")?;
            out.flush()?;
        }
        Ok(())
    };
    let stopped = if stubborn {
        // Catching SIGTERM replaces its default action: it is ignored.
        let _term = signal(SignalKind::terminate())?;
        let never = async move {
            listening().expect("write to stdout");
            std::future::pending::<()>().await
        };
        ext.serve_until(&args.socket, handler, never).await?;
        eprintln!("mock: got shutdown, staying alive anyway");
        std::future::pending::<()>().await;
        unreachable!()
    } else {
        // What `Extension::run` does, plus the announcement.
        let (mut term, mut int) = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        );
        let stop = async move {
            listening().expect("write to stdout");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        ext.serve_until(&args.socket, handler, stop).await?
    };
    if let Ok(path) = std::env::var("MOCK_SHUTDOWN_FILE") {
        let how = match stopped {
            Stopped::Shutdown => "shutdown",
            _ => "signal",
        };
        std::fs::write(path, how)?;
    }
    Ok(())
}

/// The argument `name` of a tool call's JSON arguments.
fn arg(args: &str, name: &str) -> Result<serde_json::Value, String> {
    let args: serde_json::Value =
        serde_json::from_str(args).map_err(|e| format!("bad arguments: {e}"))?;
    args.get(name)
        .cloned()
        .ok_or_else(|| format!("missing argument `{name}`"))
}

/// Connects to the test's `gate` socket, writes `args` and a newline, and
/// returns once the test closes its end.
async fn held_until_released(gate: &Path, args: &str) -> std::io::Result<()> {
    let mut s = tokio::net::UnixStream::connect(gate).await?;
    s.write_all(format!("{args}\n").as_bytes()).await?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await?;
    Ok(())
}

/// Handshakes correctly, then answers tool calls with the wrong kind.
async fn wrong_kind(socket: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    use exthost::codec::ServerCodec;
    use exthost::proto::{ext_request::Msg, Capability, ExtResponse, PROTOCOL_VERSION};
    use futures::{SinkExt, StreamExt};

    let listener = tokio::net::UnixListener::bind(socket)?;
    loop {
        let (io, _) = listener.accept().await?;
        let mut framed = tokio_util::codec::Framed::new(io, ServerCodec::new());
        while let Some(Ok(req)) = framed.next().await {
            let resp = match req.msg {
                Some(Msg::Hello(_)) => ExtResponse::ready(
                    PROTOCOL_VERSION,
                    "wrong",
                    vec![Capability::tools(["w_echo"])],
                ),
                Some(Msg::Configure(_)) => ExtResponse::configured(),
                Some(Msg::RegisterTools(_)) => ExtResponse::tool_schemas(vec![Tool::new(
                    "w_echo",
                    "Answers with the wrong kind",
                    json!({}),
                )
                .to_def()]),
                Some(Msg::Shutdown(_)) => return Ok(()),
                _ => ExtResponse::configured(),
            };
            framed.send(resp).await?;
        }
    }
}

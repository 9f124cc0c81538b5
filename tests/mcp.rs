//! MCP servers as extensions, on real processes: the rmcp server of
//! `examples/mcp_server.rs` over stdio and over Streamable HTTP, side by
//! side with the native mock extension, through the library and through
//! the `exthost` binary.

mod common;
#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{alive, gone_within, manager, mock, temp_dir, wait_until, WAIT};
use exthost::config::{RestartPolicy, ServiceConfig};
use exthost::manager::{ServiceManager, ServiceState};
use exthost::router::ToolCall;
use exthost::{CallError, Content, ToolOutput};
use tokio::io::AsyncBufReadExt;
use tower::ServiceExt;

fn server_bin() -> PathBuf {
    common::example_bin("mcp_server")
}

/// The example MCP server over stdio, its tools prefixed `m_`.
fn mcp_server() -> ServiceConfig {
    ServiceConfig::mcp_command(server_bin(), Vec::<String>::new()).with_prefix("m_")
}

async fn call(m: &ServiceManager, tool: &str, args: &str) -> Result<ToolOutput, CallError> {
    tokio::time::timeout(WAIT, m.router().oneshot(ToolCall::new(tool, args)))
        .await
        .unwrap_or_else(|_| panic!("a call of {tool} hung"))
}

async fn started(m: &ServiceManager) {
    let report = m.start().await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
}

async fn pid_of(m: &ServiceManager) -> u32 {
    call(m, "m_pid", "{}")
        .await
        .unwrap()
        .text()
        .parse()
        .unwrap()
}

/// Waits (bounded) for a routing table whose tools satisfy `pred`: on the
/// router's own signal, each table it installs.
async fn routed(
    m: &ServiceManager,
    what: &str,
    mut pred: impl FnMut(&[exthost::registry::RegisteredTool]) -> bool,
) {
    let mut tables = m.router().watch_table();
    tokio::time::timeout(WAIT, tables.wait_for(|t| pred(t.tools())))
        .await
        .unwrap_or_else(|_| panic!("{what} never happened"))
        .expect("the router lives");
}

/// Waits (bounded) until `cond` holds, checking every 10 ms: only for
/// effects seen in files another process writes, which give no signal.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} never happened"));
}

#[tokio::test]
async fn an_mcp_server_and_a_native_extension_share_one_router() {
    let dir = temp_dir();
    let m = manager(
        dir.path(),
        vec![("native", mock("n_")), ("mcp", mcp_server())],
    );
    started(&m).await;

    let tools = m.tools();
    let echo = tools
        .iter()
        .find(|t| t.tool.name == "m_echo")
        .expect("the MCP server's echo, prefixed");
    assert_eq!(echo.service, "mcp");
    assert!(!echo.tool.description.is_empty());
    assert_eq!(echo.tool.parameters["type"], "object");
    assert!(echo.tool.parameters["properties"]["text"].is_object());
    assert!(tools.iter().any(|t| t.tool.name == "n_echo"));
    assert!(!tools.iter().any(|t| t.tool.name == "echo"));

    assert_eq!(call(&m, "m_echo", r#"{"text":"hi"}"#).await.unwrap(), "hi");
    assert_eq!(call(&m, "n_echo", "native").await.unwrap(), "native");
    let status = m.status("mcp").unwrap();
    assert_eq!(status.state, ServiceState::Ready);
    assert!(status.pid.is_some());
    m.shutdown_all().await;
}

#[tokio::test]
async fn every_kind_of_content_comes_through() {
    let dir = temp_dir();
    let m = manager(dir.path(), vec![("mcp", mcp_server())]);
    started(&m).await;

    let out = call(&m, "m_image", "{}").await.unwrap();
    let kinds: Vec<_> = out
        .content
        .iter()
        .map(|c| match c {
            Content::Text { .. } => "text",
            Content::Image { mime_type, .. } => {
                assert_eq!(mime_type, "image/png");
                "image"
            }
            Content::Audio { mime_type, .. } => {
                assert_eq!(mime_type, "audio/wav");
                "audio"
            }
            Content::ResourceLink(link) => {
                assert_eq!(link["uri"], "mcp-server://image.png");
                "resource_link"
            }
            Content::Resource { resource } => {
                assert_eq!(resource["text"], "an embedded note");
                "resource"
            }
            other => panic!("unexpected block {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        ["image", "audio", "text", "resource_link", "resource"]
    );
    assert_eq!(out.text(), "an image");

    let structured = call(&m, "m_echo", r#"{"text":"hi","structured":true}"#)
        .await
        .unwrap();
    assert_eq!(
        structured.structured_content,
        Some(serde_json::json!({"text": "hi"}))
    );
    assert_eq!(structured.text(), "hi");
    m.shutdown_all().await;
}

#[tokio::test]
async fn is_error_and_bad_arguments_fail_only_their_call() {
    let dir = temp_dir();
    let m = manager(dir.path(), vec![("mcp", mcp_server())]);
    started(&m).await;

    match call(&m, "m_fail", r#"{"message":"disk full"}"#).await {
        Err(CallError::Extension { service, message }) => {
            assert_eq!(service, "mcp");
            assert_eq!(message, "disk full");
        }
        other => panic!("expected an extension error, got {other:?}"),
    }
    for args in ["[1,2]", "\"text\"", "{not json"] {
        match call(&m, "m_echo", args).await {
            Err(e @ CallError::BadArguments { .. }) => assert!(e.is_retry_safe()),
            other => panic!("{args}: expected bad arguments, got {other:?}"),
        }
    }
    // The server's own refusal of arguments of the wrong shape.
    match call(&m, "m_echo", r#"{"text":5}"#).await {
        Err(CallError::Extension { message, .. }) => {
            assert!(message.contains("-32602"), "{message}")
        }
        other => panic!("expected the server's invalid-params error, got {other:?}"),
    }
    assert_eq!(
        call(&m, "m_echo", r#"{"text":"still here"}"#)
            .await
            .unwrap(),
        "still here"
    );
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_timed_out_call_is_cancelled_on_the_server_and_frees_its_slot_at_once() {
    let dir = temp_dir();
    let cancel_log = dir.path().join("cancelled.log");
    let cfg = mcp_server()
        .with_max_in_flight(1)
        .with_call_timeout(Duration::from_millis(300))
        .with_env("MCP_CANCEL_LOG", cancel_log.to_str().unwrap());
    let m = manager(dir.path(), vec![("mcp", cfg)]);
    started(&m).await;

    match call(&m, "m_sleep", r#"{"ms":60000}"#).await {
        Err(CallError::Timeout { service, .. }) => assert_eq!(service, "mcp"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // With one slot, this call could not even start within its 300 ms if
    // the abandoned call still held the slot.
    assert_eq!(
        call(&m, "m_echo", r#"{"text":"next"}"#).await.unwrap(),
        "next"
    );
    eventually("the server seeing the cancellation", || {
        std::fs::read_to_string(&cancel_log).is_ok_and(|t| t.contains("cancelled sleep 60000"))
    })
    .await;
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_crashed_server_fails_calls_at_once_and_is_restarted_with_a_new_pid() {
    let dir = temp_dir();
    let cfg = mcp_server().with_restart(RestartPolicy::OnFailure);
    let m = manager(dir.path(), vec![("mcp", cfg)]);
    started(&m).await;
    let first = pid_of(&m).await;

    match call(&m, "m_crash", "{}").await {
        Err(CallError::Unavailable { service, .. }) => assert_eq!(service, "mcp"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    let status = wait_until(&m, "mcp", |s| {
        s.state == ServiceState::Ready && s.restarts == 1
    })
    .await;
    let second = pid_of(&m).await;
    assert_ne!(first, second);
    assert_eq!(status.pid, Some(second));
    assert!(gone_within(first, WAIT).await);
    m.shutdown_all().await;
    assert!(gone_within(second, WAIT).await);
}

#[tokio::test]
async fn a_tool_list_change_swaps_the_routes() {
    let dir = temp_dir();
    let m = manager(dir.path(), vec![("mcp", mcp_server())]);
    started(&m).await;
    let has_extra = |tools: &[exthost::registry::RegisteredTool]| {
        tools.iter().any(|t| t.tool.name == "m_extra")
    };
    assert!(!has_extra(&m.tools()));

    assert_eq!(
        call(&m, "m_change_tools", "{}").await.unwrap(),
        "tools changed"
    );
    routed(&m, "m_extra being routed", |t| has_extra(t)).await;
    assert_eq!(call(&m, "m_extra", "{}").await.unwrap(), "extra");
    assert_eq!(
        call(&m, "m_change_tools", "{}").await.unwrap(),
        "tools changed"
    );
    routed(&m, "m_extra being dropped", |t| !has_extra(t)).await;
    assert!(matches!(
        call(&m, "m_extra", "{}").await,
        Err(CallError::UnknownTool { .. })
    ));
    m.shutdown_all().await;
}

/// The pids `mcp_server` logged: its own and its grandchild's.
fn logged_pids(log: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(log).ok()?;
    let find = |key: &str| -> Option<u32> {
        let at = text.find(key)? + key.len();
        text[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((find("started pid=")?, find("grandchild pid=")?))
}

#[tokio::test]
async fn stopping_a_server_behind_a_wrapper_script_leaves_no_process_and_its_stderr_is_logged() {
    let dir = temp_dir();
    // A shell that stays the server's parent (no `exec`), and a server
    // that forks a helper of its own: three processes in the group.
    let script = format!("'{}'; echo wrapper done >&2", server_bin().display());
    let cfg = ServiceConfig::mcp_command("/bin/sh", ["-c", script.as_str()])
        .with_prefix("m_")
        .with_env("MCP_SPAWN_GRANDCHILD", "1")
        .with_shutdown_grace(Duration::from_secs(5));
    let m = manager(dir.path(), vec![("mcp", cfg)]);
    started(&m).await;
    let server = pid_of(&m).await;
    let log = common::paths(dir.path()).log("mcp");
    eventually("the server's stderr in its log", || {
        logged_pids(&log).is_some()
    })
    .await;
    let (logged, grandchild) = logged_pids(&log).unwrap();
    assert_eq!(logged, server);
    let wrapper = m.status("mcp").unwrap().pid.unwrap();
    assert_ne!(wrapper, server);
    assert!(alive(grandchild));

    let outcomes = m.shutdown_all().await;
    assert!(
        matches!(outcomes["mcp"], exthost::process::StopOutcome::Graceful(_)),
        "closing stdin should have been enough: {:?}",
        outcomes["mcp"]
    );
    for pid in [wrapper, server, grandchild] {
        assert!(
            gone_within(pid, WAIT).await,
            "pid {pid} outlived the shutdown"
        );
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("wrapper done"), "{text}");
}

/// `mcp_server --http 127.0.0.1:0`, killed on drop; its endpoint.
struct HttpServer {
    proc: common::Proc,
    url: String,
}

impl HttpServer {
    async fn kill(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.proc.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        assert!(self.proc.wait_exit(WAIT).await.is_some());
    }
}

async fn http_server() -> HttpServer {
    let mut child = std::process::Command::new(server_bin())
        .args(["--http", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mcp_server --http");
    let stdout = tokio::process::ChildStdout::from_std(child.stdout.take().unwrap()).unwrap();
    let proc = common::Proc::new(child);
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the server says where it listens")
        .unwrap()
        .expect("a line");
    let url = line
        .strip_prefix("listening on ")
        .expect("listening on URL")
        .to_owned();
    HttpServer { proc, url }
}

#[tokio::test]
async fn a_streamable_http_server_is_served_and_its_loss_is_seen_at_once() {
    let dir = temp_dir();
    let mut server = http_server().await;
    let cfg = ServiceConfig::mcp_url(&server.url)
        .with_prefix("m_")
        .with_restart(RestartPolicy::Never);
    let m = manager(dir.path(), vec![("remote", cfg), ("native", mock("n_"))]);
    started(&m).await;
    assert_eq!(m.status("remote").unwrap().pid, None);
    assert_eq!(
        call(&m, "m_echo", r#"{"text":"over http"}"#).await.unwrap(),
        "over http"
    );
    let out = call(&m, "m_image", "{}").await.unwrap();
    assert_eq!(out.content.len(), 5);
    assert_eq!(pid_of(&m).await, server.proc.child.id());

    server.kill().await;
    match call(&m, "m_echo", r#"{"text":"gone"}"#).await {
        Err(CallError::Unavailable { .. }) => {}
        other => panic!("expected unavailable, got {other:?}"),
    }
    // The supervisor sees the session end and applies the policy.
    let status = wait_until(&m, "remote", |s| s.state == ServiceState::Failed).await;
    assert!(status.error.is_some());
    assert_eq!(call(&m, "n_echo", "fine").await.unwrap(), "fine");
    m.shutdown_all().await;
}

// ---- through the binary ----

/// `exthost ARGS` run to its end, its runtime folder (sockets and logs of
/// a file that names none) in `runtime`.
async fn exthost_output(
    runtime: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = run::exthost();
    cmd.args(args)
        .stdin(Stdio::null())
        .env("XDG_RUNTIME_DIR", runtime);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("exthost finished")
        .expect("exthost ran")
}

#[tokio::test]
async fn claude_and_vs_code_configuration_files_run_as_they_are() {
    let dir = temp_dir();
    let bin = server_bin();
    let claude = dir.path().join("claude_desktop_config.json");
    std::fs::write(
        &claude,
        serde_json::json!({
            "mcpServers": {"tester": {"command": bin, "args": [], "env": {"A": "b"}, "alwaysAllow": []}},
            "globalShortcut": "Ctrl+Space"
        })
        .to_string(),
    )
    .unwrap();
    let out = exthost_output(
        dir.path(),
        &[
            "call",
            "--config",
            claude.to_str().unwrap(),
            "echo",
            r#"{"text":"from claude"}"#,
        ],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from claude\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("alwaysAllow"),
        "unknown keys are warned about: {stderr}"
    );

    let mut server = http_server().await;
    let vscode = dir.path().join("mcp.json");
    std::fs::write(
        &vscode,
        serde_json::json!({"servers": {"web": {"type": "http", "url": "${TEST_MCP_URL}", "headers": {"X-Test": "${TEST_HEADER:-yes}"}}}})
            .to_string(),
    )
    .unwrap();
    let out = exthost_output(
        dir.path(),
        &[
            "call",
            "--json",
            "--config",
            vscode.to_str().unwrap(),
            "image",
            "{}",
        ],
        &[("TEST_MCP_URL", &server.url)],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(output["content"][0]["type"], "image");
    assert_eq!(output["content"][0]["mimeType"], "image/png");

    // The variable unset: a configuration error naming it and the field.
    let out = exthost_output(
        dir.path(),
        &["tools", "--config", vscode.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("${TEST_MCP_URL}") && stderr.contains("`url`") && stderr.contains("web"),
        "{stderr}"
    );

    // An SSE server is refused by name.
    std::fs::write(
        &vscode,
        serde_json::json!({"servers": {"old": {"type": "sse", "url": "http://127.0.0.1:1/sse"}}})
            .to_string(),
    )
    .unwrap();
    let out = exthost_output(
        dir.path(),
        &["tools", "--config", vscode.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("old") && stderr.contains("\"sse\""),
        "{stderr}"
    );
    server.kill().await;
}

#[tokio::test]
async fn run_shows_mcp_services_and_whole_outputs() {
    let dir = temp_dir();
    let cfg = dir.path().join("host.toml");
    std::fs::write(
        &cfg,
        format!(
            "services_dir = {:?}\nlogs_dir = {:?}\n[services.mcp]\nkind = \"mcp\"\ncommand = {:?}\nprefix = \"m_\"\n\n[services.native]\ncommand = {:?}\nenv = {{ MOCK_PREFIX = \"n_\" }}\n",
            dir.path().join("services"),
            dir.path().join("logs"),
            server_bin(),
            common::mock_bin()
        ),
    )
    .unwrap();
    let mut run = run::Run::start(&cfg);
    run.send(r#"{"id":1,"tool":"m_image","args":{}}"#).await;
    let reply = run.recv().await;
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["ok"], "an image");
    assert_eq!(reply["output"]["content"][0]["type"], "image");
    run.send(r#"{"id":2,"tool":"n_echo","args":"plain"}"#).await;
    let reply = run.recv().await;
    assert_eq!(reply["ok"], "plain");
    assert!(reply.get("output").is_none(), "{reply}");
    run.send(r#"{"id":3,"op":"status"}"#).await;
    let reply = run.recv().await;
    assert_eq!(reply["ok"]["mcp"]["state"], "ready");
    run.finish().await;
}

/// A stdio MCP server in `sh` whose `tools/list` holds a tool rmcp cannot
/// read (`inputSchema` null) beside a good one.
const SH_SERVER: &str = r#"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9][0-9]*\).*/\1/p')
  case "$line" in
    *'"initialize"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"sh","version":"1"}}}\n' "$id" ;;
    *'"tools/list"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"tools":[{"name":"good","description":"fine","inputSchema":{"type":"object"}},{"name":"bad","inputSchema":null},{"name":"nameless"}]}}\n' "$id" ;;
    *'"tools/call"'*) printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"good answer"}]}}\n' "$id" ;;
  esac
done
"#;

#[tokio::test]
async fn a_tool_rmcp_cannot_read_is_left_out_alone() {
    let dir = temp_dir();
    let cfg = ServiceConfig::mcp_command("/bin/sh", ["-c", SH_SERVER]);
    let m = manager(dir.path(), vec![("sh", cfg)]);
    started(&m).await;
    let names: Vec<_> = m.tools().into_iter().map(|t| t.tool.name).collect();
    assert_eq!(names, ["good"]);
    assert_eq!(call(&m, "good", "{}").await.unwrap(), "good answer");
    let left_out = m.status("sh").unwrap().tools_left_out;
    let text = format!("{left_out:?}");
    assert!(text.contains("bad") && text.contains("null"), "{text}");
    m.shutdown_all().await;
}

//! `exthost mcp`: the real binary serving a native extension and an MCP
//! server (the rmcp example) to rmcp's own client, over stdio and over
//! Streamable HTTP.

mod common;
#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{gone_within, temp_dir, WAIT};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
    ClientRequest, Implementation, ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;

/// A client that records what the server tells it.
#[derive(Clone)]
struct Client {
    name: &'static str,
    version: ProtocolVersion,
    list_changed: watch::Sender<u32>,
    progress: Arc<Mutex<Vec<String>>>,
    /// How many progress notifications came: the signal to wait on.
    progressed: watch::Sender<usize>,
}

impl Client {
    fn new(name: &'static str) -> Self {
        Client {
            name,
            version: ProtocolVersion::LATEST_WITH_INITIALIZE,
            list_changed: watch::channel(0).0,
            progress: Arc::default(),
            progressed: watch::channel(0).0,
        }
    }

    fn version(mut self, version: ProtocolVersion) -> Self {
        self.version = version;
        self
    }
}

impl ClientHandler for Client {
    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.send_modify(|n| *n += 1);
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let message = params.message.unwrap_or_default();
        self.progress.lock().unwrap().push(message);
        self.progressed.send_modify(|n| *n += 1);
    }

    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new(self.name, "1.0"),
        )
        .with_protocol_version(self.version.clone())
    }
}

fn server_bin() -> PathBuf {
    common::example_bin("mcp_server")
}

/// A configuration with the native mock (`n_`) and the rmcp example server
/// (`m_`), logs and sockets under `dir`.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("host.toml");
    let text = format!(
        "services_dir = {:?}\nlogs_dir = {:?}\n\n[services.native]\ncommand = {:?}\nenv = {{ MOCK_PREFIX = \"n_\" }}\ncall_timeout = \"500ms\"\n\n[services.up]\nkind = \"mcp\"\ncommand = {:?}\nprefix = \"m_\"\nenv = {{ MCP_CANCEL_LOG = {:?} }}\n{extra}",
        dir.join("services"),
        dir.join("logs"),
        common::mock_bin(),
        server_bin(),
        dir.join("cancelled.log"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `exthost mcp` over stdio, with rmcp's client on its pipes.
struct Stdio_ {
    child: tokio::process::Child,
    client: RunningService<RoleClient, Client>,
}

async fn stdio(cfg: &Path, client: Client) -> Stdio_ {
    let mut child = run::exthost()
        .args(["mcp", "--config"])
        .arg(cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let transport = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let client = tokio::time::timeout(WAIT, client.serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize");
    Stdio_ { child, client }
}

async fn call(
    client: &RunningService<RoleClient, Client>,
    name: &str,
    args: serde_json::Value,
) -> Result<CallToolResult, rmcp::ServiceError> {
    let mut params = CallToolRequestParams::new(name.to_owned());
    if let serde_json::Value::Object(args) = args {
        params = params.with_arguments(args);
    }
    tokio::time::timeout(WAIT, client.peer().call_tool(params))
        .await
        .expect("the call finishes")
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn pid(client: &RunningService<RoleClient, Client>, tool: &str) -> u32 {
    text(&call(client, tool, serde_json::json!({})).await.unwrap())
        .parse()
        .unwrap()
}

async fn exits(child: &mut tokio::process::Child) -> Option<i32> {
    tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exthost exits")
        .unwrap()
        .code()
}

#[tokio::test]
async fn stdio_serves_native_and_mcp_tools_with_their_content_and_errors() {
    let dir = temp_dir();
    let mut s = stdio(&config(dir.path(), ""), Client::new("test-client")).await;
    let tools = s.client.peer().list_all_tools().await.unwrap();
    let names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    for name in ["n_echo", "n_sleep", "m_echo", "m_image", "m_sleep"] {
        assert!(names.contains(&name.to_owned()), "{name} in {names:?}");
    }
    let m_echo = tools.iter().find(|t| t.name == "m_echo").unwrap();
    assert_eq!(m_echo.input_schema["type"], "object");
    assert!(m_echo.description.as_deref().is_some_and(|d| !d.is_empty()));

    let native = call(&s.client, "n_echo", serde_json::json!({"a": 1}))
        .await
        .unwrap();
    assert_eq!(text(&native), r#"{"a":1}"#);
    assert_ne!(native.is_error, Some(true));

    let image = call(&s.client, "m_image", serde_json::json!({}))
        .await
        .unwrap();
    let json = serde_json::to_value(&image).unwrap();
    assert_eq!(json["content"][0]["type"], "image");
    assert_eq!(json["content"][0]["mimeType"], "image/png");
    assert_eq!(json["content"][1]["type"], "audio");
    assert_eq!(json["content"][3]["type"], "resource_link");
    assert_eq!(json["content"][4]["type"], "resource");

    let structured = call(
        &s.client,
        "m_echo",
        serde_json::json!({"text": "hi", "structured": true}),
    )
    .await
    .unwrap();
    assert_eq!(
        structured.structured_content,
        Some(serde_json::json!({"text": "hi"}))
    );

    let failed = call(
        &s.client,
        "m_fail",
        serde_json::json!({"message": "disk full"}),
    )
    .await
    .unwrap();
    assert_eq!(failed.is_error, Some(true));
    assert!(
        text(&failed).starts_with("extension: ") && text(&failed).contains("disk full"),
        "{}",
        text(&failed)
    );

    // Before the timeout below keeps the native extension's one slot busy.
    let (native_pid, mcp_pid) = (pid(&s.client, "n_pid").await, pid(&s.client, "m_pid").await);
    let timed_out = call(&s.client, "n_sleep", serde_json::json!({"ms": 5000}))
        .await
        .unwrap();
    assert_eq!(timed_out.is_error, Some(true));
    assert!(
        text(&timed_out).starts_with("timeout: "),
        "{}",
        text(&timed_out)
    );

    match call(&s.client, "no_such_tool", serde_json::json!({})).await {
        Err(rmcp::ServiceError::McpError(e)) => assert_eq!(e.code.0, -32602, "{e:?}"),
        other => panic!("expected invalid params, got {other:?}"),
    }

    // End of stdin: everything stops, exit 0, nothing left.
    drop(s.client);
    assert_eq!(exits(&mut s.child).await, Some(0));
    assert!(gone_within(native_pid, WAIT).await);
    assert!(gone_within(mcp_pid, WAIT).await);
}

#[tokio::test]
async fn cancellation_reaches_the_upstream_and_progress_comes_back() {
    let dir = temp_dir();
    let client = Client::new("canceller");
    let progress = client.progress.clone();
    let mut progressed = client.progressed.subscribe();
    let s = stdio(&config(dir.path(), ""), client).await;

    // Progress from the MCP upstream, under our own token.
    let slept = call(&s.client, "m_sleep", serde_json::json!({"ms": 10}))
        .await
        .unwrap();
    assert_eq!(text(&slept), "slept 10");
    assert_eq!(*progress.lock().unwrap(), ["sleeping 10 ms"]);

    // Our cancellation of a call: the upstream sees its own.
    let params = CallToolRequestParams::new("m_sleep")
        .with_arguments(serde_json::from_value(serde_json::json!({"ms": 60000})).unwrap());
    let handle = s
        .client
        .peer()
        .send_request_with_option(
            ClientRequest::CallToolRequest(CallToolRequest::new(params)),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    // Wait until the call has reached the server (its progress arrives).
    tokio::time::timeout(WAIT, progressed.wait_for(|n| *n >= 2))
        .await
        .expect("the call reaches the server")
        .unwrap();
    handle.cancel(Some("changed my mind".into())).await.unwrap();
    let log = dir.path().join("cancelled.log");
    let seen = async {
        while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("cancelled sleep 60000")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, seen)
        .await
        .expect("the upstream sees the cancellation");
    // The session goes on.
    let echo = call(&s.client, "m_echo", serde_json::json!({"text": "after"}))
        .await
        .unwrap();
    assert_eq!(text(&echo), "after");
}

#[tokio::test]
async fn clients_hear_when_the_tool_list_changes() {
    let dir = temp_dir();
    let client = Client::new("listener");
    let mut changes = client.list_changed.subscribe();
    let s = stdio(&config(dir.path(), ""), client).await;
    let before = s.client.peer().list_all_tools().await.unwrap();
    assert!(!before.iter().any(|t| t.name == "m_extra"));

    call(&s.client, "m_change_tools", serde_json::json!({}))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, changes.wait_for(|n| *n >= 1))
        .await
        .expect("a list-changed notification")
        .unwrap();
    let after = s.client.peer().list_all_tools().await.unwrap();
    assert!(after.iter().any(|t| t.name == "m_extra"), "{after:?}");
    let extra = call(&s.client, "m_extra", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(text(&extra), "extra");
}

#[tokio::test]
async fn the_oldest_and_newest_initialize_versions_are_served() {
    let dir = temp_dir();
    let cfg = config(dir.path(), "");
    for version in [
        ProtocolVersion::V_2025_06_18,
        ProtocolVersion::LATEST_WITH_INITIALIZE,
    ] {
        let mut s = stdio(&cfg, Client::new("versioned").version(version.clone())).await;
        let info = s.client.peer().peer_info().unwrap();
        assert_eq!(info.protocol_version, version);
        let echo = call(&s.client, "m_echo", serde_json::json!({"text": "v"}))
            .await
            .unwrap();
        assert_eq!(text(&echo), "v");
        drop(s.client);
        assert_eq!(exits(&mut s.child).await, Some(0));
    }
}

#[tokio::test]
async fn sigterm_stops_everything_and_exits_0() {
    let dir = temp_dir();
    let mut s = stdio(&config(dir.path(), ""), Client::new("terminated")).await;
    let (native_pid, mcp_pid) = (pid(&s.client, "n_pid").await, pid(&s.client, "m_pid").await);
    let exthost = nix::unistd::Pid::from_raw(s.child.id().unwrap() as i32);
    nix::sys::signal::kill(exthost, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(exits(&mut s.child).await, Some(0));
    assert!(gone_within(native_pid, WAIT).await);
    assert!(gone_within(mcp_pid, WAIT).await);
}

/// `exthost mcp --listen 127.0.0.1:0 [extra…]` and its URL.
async fn http(cfg: &Path, extra: &[&str]) -> (tokio::process::Child, String) {
    let mut child = run::exthost()
        .args(["mcp", "--config"])
        .arg(cfg)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.strip_prefix("exthost: serving MCP at ") {
                return url.to_owned();
            }
        }
        panic!("exthost mcp ended without serving");
    })
    .await
    .expect("exthost mcp listens");
    // Keep draining its logs so that it never blocks on them.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

async fn http_client(
    url: &str,
    token: Option<&str>,
    name: &'static str,
) -> Result<RunningService<RoleClient, Client>, rmcp::service::ClientInitializeError> {
    // The client side of reqwest needs rustls's provider (exthost installs
    // ring's for its own clients; this test builds one itself).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    if let Some(token) = token {
        config = config.auth_header(token.to_owned());
    }
    Client::new(name)
        .serve(StreamableHttpClientTransport::from_config(config))
        .await
}

#[tokio::test]
async fn http_serves_two_clients_at_once_and_wants_the_token() {
    let dir = temp_dir();
    let cfg = config(dir.path(), "");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let (mut child, url) = http(&cfg, &["--token-file", token_file.to_str().unwrap()]).await;

    assert!(
        http_client(&url, None, "anonymous").await.is_err(),
        "no token: refused"
    );
    assert!(
        http_client(&url, Some("wrong"), "wrong").await.is_err(),
        "wrong token: refused"
    );
    let a = http_client(&url, Some("s3cret-token"), "a").await.unwrap();
    let b = http_client(&url, Some("s3cret-token"), "b").await.unwrap();
    let (ra, rb) = tokio::join!(
        call(&a, "m_echo", serde_json::json!({"text": "from a"})),
        call(&b, "n_echo", serde_json::json!({"from": "b"})),
    );
    assert_eq!(text(&ra.unwrap()), "from a");
    assert_eq!(text(&rb.unwrap()), r#"{"from":"b"}"#);

    // A raw request without the header gets 401.
    let status = raw_status(&url).await;
    assert_eq!(status, 401);

    let mcp_pid = pid(&a, "m_pid").await;
    drop((a, b));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(exits(&mut child).await, Some(0));
    assert!(gone_within(mcp_pid, WAIT).await);
}

/// The status of a bare POST to `url`, with no Authorization header.
async fn raw_status(url: &str) -> u16 {
    raw_status_with(url, None).await
}

/// The status of an `initialize` POST to `url` with `authorization`.
async fn raw_status_with(url: &str, authorization: Option<&str>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}"#;
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_non_loopback_address_needs_a_token() {
    let dir = temp_dir();
    let cfg = config(dir.path(), "");
    let out = tokio::time::timeout(
        WAIT,
        run::exthost()
            .args(["mcp", "--config"])
            .arg(&cfg)
            .args(["--listen", "0.0.0.0:0"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--token-file"), "{stderr}");
    // Nothing was started.
    assert!(!dir.path().join("logs").exists(), "no service was started");
}

#[tokio::test]
async fn a_configuration_that_lists_exthost_mcp_itself_does_not_recurse() {
    let dir = temp_dir();
    let cfg = dir.path().join("host.toml");
    let extra = format!(
        "\n[services.itself]\nkind = \"mcp\"\ncommand = {:?}\nargs = [\"mcp\", \"--config\", {:?}]\n",
        env!("CARGO_BIN_EXE_exthost"),
        cfg
    );
    let cfg = config(dir.path(), &extra);
    let s = stdio(&cfg, Client::new("recursion")).await;
    let tools = s.client.peer().list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "n_echo"), "{tools:?}");
    let log = std::fs::read_to_string(dir.path().join("logs").join("itself.log")).unwrap();
    assert!(log.contains("refusing to serve"), "{log}");
    assert_eq!(
        log.matches("started by the `exthost mcp`").count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
    let dir = temp_dir();
    let cfg = config(dir.path(), "");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok\n").unwrap();
    let (mut child, url) = http(&cfg, &["--token-file", token_file.to_str().unwrap()]).await;
    assert_eq!(raw_status_with(&url, Some("bearer tok")).await, 200);
    assert_eq!(raw_status_with(&url, Some("Bearer tok2")).await, 401);
    assert_eq!(raw_status_with(&url, Some("Basic tok")).await, 401);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(exits(&mut child).await, Some(0));
}

#[tokio::test]
async fn clients_hear_when_a_restart_changes_the_tools() {
    let dir = temp_dir();
    let client = Client::new("restarts");
    let mut changes = client.list_changed.subscribe();
    let s = stdio(&config(dir.path(), "restart = \"on_failure\"\n"), client).await;
    // The extra tool exists only until the server restarts.
    call(&s.client, "m_change_tools", serde_json::json!({}))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, changes.wait_for(|n| *n >= 1))
        .await
        .expect("a notification for the added tool")
        .unwrap();
    let crashed = call(&s.client, "m_crash", serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(crashed.is_error, Some(true));
    assert!(
        text(&crashed).starts_with("unavailable: "),
        "{}",
        text(&crashed)
    );
    tokio::time::timeout(WAIT, changes.wait_for(|n| *n >= 2))
        .await
        .expect("a notification once the restarted server has other tools")
        .unwrap();
    let tools = s.client.peer().list_all_tools().await.unwrap();
    assert!(!tools.iter().any(|t| t.name == "m_extra"), "{tools:?}");
    assert!(tools.iter().any(|t| t.name == "m_echo"), "{tools:?}");
}

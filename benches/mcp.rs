//! MCP servers through exthost against rmcp's own client, side by side in
//! one run, each variant against its own server process (this bench binary
//! re-run as the rmcp server of `examples/mcp_server.rs`, over stdio).
//!
//! - `mcp_roundtrip/rmcp_direct`: rmcp's client calling `echo` on the
//!   server directly (`Peer::call_tool` over the child's pipes);
//! - `mcp_roundtrip/exthost`: the whole path an agent uses: the
//!   `ServiceManager`'s router ▶ the per-service stack (trace, timeout) ▶
//!   the MCP session ▶ the server;
//! - `mcp_serve/direct`: the same rmcp client calling the MCP echo server
//!   directly, against `mcp_serve/exthost_mcp`: the rmcp client calling
//!   `exthost mcp` (the real binary, over stdio), which routes the call to
//!   a native echo extension (this binary re-run with `serve`);
//! - `mcp_startup/concurrent_8` and `sequential_8`: eight servers started
//!   by one `ServiceManager` (concurrently), against eight started one
//!   after another through the `Connector` (the process, `initialize` and
//!   `tools/list` each); shutdown is not timed.
//!
//! Run `cargo bench --bench mcp`, and pinned to one core
//! `taskset -c 0 cargo bench --bench mcp`.

#[allow(dead_code, unreachable_pub, clippy::all)]
#[path = "../examples/mcp_server.rs"]
mod mcp_server;

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use criterion::Criterion;
use exthost::config::ServiceConfig;
use exthost::connector::{Connector, Target};
use exthost::manager::ServiceManager;
use exthost::process::Paths;
use exthost::router::ToolCall;
use rmcp::model::CallToolRequestParams;
use rmcp::ServiceExt as _;
use tower::ServiceExt as _;

/// About 64 bytes of text, as in the native roundtrip bench.
const TEXT: &str = "the quick brown fox jumps over the lazy dog, limit 10, offset 0";

fn server_config() -> ServiceConfig {
    ServiceConfig::mcp_command(std::env::current_exe().unwrap(), ["mcp"])
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("exthost-bench-")
        .tempdir_in("/tmp")
        .unwrap()
}

fn roundtrip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let args: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({ "text": TEXT })).unwrap();
    let args_text = serde_json::Value::Object(args.clone()).to_string();
    let mut group = c.benchmark_group("mcp_roundtrip");

    // rmcp's client over the pipes of a server we spawn ourselves.
    let (mut child, client) = rt.block_on(client_of(&std::env::current_exe().unwrap(), &["mcp"]));
    group.bench_function("rmcp_direct", |b| {
        b.to_async(&rt).iter(|| async {
            let params = CallToolRequestParams::new("echo").with_arguments(args.clone());
            let result = client.peer().call_tool(params).await.unwrap();
            assert_eq!(result.content[0].as_text().unwrap().text, TEXT);
        })
    });

    let dir = temp_dir();
    let mut configs = BTreeMap::new();
    configs.insert("mcp".to_owned(), server_config());
    let manager = ServiceManager::with_paths(
        &configs,
        Paths::under(dir.path(), dir.path().join("d.sock")),
    );
    rt.block_on(async {
        let report = manager.start().await;
        assert!(report.failed.is_empty(), "{:?}", report.failed);
    });
    let router = manager.router();
    group.bench_function("exthost", |b| {
        b.to_async(&rt).iter(|| async {
            let out = router
                .clone()
                .oneshot(ToolCall::new("echo", args_text.as_str()))
                .await
                .unwrap();
            assert_eq!(out, TEXT);
        })
    });
    group.finish();

    rt.block_on(async {
        manager.shutdown_all().await;
        drop(client);
        let _ = child.kill().await;
    });
}

/// rmcp's client over the pipes of `program args`.
async fn client_of(
    program: &std::path::Path,
    args: &[&str],
) -> (
    tokio::process::Child,
    rmcp::service::RunningService<rmcp::RoleClient, ()>,
) {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let transport = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let client = ().serve(transport).await.unwrap();
    (child, client)
}

fn serve(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let me = std::env::current_exe().unwrap();
    let dir = temp_dir();
    let cfg = dir.path().join("host.toml");
    std::fs::write(
        &cfg,
        format!(
            "services_dir = {:?}\nlogs_dir = {:?}\n[services.native]\ncommand = {:?}\n",
            dir.path().join("s"),
            dir.path().join("l"),
            me
        ),
    )
    .unwrap();
    let args: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({ "text": TEXT })).unwrap();
    let expected = serde_json::Value::Object(args.clone()).to_string();
    let (mut direct_child, direct) = rt.block_on(client_of(&me, &["mcp"]));
    let exthost = std::path::Path::new(env!("CARGO_BIN_EXE_exthost"));
    let (mut serve_child, served) = rt.block_on(client_of(
        exthost,
        &["mcp", "--config", cfg.to_str().unwrap()],
    ));

    let mut group = c.benchmark_group("mcp_serve");
    group.bench_function("direct", |b| {
        b.to_async(&rt).iter(|| async {
            let params = CallToolRequestParams::new("echo").with_arguments(args.clone());
            let result = direct.peer().call_tool(params).await.unwrap();
            assert_eq!(result.content[0].as_text().unwrap().text, TEXT);
        })
    });
    group.bench_function("exthost_mcp", |b| {
        b.to_async(&rt).iter(|| async {
            let params = CallToolRequestParams::new("echo").with_arguments(args.clone());
            let result = served.peer().call_tool(params).await.unwrap();
            assert_eq!(result.content[0].as_text().unwrap().text, expected);
        })
    });
    group.finish();
    rt.block_on(async {
        drop(direct);
        drop(served);
        let _ = direct_child.kill().await;
        // End of stdin: exthost stops its extension and exits.
        let _ = tokio::time::timeout(Duration::from_secs(10), serve_child.wait()).await;
        let _ = serve_child.kill().await;
    });
}

fn startup(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("mcp_startup");
    group.sample_size(10);
    group.bench_function("concurrent_8", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = temp_dir();
                let configs: BTreeMap<_, _> = (0..8)
                    .map(|i| (format!("mcp{i}"), server_config()))
                    .collect();
                let manager = ServiceManager::with_paths(
                    &configs,
                    Paths::under(dir.path(), dir.path().join("d.sock")),
                );
                let t = Instant::now();
                let report = manager.start().await;
                total += t.elapsed();
                assert_eq!(report.ready.len(), 8, "{:?}", report.failed);
                manager.shutdown_all().await;
            }
            total
        })
    });
    group.bench_function("sequential_8", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = temp_dir();
                let connector = Connector::new(Paths::under(dir.path(), dir.path().join("d.sock")));
                let mut started = Vec::new();
                let t = Instant::now();
                for i in 0..8 {
                    let target = Target::new(format!("mcp{i}"), server_config());
                    started.push(connector.start(target).await.unwrap());
                }
                total += t.elapsed();
                futures::future::join_all(started.iter().map(|s| s.stop(Duration::from_secs(5))))
                    .await;
            }
            total
        })
    });
    group.finish();
}

fn main() {
    if common::serve_if_asked() {
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("mcp") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(mcp_server::serve_stdio())
            .unwrap();
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    roundtrip(&mut c);
    serve(&mut c);
    startup(&mut c);
    c.final_summary();
}

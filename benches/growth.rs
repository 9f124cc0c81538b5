//! How the cost grows: with the size of a message, and with the number of
//! tools registered. Side by side in one run, each variant against its own
//! server process (this binary re-run as the echo extension).
//!
//! - `growth/floor/<size>`, `growth/full/<size>`: one echo call with
//!   `<size>` of JSON arguments (1 KiB, 64 KiB, 1 MiB, 8 MiB), over a raw
//!   socket and through the whole path (router ▶ stack ▶ connection);
//!   criterion reports MB/s of arguments;
//! - `routing/full/<n>`: one ~64-byte echo call through the router with `n`
//!   tools registered (1, 100, 10 000).
//!
//! `cargo bench --bench growth`; pinned, `taskset -c 0 cargo bench --bench growth`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Raw, Server, ARGS};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use exthost::config::ServiceConfig;
use exthost::manager::ServiceManager;
use exthost::process::Paths;
use exthost::proto::{ExtRequest, ExtResponse};
use exthost::router::ToolCall;
use tokio::sync::Mutex;
use tower::{Service, ServiceExt};

/// JSON arguments of exactly `len` bytes.
fn args_of(len: usize) -> String {
    let mut s = String::with_capacity(len);
    s.push_str(r#"{"data":""#);
    s.extend(std::iter::repeat_n('x', len - s.len() - 2));
    s.push_str(r#""}"#);
    s
}

/// A manager running one echo extension (with `tools` tools) under `dir`.
fn manager(dir: &std::path::Path, name: &str, tools: usize) -> ServiceManager {
    let configs: BTreeMap<_, _> = [(
        "bench".to_owned(),
        ServiceConfig::command(std::env::current_exe().unwrap())
            .with_env("EXTHOST_BENCH_TOOLS", tools.to_string()),
    )]
    .into();
    ServiceManager::with_paths(
        &configs,
        Paths::under(dir.join(name), dir.join(format!("{name}.d.sock"))),
    )
}

fn growth(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = common::temp_dir();
    let server = Server::start(dir.path(), "floor", None);
    let raw = Mutex::new(rt.block_on(async { Raw::new(server.connect().await) }));
    let m = manager(dir.path(), "full", 1);
    let report = rt.block_on(m.start());
    assert_eq!(report.ready.len(), 1, "{:?}", report.failed);
    let router = m.router();

    let mut group = c.benchmark_group("growth");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    for (label, len) in [
        ("1KiB", 1 << 10),
        ("64KiB", 64 << 10),
        ("1MiB", 1 << 20),
        ("8MiB", 8 << 20),
    ] {
        let args = args_of(len);
        group.throughput(Throughput::Bytes(len as u64));
        let req = ExtRequest::tool_call("echo", args.clone());
        let expected = ExtResponse::tool_result(args.clone());
        group.bench_function(BenchmarkId::new("floor", label), |b| {
            b.to_async(&rt).iter(|| async {
                let resp = raw.lock().await.call(&req).await;
                assert!(resp == expected);
            })
        });
        group.bench_function(BenchmarkId::new("full", label), |b| {
            b.to_async(&rt).iter(|| async {
                let mut svc = router.clone();
                let call = ToolCall::new("echo", args.clone());
                let out = svc.ready().await.unwrap().call(call).await.unwrap();
                assert!(out == args.as_str());
            })
        });
    }
    group.finish();

    let managers: Vec<_> = [1usize, 100, 10_000]
        .into_iter()
        .map(|n| {
            let m = manager(dir.path(), &format!("tools{n}"), n);
            let report = rt.block_on(m.start());
            assert_eq!(report.ready.len(), 1, "{:?}", report.failed);
            (n, m)
        })
        .collect();
    let mut group = c.benchmark_group("routing");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (n, m) in &managers {
        let router = m.router();
        group.bench_function(BenchmarkId::new("full", n), |b| {
            b.to_async(&rt).iter(|| async {
                let mut svc = router.clone();
                let call = ToolCall::new("echo", ARGS).agent("bench");
                let out = svc.ready().await.unwrap().call(call).await.unwrap();
                assert_eq!(out, ARGS);
            })
        });
    }
    group.finish();
    for (_, m) in managers {
        rt.block_on(m.shutdown_all());
    }
    rt.block_on(m.shutdown_all());
    drop(server);
}

criterion_group!(benches, growth);

fn main() {
    common::bench_main(benches);
}

//! Sequential echo round trips against a separate server process.
//!
//! Variants, side by side in one run, each over its own connection to its
//! own server process (this binary re-run as an `exthost::server` echo
//! extension):
//!
//! - `floor`: raw length-prefixed frames over the Unix socket, prost
//!   encode/decode, one task, no tower;
//! - `reference`: the reference's client: one mutex for the writer, one for
//!   the reader, one lock per request/response pair;
//! - `exthost`: the per-extension stack (`Trace ▶ Timeout ▶ Connection`);
//! - `full`: the whole path an agent uses: `ServiceManager` router ▶
//!   per-extension stack ▶ extension process.
//!
//! Run `cargo bench --bench roundtrip`, and pinned to one core
//! `taskset -c 0 cargo bench --bench roundtrip`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Raw, Reference, Server, ARGS};
use criterion::{criterion_group, Criterion};
use exthost::config::ServiceConfig;
use exthost::manager::ServiceManager;
use exthost::process::Paths;
use exthost::proto::{ExtRequest, ExtResponse};
use exthost::router::ToolCall;
use exthost::stack::StackBuilder;
use tokio::sync::Mutex;
use tower::{Service, ServiceExt};

fn roundtrip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = common::temp_dir();
    let servers: Vec<_> = ["floor", "reference", "exthost"]
        .iter()
        .map(|n| Server::start(dir.path(), n, None))
        .collect();
    let req = ExtRequest::tool_call("echo", ARGS);
    let expected = ExtResponse::tool_result(ARGS);

    let mut group = c.benchmark_group("roundtrip");

    let raw = Mutex::new(rt.block_on(async { Raw::new(servers[0].connect().await) }));
    group.bench_function("floor", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = raw.lock().await.call(&req).await;
            assert_eq!(resp, expected);
        })
    });

    let reference = rt.block_on(async { Reference::new(servers[1].connect().await) });
    group.bench_function("reference", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = reference.call(&req).await;
            assert_eq!(resp, expected);
        })
    });

    let stack = rt.block_on(async { StackBuilder::new("bench").build(servers[2].connect().await) });
    group.bench_function("exthost", |b| {
        b.to_async(&rt).iter(|| async {
            let mut svc = stack.clone();
            let resp = svc.ready().await.unwrap().call(req.clone()).await.unwrap();
            assert_eq!(resp, expected);
        })
    });

    let configs: BTreeMap<_, _> = [(
        "bench".to_owned(),
        ServiceConfig::command(std::env::current_exe().unwrap()),
    )]
    .into();
    let manager = ServiceManager::with_paths(
        &configs,
        Paths::under(dir.path().join("full"), dir.path().join("d.sock")),
    );
    let report = rt.block_on(manager.start());
    assert_eq!(report.ready.len(), 1, "{:?}", report.failed);
    let router = manager.router();
    group.bench_function("full", |b| {
        b.to_async(&rt).iter(|| async {
            let mut svc = router.clone();
            let call = ToolCall::new("echo", ARGS).agent("bench");
            let resp = svc.ready().await.unwrap().call(call).await.unwrap();
            assert_eq!(resp, ARGS);
        })
    });
    group.finish();
    rt.block_on(manager.shutdown_all());
    drop(servers);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = roundtrip
}

fn main() {
    common::bench_main(benches);
}

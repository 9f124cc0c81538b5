//! Throughput: many concurrent callers on one extension, side by side in
//! one run. Each iteration runs a fixed number of echo calls spread over
//! the callers; criterion reports calls per second.
//!
//! - `reference/0ms`: 32 callers sharing one reference-style client (writer
//!   mutex, reader mutex, request lock);
//! - `exthost_mif1/0ms`, `exthost_mif32/0ms`: 32 callers sharing one
//!   per-extension stack with `max_in_flight` 1 and 32;
//! - `floor_32conn/0ms`: 32 callers, each with its own raw connection;
//! - `exthost_mif1/1ms`, `exthost_mif32/1ms`: the same with a tool that
//!   takes 1 ms;
//! - `router_4x8/0ms`: 4 extensions × 8 callers through the router.
//!
//! `cargo bench --bench throughput`

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Raw, Reference, Server, ARGS};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use exthost::config::ServiceConfig;
use exthost::manager::ServiceManager;
use exthost::process::Paths;
use exthost::proto::{ExtRequest, ExtResponse};
use exthost::router::ToolCall;
use exthost::stack::{ExtensionService, StackBuilder};
use tokio::runtime::Runtime;
use tower::ServiceExt;

const CALLERS: usize = 32;

/// Runs `callers` tasks, caller `c` running `caller(c)`, and returns the
/// elapsed time.
async fn drive<F, Fut>(callers: usize, caller: F) -> Duration
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers).map(|c| tokio::spawn(caller(c))).collect();
    for t in tasks {
        t.await.unwrap();
    }
    start.elapsed()
}

/// A caller making `per_caller` echo calls through `svc`.
fn stack_calls(
    svc: &ExtensionService,
    per_caller: usize,
) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> + '_ {
    move |_| {
        let svc = svc.clone();
        Box::pin(async move {
            let req = ExtRequest::tool_call("echo", ARGS);
            for _ in 0..per_caller {
                let resp = svc.clone().oneshot(req.clone()).await.unwrap();
                assert_eq!(resp, ExtResponse::tool_result(ARGS));
            }
        })
    }
}

fn bench_stack(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    id: BenchmarkId,
    svc: &ExtensionService,
    per_caller: usize,
) {
    group.throughput(Throughput::Elements((CALLERS * per_caller) as u64));
    group.bench_function(id, |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += drive(CALLERS, stack_calls(svc, per_caller)).await;
            }
            total
        })
    });
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = common::temp_dir();
    let fast = Server::start(dir.path(), "fast", None);
    let slow = Server::start(dir.path(), "slow", Some(1));

    let mut group = c.benchmark_group("throughput");
    group.sample_size(10);

    // 0 ms tool: 100 calls per caller.
    let per = 100;
    let reference = rt.block_on(async { Arc::new(Reference::new(fast.connect().await)) });
    group.throughput(Throughput::Elements((CALLERS * per) as u64));
    group.bench_function(BenchmarkId::new("reference", "0ms"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let reference = reference.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += drive(CALLERS, |_| {
                        let r = reference.clone();
                        async move {
                            let req = ExtRequest::tool_call("echo", ARGS);
                            for _ in 0..per {
                                assert_eq!(r.call(&req).await, ExtResponse::tool_result(ARGS));
                            }
                        }
                    })
                    .await;
                }
                total
            }
        })
    });
    for mif in [1, 32] {
        let svc = rt.block_on(async {
            StackBuilder::new("fast")
                .max_in_flight(mif)
                .build(fast.connect().await)
        });
        bench_stack(
            &mut group,
            &rt,
            BenchmarkId::new(format!("exthost_mif{mif}"), "0ms"),
            &svc,
            per,
        );
    }
    let raws: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..CALLERS {
            v.push(Arc::new(tokio::sync::Mutex::new(Raw::new(
                fast.connect().await,
            ))));
        }
        v
    });
    group.bench_function(BenchmarkId::new("floor_32conn", "0ms"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let raws = raws.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += drive(CALLERS, |c| {
                        let raw = raws[c].clone();
                        async move {
                            let req = ExtRequest::tool_call("echo", ARGS);
                            let mut raw = raw.lock().await;
                            for _ in 0..per {
                                assert_eq!(raw.call(&req).await, ExtResponse::tool_result(ARGS));
                            }
                        }
                    })
                    .await;
                }
                total
            }
        })
    });

    // 1 ms tool: 10 calls per caller.
    for mif in [1, 32] {
        let svc = rt.block_on(async {
            StackBuilder::new("slow")
                .max_in_flight(mif)
                .build(slow.connect().await)
        });
        bench_stack(
            &mut group,
            &rt,
            BenchmarkId::new(format!("exthost_mif{mif}"), "1ms"),
            &svc,
            10,
        );
    }

    // 4 extensions × 8 callers through the router.
    let me = std::env::current_exe().unwrap();
    let configs: BTreeMap<_, _> = (0..4)
        .map(|i| {
            let cfg = ServiceConfig::command(&me)
                .with_env("EXTHOST_BENCH_PREFIX", format!("e{i}_"))
                .with_max_in_flight(8);
            (format!("e{i}"), cfg)
        })
        .collect();
    let manager = ServiceManager::with_paths(
        &configs,
        Paths::under(dir.path().join("router"), dir.path().join("d.sock")),
    );
    let report = rt.block_on(manager.start());
    assert_eq!(report.ready.len(), 4, "{:?}", report.failed);
    let router = manager.router();
    group.throughput(Throughput::Elements((CALLERS * per) as u64));
    group.bench_function(BenchmarkId::new("router_4x8", "0ms"), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let router = router.clone();
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += drive(CALLERS, |c| {
                        let router = router.clone();
                        async move {
                            let tool = format!("e{}_echo", c % 4);
                            for _ in 0..per {
                                let out = router
                                    .clone()
                                    .oneshot(ToolCall::new(tool.clone(), ARGS))
                                    .await
                                    .unwrap();
                                assert_eq!(out, ARGS);
                            }
                        }
                    })
                    .await;
                }
                total
            }
        })
    });
    group.finish();
    rt.block_on(manager.shutdown_all());
}

criterion_group!(benches, throughput);

fn main() {
    common::bench_main(benches);
}

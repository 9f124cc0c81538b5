//! Host memory: resident memory per ready idle extension, and steady
//! memory over a long run of calls. Prints figures; asserts nothing.
//!
//! `cargo bench --bench memory`

mod common;

use std::collections::BTreeMap;

use common::ARGS;
use exthost::config::ServiceConfig;
use exthost::manager::ServiceManager;
use exthost::process::Paths;
use exthost::router::ToolCall;
use tower::ServiceExt;

/// This process's resident set size, in KiB.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

fn main() {
    if common::serve_if_asked() {
        return;
    }
    // `cargo bench` passes --bench; a filter that excludes us means skip.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"memory".contains(&a))
    {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = common::temp_dir();
        let me = std::env::current_exe().unwrap();
        const N: usize = 16;
        let configs: BTreeMap<_, _> = (0..N)
            .map(|i| {
                let cfg = ServiceConfig::command(&me)
                    .with_env("EXTHOST_BENCH_PREFIX", format!("e{i}_"));
                (format!("e{i:02}"), cfg)
            })
            .collect();
        let manager = ServiceManager::with_paths(
            &configs,
            Paths::under(dir.path(), dir.path().join("d.sock")),
        );
        // Warm the allocator and the runtime with one extension's worth of
        // work first, so the growth below is the extensions'.
        let before = rss_kib();
        let report = manager.start().await;
        assert_eq!(report.ready.len(), N, "{:?}", report.failed);
        let after = rss_kib();
        println!(
            "memory/idle: host RSS {before} KiB before, {after} KiB with {N} ready extensions: {:.1} KiB per extension",
            (after - before) as f64 / N as f64
        );

        let router = manager.router();
        const ROUNDS: usize = 5;
        const PER_ROUND: usize = 40_000;
        let mut samples = Vec::new();
        for round in 0..ROUNDS {
            let tasks: Vec<_> = (0..8)
                .map(|c| {
                    let router = router.clone();
                    tokio::spawn(async move {
                        for i in 0..PER_ROUND / 8 {
                            let tool = format!("e{}_echo", (c + i) % N);
                            router
                                .clone()
                                .oneshot(ToolCall::new(tool, ARGS))
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let rss = rss_kib();
            samples.push(rss);
            println!(
                "memory/steady: after {} calls host RSS {rss} KiB",
                (round + 1) * PER_ROUND
            );
        }
        println!(
            "memory/steady: growth from the first to the last round: {} KiB over {} calls",
            samples[ROUNDS - 1] as i64 - samples[0] as i64,
            (ROUNDS - 1) * PER_ROUND
        );
        manager.shutdown_all().await;
    });
}

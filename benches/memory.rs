//! Host memory: resident memory per ready idle extension, steady memory
//! over a long run of calls, and the peak for one message near the 16 MiB
//! frame limit. Prints figures; asserts nothing.
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

        // One message near the frame limit, there and back: the host's peak
        // resident memory above what it held before, against the message.
        let len = exthost::codec::MAX_FRAME_LEN - 1024;
        let mut big = String::with_capacity(len);
        big.push_str(r#"{"data":""#);
        big.extend(std::iter::repeat_n('x', len - big.len() - 2));
        big.push_str(r#""}"#);
        let before = rss_kib();
        // Writing 5 resets the peak (VmHWM) to the current size.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let out = router
            .clone()
            .oneshot(ToolCall::new("e0_echo", big))
            .await
            .unwrap();
        let peak = peak_rss_kib();
        drop(out);
        let grown = peak.saturating_sub(before);
        println!(
            "memory/one_message: {len} bytes of arguments echoed: host peak {peak} KiB, {grown} KiB above the {before} KiB before ({:.2}x the message)",
            (grown * 1024) as f64 / len as f64
        );
        manager.shutdown_all().await;
    });
}

/// This process's peak resident set size since the last reset, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

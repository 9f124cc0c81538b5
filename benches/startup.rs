//! Start-up of 1 and 16 extensions, side by side in one run:
//!
//! - `exthost`: the connector, all extensions concurrently, the connect
//!   itself retried with a 1 ms doubling backoff;
//! - `reference`: the reference's order: spawn all, then for each in turn
//!   wait for its socket file by polling every 50 ms, connect, handshake;
//! - `sequential`: one extension at a time: spawn, poll for its socket every
//!   50 ms, connect, handshake, then the next.
//!
//! And `confinement`: one extension started by the connector, `unconfined`
//! or `confined` with every restriction at once (`sha256`, `inherit_env =
//! false`, all five `limits`, a Landlock sandbox with `network = false`).
//!
//! Each extension is this binary re-run as an `exthost::server` extension.
//! Only the time until every extension is ready is measured; stopping them
//! is not.
//!
//! `cargo bench --bench startup`

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use exthost::client::Connection;
use exthost::config::ServiceConfig;
use exthost::connector::{Connector, Started, Target};
use exthost::handshake::handshake;
use exthost::process::{self, Paths, ProcessHandle};

fn config() -> ServiceConfig {
    ServiceConfig::command(std::env::current_exe().unwrap())
}

async fn exthost_start(connector: &Connector, n: usize) -> Vec<Started> {
    let starts = (0..n).map(|i| connector.start(Target::new(format!("e{i}"), config())));
    futures::future::try_join_all(starts).await.unwrap()
}

/// Waits for the socket file by polling every 50 ms, as the reference
/// did; a connect refused between the child's bind and listen is retried on
/// the same schedule (the reference would have failed that extension).
async fn poll_connect(socket: &Path) -> tokio::net::UnixStream {
    loop {
        if socket.exists() {
            if let Ok(stream) = tokio::net::UnixStream::connect(socket).await {
                return stream;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects to a spawned extension the old way and runs the handshake.
async fn poll_and_handshake(p: ProcessHandle) -> (ProcessHandle, Connection) {
    let stream = poll_connect(p.socket().unwrap()).await;
    let mut conn = Connection::new(stream);
    handshake(&mut conn, &serde_json::json!({}), Duration::from_secs(10))
        .await
        .unwrap();
    (p, conn)
}

/// The reference's way: spawn all, then for each in turn wait for the
/// socket file (50 ms polling), connect, handshake.
async fn reference_start(paths: &Paths, n: usize) -> Vec<(ProcessHandle, Connection)> {
    let procs: Vec<_> = (0..n)
        .map(|i| process::spawn(&format!("r{i}"), &config(), paths).unwrap())
        .collect();
    let mut ready = Vec::new();
    for p in procs {
        ready.push(poll_and_handshake(p).await);
    }
    ready
}

/// One at a time: spawn, wait for the socket file (50 ms polling),
/// connect, handshake; then the next.
async fn sequential_start(paths: &Paths, n: usize) -> Vec<(ProcessHandle, Connection)> {
    let mut ready = Vec::new();
    for i in 0..n {
        let p = process::spawn(&format!("s{i}"), &config(), paths).unwrap();
        ready.push(poll_and_handshake(p).await);
    }
    ready
}

/// A multi-threaded runtime and a temporary services folder (kept alive by
/// the returned `TempDir`) with its paths.
fn setup() -> (tokio::runtime::Runtime, tempfile::TempDir, Paths) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("exthost-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    let paths = Paths::under(dir.path(), dir.path().join("daemon.sock"));
    (rt, dir, paths)
}

fn startup(c: &mut Criterion) {
    let (rt, _dir, paths) = setup();
    let connector = Connector::new(paths.clone());
    let grace = Duration::from_secs(2);

    let mut group = c.benchmark_group("startup");
    group.sample_size(10);
    for n in [1usize, 16] {
        group.bench_with_input(BenchmarkId::new("exthost", n), &n, |b, &n| {
            b.to_async(&rt).iter_custom(|iters| {
                let connector = connector.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let started = exthost_start(&connector, n).await;
                        total += t.elapsed();
                        futures::future::join_all(started.iter().map(|s| s.stop(grace))).await;
                    }
                    total
                }
            })
        });
        for (label, sequential) in [("reference", false), ("sequential", true)] {
            group.bench_with_input(BenchmarkId::new(label, n), &n, |b, &n| {
                b.to_async(&rt).iter_custom(|iters| {
                    let paths = paths.clone();
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let t = Instant::now();
                            let ready = if sequential {
                                sequential_start(&paths, n).await
                            } else {
                                reference_start(&paths, n).await
                            };
                            total += t.elapsed();
                            futures::future::join_all(
                                ready.iter().map(|(p, conn)| p.stop(Some(conn), grace)),
                            )
                            .await;
                        }
                        total
                    }
                })
            });
        }
    }
    group.finish();
}

/// Every restriction at once, on this binary.
fn confined() -> ServiceConfig {
    use exthost::config::{Limits, Sandbox};
    let hash = process::binary_sha256(&std::env::current_exe().unwrap()).unwrap();
    config()
        .with_sha256(hash)
        .with_clean_env(Vec::<String>::new())
        .with_limits(
            Limits::default()
                .memory(1 << 30)
                .cpu_time(Duration::from_secs(600))
                .open_files(256)
                .processes(4096)
                .file_size(1 << 30),
        )
        .with_sandbox(Sandbox::default().network(false).required(true))
}

fn confinement(c: &mut Criterion) {
    let (rt, _dir, paths) = setup();
    let connector = Connector::new(paths);
    let grace = Duration::from_secs(2);

    let mut group = c.benchmark_group("confinement");
    group.sample_size(30);
    for (label, cfg) in [("unconfined", config()), ("confined", confined())] {
        group.bench_function(label, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (connector, cfg) = (connector.clone(), cfg.clone());
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let started = connector
                            .start(Target::new(label, cfg.clone()))
                            .await
                            .unwrap();
                        total += t.elapsed();
                        started.stop(grace).await;
                    }
                    total
                }
            })
        });
    }
    // What the first start of a pinned binary adds (later starts of the
    // unchanged file reuse the hash): hashing this binary.
    let exe = std::env::current_exe().unwrap();
    group.bench_function("sha256_of_this_binary", |b| {
        b.iter(|| process::binary_sha256(&exe).unwrap())
    });
    group.finish();
}

criterion_group!(benches, startup, confinement);

fn main() {
    common::bench_main(benches);
}

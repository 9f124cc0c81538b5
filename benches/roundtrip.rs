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
//! - `exthost`: the per-extension stack (`Trace ▶ Timeout ▶ Connection`).
//!
//! Run `cargo bench --bench roundtrip`, and pinned to one core
//! `taskset -c 0 cargo bench --bench roundtrip`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, Criterion};
use exthost::proto::{ExtRequest, ExtResponse};
use exthost::stack::StackBuilder;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;
use tower::{Service, ServiceExt};

const SERVER_ENV: &str = "EXTHOST_BENCH_SERVE";
/// About 64 bytes of JSON arguments.
const ARGS: &str = r#"{"query":"the quick brown fox","limit":10,"offset":0,"x":true}"#;

fn serve(path: &str) {
    common::runtime().block_on(async {
        let echo = tower::service_fn(common::echo);
        common::echo_extension().serve(path, echo).await.unwrap();
    });
}

struct Server {
    child: Child,
    socket: PathBuf,
}

impl Server {
    fn start(dir: &Path, name: &str) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        let child = Command::new(std::env::current_exe().unwrap())
            .env(SERVER_ENV, &socket)
            .spawn()
            .unwrap();
        Server { child, socket }
    }

    async fn connect(&self) -> UnixStream {
        for _ in 0..1000 {
            if let Ok(s) = UnixStream::connect(&self.socket).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("bench server did not start");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One task, raw frames: the floor.
struct Raw {
    stream: UnixStream,
    buf: BytesMut,
}

impl Raw {
    async fn call(&mut self, req: &ExtRequest) -> ExtResponse {
        self.buf.clear();
        let len = req.encoded_len();
        self.buf.extend_from_slice(&(len as u32).to_be_bytes());
        req.encode(&mut self.buf).unwrap();
        self.stream.write_all(&self.buf).await.unwrap();
        let mut head = [0u8; 4];
        self.stream.read_exact(&mut head).await.unwrap();
        let len = u32::from_be_bytes(head) as usize;
        self.buf.clear();
        self.buf.resize(len, 0);
        self.stream.read_exact(&mut self.buf).await.unwrap();
        ExtResponse::decode(&self.buf[..]).unwrap()
    }
}

/// The reference's client: writer mutex, reader mutex, request lock.
struct Reference {
    writer: Mutex<OwnedWriteHalf>,
    reader: Mutex<OwnedReadHalf>,
    rpc: Mutex<()>,
}

impl Reference {
    async fn call(&self, req: &ExtRequest) -> ExtResponse {
        let _guard = self.rpc.lock().await;
        {
            let mut w = self.writer.lock().await;
            let mut buf = Vec::with_capacity(4 + req.encoded_len());
            buf.extend_from_slice(&(req.encoded_len() as u32).to_be_bytes());
            req.encode(&mut buf).unwrap();
            w.write_all(&buf).await.unwrap();
        }
        let mut r = self.reader.lock().await;
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await.unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes(head) as usize];
        r.read_exact(&mut payload).await.unwrap();
        ExtResponse::decode(&payload[..]).unwrap()
    }
}

fn roundtrip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("exthost-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    let servers: Vec<_> = ["floor", "reference", "exthost"]
        .iter()
        .map(|n| Server::start(dir.path(), n))
        .collect();
    let req = ExtRequest::tool_call("echo", ARGS);
    let expected = ExtResponse::tool_result(ARGS);

    let mut group = c.benchmark_group("roundtrip");

    let raw = Arc::new(Mutex::new(rt.block_on(async {
        Raw {
            stream: servers[0].connect().await,
            buf: BytesMut::with_capacity(256),
        }
    })));
    group.bench_function("floor", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = raw.lock().await.call(&req).await;
            assert_eq!(resp, expected);
        })
    });

    let reference = rt.block_on(async {
        let (r, w) = servers[1].connect().await.into_split();
        Arc::new(Reference {
            writer: Mutex::new(w),
            reader: Mutex::new(r),
            rpc: Mutex::new(()),
        })
    });
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
    group.finish();
    drop(servers);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = roundtrip
}

fn main() {
    if let Ok(path) = std::env::var(SERVER_ENV) {
        serve(&path);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

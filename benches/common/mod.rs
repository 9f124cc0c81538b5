//! What the benchmarks share: the echo extension they run as separate
//! processes, and the `floor` and `reference` clients.

#![allow(dead_code)]

use std::convert::Infallible;

use exthost::proto::{ExtRequest, ExtResponse};
use exthost::server::{Call, Extension};
use exthost::Tool;

/// An extension with one tool, `echo` (prefixed with
/// `EXTHOST_BENCH_PREFIX`, if set), and `EXTHOST_BENCH_TOOLS` - 1 more
/// (`tool_1`, `tool_2`, ...) if that is set.
pub fn echo_extension() -> Extension {
    let prefix = std::env::var("EXTHOST_BENCH_PREFIX").unwrap_or_default();
    let tools: usize = std::env::var("EXTHOST_BENCH_TOOLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let mut ext = Extension::new("bench").tool(Tool::new(
        format!("{prefix}echo"),
        "Echo",
        serde_json::json!({}),
    ));
    for i in 1..tools {
        ext = ext.tool(Tool::new(
            format!("{prefix}tool_{i}"),
            "Echo",
            serde_json::json!({}),
        ));
    }
    ext
}

/// Answers `echo` with its arguments (after `EXTHOST_BENCH_TOOL_MS`
/// milliseconds, if set), and accepts any configuration.
pub async fn echo(call: Call) -> Result<String, Infallible> {
    match call {
        Call::Tool(t) => {
            if let Some(ms) = tool_ms() {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            Ok(t.args)
        }
        _ => Ok(String::new()),
    }
}

fn tool_ms() -> Option<u64> {
    static MS: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *MS.get_or_init(|| std::env::var("EXTHOST_BENCH_TOOL_MS").ok()?.parse().ok())
}

/// A single-threaded runtime for an extension process.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// If this process was started as an extension (`<bench> serve --socket
/// PATH`), serves the echo extension until shut down and returns true.
pub fn serve_if_asked() -> bool {
    if std::env::args().nth(1).as_deref() != Some("serve") {
        return false;
    }
    runtime().block_on(async {
        let echo = tower::service_fn(echo);
        echo_extension().run(echo).await.expect("serve");
    });
    true
}

/// A criterion bench binary's `main`: serve as the echo extension when
/// started with `serve`, otherwise run `benches`.
pub fn bench_main(benches: fn()) {
    if serve_if_asked() {
        return;
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}

/// About 64 bytes of JSON arguments.
pub const ARGS: &str = r#"{"query":"the quick brown fox","limit":10,"offset":0,"x":true}"#;

/// An echo extension process (this bench binary re-run with `serve`),
/// killed and reaped on drop.
pub struct Server {
    child: std::process::Child,
    /// Where it listens.
    pub socket: std::path::PathBuf,
}

impl Server {
    /// Starts one in `dir`; `tool_ms` makes each tool call take that long.
    pub fn start(dir: &std::path::Path, name: &str, tool_ms: Option<u64>) -> Self {
        let socket = dir.join(format!("{name}.sock"));
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.arg("serve").arg("--socket").arg(&socket);
        if let Some(ms) = tool_ms {
            cmd.env("EXTHOST_BENCH_TOOL_MS", ms.to_string());
        }
        Server {
            child: cmd.spawn().unwrap(),
            socket,
        }
    }

    /// Connects, retrying while it starts.
    pub async fn connect(&self) -> tokio::net::UnixStream {
        for _ in 0..1000 {
            if let Ok(s) = tokio::net::UnixStream::connect(&self.socket).await {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
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

/// One task, raw frames, no tower: the floor.
pub struct Raw {
    stream: tokio::net::UnixStream,
    buf: bytes::BytesMut,
}

impl Raw {
    /// A raw client over `stream`.
    pub fn new(stream: tokio::net::UnixStream) -> Self {
        Raw {
            stream,
            buf: bytes::BytesMut::with_capacity(256),
        }
    }

    /// One request, one response.
    pub async fn call(&mut self, req: &ExtRequest) -> ExtResponse {
        use prost::Message;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.buf.clear();
        self.buf
            .extend_from_slice(&(req.encoded_len() as u32).to_be_bytes());
        req.encode(&mut self.buf).unwrap();
        self.stream.write_all(&self.buf).await.unwrap();
        let mut head = [0u8; 4];
        self.stream.read_exact(&mut head).await.unwrap();
        self.buf.clear();
        self.buf.resize(u32::from_be_bytes(head) as usize, 0);
        self.stream.read_exact(&mut self.buf).await.unwrap();
        ExtResponse::decode(&self.buf[..]).unwrap()
    }
}

/// The reference's client: a writer mutex, a reader mutex, and one lock
/// held per request/response pair.
pub struct Reference {
    writer: tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>,
    reader: tokio::sync::Mutex<tokio::net::unix::OwnedReadHalf>,
    rpc: tokio::sync::Mutex<()>,
}

impl Reference {
    /// A reference-style client over `stream`.
    pub fn new(stream: tokio::net::UnixStream) -> Self {
        let (r, w) = stream.into_split();
        Reference {
            writer: tokio::sync::Mutex::new(w),
            reader: tokio::sync::Mutex::new(r),
            rpc: tokio::sync::Mutex::new(()),
        }
    }

    /// One request, one response, under the request lock.
    pub async fn call(&self, req: &ExtRequest) -> ExtResponse {
        use prost::Message;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// A private temp dir for sockets.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("exthost-bench-")
        .tempdir_in("/tmp")
        .unwrap()
}

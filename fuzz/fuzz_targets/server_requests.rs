//! The extension server's request handling on arbitrary bytes from the
//! host: it must never panic or hang, and always close the connection or
//! answer and wait for more.

#![no_main]

use std::convert::Infallible;
use std::time::Duration;

use exthost::server::{Call, Extension};
use exthost::Tool;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut host, ext_io) = tokio::io::duplex(1 << 16);
        let ext = Extension::new("fuzz")
            .tool(Tool::new("echo", "Echo", serde_json::Value::Null))
            .query(true);
        let handler = tower::service_fn(|call: Call| async move {
            Ok::<_, Infallible>(match call {
                Call::Tool(t) => t.args,
                _ => String::new(),
            })
        });
        let server = tokio::spawn(ext.serve_connection(ext_io, handler));
        let _ = host.write_all(data).await;
        let _ = host.shutdown().await;
        let mut out = Vec::new();
        // The server must finish on its own once the input ends.
        let read = tokio::time::timeout(Duration::from_secs(5), host.read_to_end(&mut out));
        assert!(read.await.is_ok(), "the server hung on this input");
        let _ = server.await.expect("the server panicked");
    });
});

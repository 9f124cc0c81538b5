//! The echo extension the benchmarks run as separate processes.

use std::convert::Infallible;

use exthost::server::{Call, Extension};
use exthost::Tool;

/// An extension with one tool, `echo`.
pub fn echo_extension() -> Extension {
    Extension::new("bench").tool(Tool::new("echo", "Echo", serde_json::json!({})))
}

/// Answers `echo` with its arguments, and accepts any configuration.
pub async fn echo(call: Call) -> Result<String, Infallible> {
    match call {
        Call::Tool(t) => Ok(t.args),
        _ => Ok(String::new()),
    }
}

/// A single-threaded runtime for an extension process.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

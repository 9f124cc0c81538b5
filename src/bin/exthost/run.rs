//! `exthost run`: JSON-lines requests on stdin, answers on stdout.

use std::path::Path;
use std::time::Duration;

use exthost::manager::{ControlError, ServiceManager};
use exthost::router::ToolCall;
use exthost::CallError;
use serde_json::{json, Value};
use std::sync::Arc;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::output::{self, CLOSED_OUTPUT};
use crate::signals::Signals;

/// A failed request: its kind and message, and for a tool call whether
/// retrying cannot repeat an effect.
struct Failure {
    kind: &'static str,
    retry_safe: Option<bool>,
    message: String,
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Failure {
            kind: e.kind(),
            retry_safe: Some(e.is_retry_safe()),
            message: e.to_string(),
        }
    }
}

impl From<ControlError> for Failure {
    fn from(e: ControlError) -> Self {
        let kind = match e {
            ControlError::UnknownService(_) => "unknown_service",
            _ => "unavailable",
        };
        Failure {
            kind,
            retry_safe: None,
            message: e.to_string(),
        }
    }
}

fn bad_request(message: impl Into<String>) -> Failure {
    Failure {
        kind: "bad_request",
        retry_safe: None,
        message: message.into(),
    }
}

/// Serves JSON lines from the first instant, while the services start.
///
/// Every accepted request gets exactly one answer: at end of input, the
/// requests in flight finish, then everything shuts down; on a termination
/// signal, shutdown begins at once alongside the requests in flight, which
/// get their answers or `unavailable` as their extensions stop. A closed
/// output (the first write that fails, or stdout's reader seen gone) ends
/// the session the same way as a signal, with one log line: no request is
/// taken after it. Exit 0, 1 when reading stdin failed, or 7 when stdout
/// was closed (after the same orderly shutdown).
///
/// At most `limits.requests` requests, holding at most `limits.bytes` bytes
/// of request lines, are read but not yet answered (written out); past
/// that, stdin is not read until answers drain, so memory stays bounded
/// when a client writes faster than it reads. A line over
/// [`MAX_LINE_BYTES`] is skipped as it arrives and answered `bad_request`.
pub(crate) async fn run(path: &Path, limits: PendingLimits, signals: &mut Signals) -> u8 {
    let manager = match super::manager(path) {
        Ok(manager) => manager,
        Err(code) => return code,
    };
    let starting = super::start_in_background(&manager);

    // One writer, so every answer goes out as one whole line; a request's
    // pending permit goes with its answer and is freed once it is written.
    // The first failed write ends the session (`closed`), as does a reader
    // that goes away while nothing is written (the watch).
    let closed = output::Closed::default();
    closed.watch_stdout();
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Pending)>();
    let writer = tokio::spawn({
        let closed = closed.clone();
        async move {
            let mut out = tokio::io::stdout();
            while let Some((mut line, _pending)) = rx.recv().await {
                line.push('\n');
                let written = match out.write_all(line.as_bytes()).await {
                    Ok(()) => out.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    closed.close(Some(&e));
                    return true;
                }
            }
            false
        }
    });

    let pending = Arc::new(Semaphore::new(limits.requests.max(1)));
    let budget = limits.bytes.clamp(1, u32::MAX as usize);
    let pending_bytes = Arc::new(Semaphore::new(budget));
    let mut input = BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut skipping = None;
    let mut read_failed = false;
    let mut inflight = JoinSet::new();
    let stop = loop {
        // No more requests are read while `max_pending` await their answers.
        let permit = tokio::select! {
            biased;
            signal = signals.recv() => break Some(Stop::Signal(signal)),
            () = closed.closed() => break Some(Stop::Closed),
            permit = pending.clone().acquire_owned() => permit.expect("never closed"),
        };
        let read = tokio::select! {
            biased;
            signal = signals.recv() => break Some(Stop::Signal(signal)),
            () = closed.closed() => break Some(Stop::Closed),
            read = read_line_capped(&mut input, &mut line, MAX_LINE_BYTES, &mut skipping) => read,
        };
        match read {
            // End of input: finish what is in flight, then stop.
            Ok(Line::Eof) => break None,
            Ok(Line::TooLong(len)) => {
                let answer = answer(
                    Value::Null,
                    Err(bad_request(format!(
                        "line of {len} bytes exceeds the {MAX_LINE_BYTES}-byte limit"
                    ))),
                );
                let _ = tx.send((
                    answer.to_string(),
                    Pending {
                        _request: permit,
                        _bytes: None,
                    },
                ));
            }
            Ok(Line::Read) => {
                // Nor while `max_pending_bytes` of requests await theirs.
                let weight = line.len().clamp(1, budget) as u32;
                let bytes = tokio::select! {
                    biased;
                    signal = signals.recv() => break Some(Stop::Signal(signal)),
                    () = closed.closed() => break Some(Stop::Closed),
                    bytes = pending_bytes.clone().acquire_many_owned(weight) => bytes.expect("never closed"),
                };
                // Bytes that are not UTF-8 get a `bad_request`, like any
                // other unreadable line; the session goes on.
                let text = String::from_utf8_lossy(&line).into_owned();
                let utf8 = std::str::from_utf8(&line).is_ok();
                line.clear();
                if text.trim().is_empty() {
                    continue;
                }
                // No request is taken once its answer could not be read.
                if !closed.is_closed() && output::stdout_closed() {
                    closed.close(None);
                }
                if closed.is_closed() {
                    break Some(Stop::Closed);
                }
                let (manager, tx) = (manager.clone(), tx.clone());
                inflight.spawn(async move {
                    let answer = if utf8 {
                        handle(&manager, &text).await
                    } else {
                        not_utf8(&text)
                    };
                    let _ = tx.send((
                        answer.to_string(),
                        Pending {
                            _request: permit,
                            _bytes: Some(bytes),
                        },
                    ));
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "reading stdin failed; shutting down");
                read_failed = true;
                break None;
            }
        }
        while inflight.try_join_next().is_some() {}
    };
    let drain = async { while inflight.join_next().await.is_some() {} };
    tokio::pin!(drain);
    let stop = match stop {
        Some(stop) => Some(stop),
        // End of input: the requests in flight finish first, unless a
        // signal or a closed output asks for the shutdown to begin now.
        None => tokio::select! {
            biased;
            signal = signals.recv() => Some(Stop::Signal(signal)),
            () = closed.closed() => Some(Stop::Closed),
            () = &mut drain => None,
        },
    };
    match &stop {
        None => {
            manager.shutdown_all().await;
        }
        Some(stop) => {
            // New calls fail at once as shutting down; calls in flight get
            // their answers while their extensions finish, or `unavailable`.
            if let Stop::Signal(signal) = stop {
                tracing::info!(signal, "signal received; shutting down");
            }
            tokio::join!(manager.shutdown_all(), drain);
        }
    }
    drop(tx);
    let write_failed = writer.await.unwrap_or(false);
    let _ = starting.await;
    // A reader that leaves after every answer was written ends nothing.
    if matches!(stop, Some(Stop::Closed)) || write_failed {
        CLOSED_OUTPUT
    } else {
        u8::from(read_failed)
    }
}

/// Why the session ends before its input does.
enum Stop {
    /// A termination signal, by name.
    Signal(&'static str),
    /// Standard output cannot be written.
    Closed,
}

/// The longest request line read: 32 MiB (a request's frame is at most
/// 16 MiB; JSON escaping may double it).
pub(crate) const MAX_LINE_BYTES: usize = 32 * 1024 * 1024;

/// How much `run` reads ahead of its answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingLimits {
    /// Requests read but not answered.
    pub(crate) requests: usize,
    /// Bytes of such requests' lines.
    pub(crate) bytes: usize,
}

/// A request's share of the pending limits, freed once its answer is
/// written.
struct Pending {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// How a capped line read ended.
enum Line {
    /// End of input.
    Eof,
    /// A line (its newline included, if it had one) is in the buffer.
    Read,
    /// A line over the cap was skipped; its length in bytes.
    TooLong(usize),
}

/// Reads one line into `buf`, at most `cap` bytes: a longer line is skipped
/// as it arrives (never stored), with `skipping` keeping count. Cancel-safe:
/// what was read stays in `buf` and `skipping` for the next call.
async fn read_line_capped<R: AsyncBufRead + Unpin>(
    input: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
    skipping: &mut Option<usize>,
) -> std::io::Result<Line> {
    loop {
        let available = input.fill_buf().await?;
        if available.is_empty() {
            return Ok(match skipping.take() {
                Some(len) => Line::TooLong(len),
                None if buf.is_empty() => Line::Eof,
                None => Line::Read,
            });
        }
        let (n, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        match skipping {
            Some(len) => *len += n,
            None if buf.len() + n > cap => {
                *skipping = Some(buf.len() + n);
                buf.clear();
            }
            None => buf.extend_from_slice(&available[..n]),
        }
        input.consume(n);
        if done {
            return Ok(match skipping.take() {
                Some(len) => Line::TooLong(len),
                None => Line::Read,
            });
        }
    }
}

/// The answer to a line that is not UTF-8: `bad_request`, with the line's
/// `id` when a lossy reading still shows one.
fn not_utf8(lossy: &str) -> Value {
    let id = serde_json::from_str::<Value>(lossy)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    answer(id, Err(bad_request("the line is not valid UTF-8")))
}

/// Answers one request line.
async fn handle(manager: &ServiceManager, line: &str) -> Value {
    let request: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return answer(Value::Null, Err(bad_request(format!("invalid JSON: {e}")))),
    };
    let Some(obj) = request.as_object() else {
        return answer(
            Value::Null,
            Err(bad_request("a request must be a JSON object")),
        );
    };
    let id = obj.get("id").cloned().unwrap_or(Value::Null);
    match dispatch(manager, obj).await {
        // A tool output that is more than one text block (an MCP server's
        // images, resources or structured content) comes whole in
        // `output`, beside its text in `ok`.
        Ok(Reply::Tool(output)) if output != output.text().as_str() => {
            json!({"id": id, "ok": output.text(), "output": output})
        }
        Ok(Reply::Tool(output)) => answer(id, Ok(Value::String(output.into_text()))),
        Ok(Reply::Value(v)) => answer(id, Ok(v)),
        Err(f) => answer(id, Err(f)),
    }
}

/// What a request answers with.
enum Reply {
    /// A tool's output.
    Tool(exthost::ToolOutput),
    /// Anything else.
    Value(Value),
}

fn answer(id: Value, result: Result<Value, Failure>) -> Value {
    match result {
        Ok(ok) => json!({"id": id, "ok": ok}),
        Err(f) => match f.retry_safe {
            Some(safe) => {
                json!({"id": id, "error": {"kind": f.kind, "message": f.message, "retry_safe": safe}})
            }
            None => json!({"id": id, "error": {"kind": f.kind, "message": f.message}}),
        },
    }
}

fn str_field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, Failure> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad_request(format!("`{name}` must be a string"))),
        None => Err(bad_request(format!("missing `{name}`"))),
    }
}

async fn dispatch(
    manager: &ServiceManager,
    obj: &serde_json::Map<String, Value>,
) -> Result<Reply, Failure> {
    if let Some(op) = obj.get("op") {
        return op_reply(manager, obj, op).await.map(Reply::Value);
    }
    call_reply(manager, obj).await.map(Reply::Tool)
}

async fn op_reply(
    manager: &ServiceManager,
    obj: &serde_json::Map<String, Value>,
    op: &Value,
) -> Result<Value, Failure> {
    {
        match op.as_str() {
            Some("tools") => Ok(super::tools_json(manager)),
            Some("status") => {
                Ok(serde_json::to_value(manager.statuses()).expect("statuses always serialize"))
            }
            Some("query") => {
                let service = str_field(obj, "service")?;
                let query = str_field(obj, "query")?;
                Ok(Value::String(manager.query(service, query).await?))
            }
            Some("schema") => {
                let service = str_field(obj, "service")?;
                Ok(Value::String(manager.schema(service).await?))
            }
            Some(name @ ("restart" | "stop" | "start")) => {
                let service = str_field(obj, "service")?;
                let status = match name {
                    "restart" => manager.restart(service).await?,
                    "stop" => manager.stop_service(service).await?,
                    _ => manager.start_service(service).await?,
                };
                Ok(serde_json::to_value(status).expect("a status always serializes"))
            }
            _ => Err(bad_request(format!(
                "unknown op {op}; expected tools, status, query, schema, restart, stop or start"
            ))),
        }
    }
}

async fn call_reply(
    manager: &ServiceManager,
    obj: &serde_json::Map<String, Value>,
) -> Result<exthost::ToolOutput, Failure> {
    let tool = str_field(obj, "tool")?;
    let args = match obj.get("args") {
        None => "{}".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let agent = match obj.get("agent") {
        None => "exthost",
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad_request("`agent` must be a string")),
    };
    let task_id = match obj.get("task_id") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad_request("`task_id` must be a non-negative integer"))?,
        ),
    };
    let timeout = match obj.get("timeout_ms") {
        None | Some(Value::Null) => None,
        Some(v) => Some(Duration::from_millis(v.as_u64().ok_or_else(|| {
            bad_request("`timeout_ms` must be a non-negative integer")
        })?)),
    };
    let call = ToolCall::new(tool, args).agent(agent).task_id(task_id);
    let fut = manager.router().oneshot(call);
    let result = match timeout {
        None => fut.await,
        Some(d) => tokio::time::timeout(d, fut).await.unwrap_or_else(|_| {
            Err(CallError::Timeout {
                service: owner(manager, tool),
                after: d,
            })
        }),
    };
    Ok(result?)
}

fn owner(manager: &ServiceManager, tool: &str) -> String {
    manager
        .tools()
        .into_iter()
        .find(|t| t.tool.name == tool)
        .map(|t| t.service)
        .unwrap_or_default()
}

//! `exthost run`: JSON-lines requests on stdin, answers on stdout.

use std::path::Path;
use std::time::Duration;

use exthost::manager::{ControlError, ServiceManager};
use exthost::router::ToolCall;
use exthost::CallError;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::signals::Signals;

/// A failed request: its kind and message.
struct Failure {
    kind: &'static str,
    message: String,
}

impl From<CallError> for Failure {
    fn from(e: CallError) -> Self {
        Failure {
            kind: e.kind(),
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
            message: e.to_string(),
        }
    }
}

fn bad_request(message: impl Into<String>) -> Failure {
    Failure {
        kind: "bad_request",
        message: message.into(),
    }
}

/// Serves JSON lines from the first instant, while the services start.
///
/// Every accepted request gets exactly one answer: at end of input, the
/// requests in flight finish, then everything shuts down; on a termination
/// signal, shutdown begins at once alongside the requests in flight, which
/// get their answers or `unavailable` as their extensions stop. Exit 0.
pub(crate) async fn run(path: &Path, signals: &mut Signals) -> u8 {
    let manager = match super::manager(path) {
        Ok(manager) => manager,
        Err(code) => return code,
    };
    let starting = super::start_in_background(&manager);

    // One writer, so every answer goes out as one whole line.
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(mut line) = rx.recv().await {
            line.push('\n');
            if out.write_all(line.as_bytes()).await.is_err() || out.flush().await.is_err() {
                break;
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut inflight = JoinSet::new();
    let signal = loop {
        tokio::select! {
            biased;
            signal = signals.recv() => break Some(signal),
            line = lines.next_line() => match line {
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => {
                    let (manager, tx) = (manager.clone(), tx.clone());
                    inflight.spawn(async move {
                        let answer = handle(&manager, &line).await;
                        let _ = tx.send(answer.to_string());
                    });
                }
                // End of input: finish what is in flight, then stop.
                Ok(None) => break None,
                Err(e) => {
                    tracing::error!(error = %e, "reading stdin failed");
                    break None;
                }
            },
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
        }
    };
    let drain = async { while inflight.join_next().await.is_some() {} };
    tokio::pin!(drain);
    let signal = match signal {
        Some(signal) => Some(signal),
        // End of input: the requests in flight finish first, unless a
        // signal asks for the shutdown to begin now.
        None => tokio::select! {
            biased;
            signal = signals.recv() => Some(signal),
            () = &mut drain => None,
        },
    };
    match signal {
        None => {
            manager.shutdown_all().await;
        }
        Some(signal) => {
            // New calls fail at once as shutting down; calls in flight get
            // their answers while their extensions finish, or `unavailable`.
            tracing::info!(signal, "signal received; shutting down");
            tokio::join!(manager.shutdown_all(), drain);
        }
    }
    drop(tx);
    let _ = writer.await;
    let _ = starting.await;
    0
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
    let result = dispatch(manager, obj).await;
    answer(id, result)
}

fn answer(id: Value, result: Result<Value, Failure>) -> Value {
    match result {
        Ok(ok) => json!({"id": id, "ok": ok}),
        Err(f) => json!({"id": id, "error": {"kind": f.kind, "message": f.message}}),
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
) -> Result<Value, Failure> {
    if let Some(op) = obj.get("op") {
        return match op.as_str() {
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
        };
    }
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
    Ok(Value::String(result?))
}

fn owner(manager: &ServiceManager, tool: &str) -> String {
    manager
        .tools()
        .into_iter()
        .find(|t| t.tool.name == tool)
        .map(|t| t.service)
        .unwrap_or_default()
}

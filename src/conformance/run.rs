//! The checks that talk to the extension, shared by programs and streams.

use std::time::Duration;

use serde_json::Value;
use tower::ServiceExt;

use super::check::Check;
use super::report::Recorder;
use crate::client::{Connection, ConnectionError};
use crate::handshake::{self, tool_mismatches, Ready};
use crate::proto::{ext_response::Msg, ExtRequest, ExtResponse, ToolDef};
use crate::registry::is_portable_tool_name;

/// The name of the tool `unknown_tool` calls.
const NO_SUCH_TOOL: &str = "exthost_check_no_such_tool";

/// Runs every check from `hello` through `correlation_ids` over `conn`,
/// each request under `timeout`. Returns `false` if the checks had to stop
/// early; every check left, `shutdown` included, is then recorded as not
/// run.
pub(super) async fn protocol(
    rec: &mut Recorder,
    conn: &Connection,
    config: &Value,
    timeout: Duration,
) -> bool {
    let mut svc = conn.clone();
    let ready = match handshake::hello(&mut svc, timeout).await {
        Ok(ready) => ready,
        Err(e) => {
            rec.record(Check::Hello, Err(e.to_string()));
            rec.skip_rest("no `ready`");
            return false;
        }
    };
    rec.record(Check::Hello, Ok(()));
    rec.record(
        Check::Version,
        ready.check_version().map_err(|e| e.to_string()),
    );
    let configured = handshake::configure(&mut svc, config, timeout).await;
    rec.record(Check::Configure, configured.map_err(|e| e.to_string()));
    match handshake::register_tools(&mut svc, timeout).await {
        Ok(defs) => {
            rec.record(Check::RegisterTools, Ok(()));
            tool_checks(rec, &ready, &defs);
        }
        Err(e) => {
            rec.record(Check::RegisterTools, Err(e.to_string()));
            for check in [Check::ToolsMatch, Check::Schemas, Check::ToolNames] {
                rec.skip(check, "no tool schemas");
            }
        }
    }

    let schema = match request(conn, ExtRequest::get_schema(), timeout).await {
        Ok(ExtResponse {
            msg: Some(Msg::SchemaResult(s)),
            ..
        }) => serde_json::from_str::<Value>(&s.schema)
            .map(|_| ())
            .map_err(|e| format!("the schema is not JSON: {e}")),
        Ok(other) => Err(format!("got {}", other.kind_name())),
        Err(e) => Err(e),
    };
    rec.record(Check::GetSchema, schema);

    let query = if ready.has_query() {
        request(conn, ExtRequest::service_query("exthost check"), timeout)
            .await
            .map(|_| ())
    } else {
        Ok(())
    };
    rec.record(Check::Query, query);

    let call = conn
        .clone()
        .oneshot(ExtRequest::tool_call(NO_SUCH_TOOL, "{}"));
    let unknown = match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(format!("the connection failed: {e}")),
        Ok(Ok(r)) if r.error_message().is_some() => Ok(()),
        Ok(Ok(r)) => Err(format!(
            "answered a call of `{NO_SUCH_TOOL}` with `{}` instead of an error",
            r.kind_name()
        )),
    };
    rec.record(Check::UnknownTool, unknown);

    rec.record(
        Check::CorrelationIds,
        if conn.echoes_correlation_ids() {
            Ok(())
        } else {
            Err(
                "answers carry no correlation_id (field 1000): an answer out of \
                 place cannot be detected when requests are pipelined"
                    .to_owned(),
            )
        },
    );
    true
}

/// Sends `shutdown`, which gets no answer; waits at most `timeout` for it
/// to be sent.
pub(super) async fn send_shutdown(conn: &Connection, timeout: Duration) {
    let send = conn.shutdown();
    let _ = tokio::time::timeout(timeout, send).await;
}

/// After `shutdown`, whether the extension closed the connection within
/// `timeout`: a request sent now must find it closed.
pub(super) async fn closed_after_shutdown(
    conn: &Connection,
    timeout: Duration,
) -> Result<(), String> {
    let probe = conn.clone().oneshot(ExtRequest::get_schema());
    match tokio::time::timeout(timeout, probe).await {
        Err(_) => Err(format!(
            "the connection is still open {timeout:?} after shutdown"
        )),
        Ok(Err(ConnectionError::Closed)) => Ok(()),
        Ok(Err(e)) => Err(format!("after shutdown: {e}")),
        Ok(Ok(resp)) => Err(format!(
            "still answering after shutdown (a `{}`)",
            resp.kind_name()
        )),
    }
}

/// `tools_match`, `schemas` and `tool_names`, on the schemas as sent.
fn tool_checks(rec: &mut Recorder, ready: &Ready, defs: &[ToolDef]) {
    let mismatches = tool_mismatches(ready, defs);
    rec.record(
        Check::ToolsMatch,
        joined(mismatches.iter().map(ToString::to_string)),
    );
    rec.record(
        Check::Schemas,
        joined(defs.iter().filter_map(|t| {
            let problem = crate::Tool::from_def_checked(t.clone()).err()?.problem;
            Some(format!("`{}`: {problem}", t.name))
        })),
    );
    let mut seen = std::collections::HashSet::new();
    rec.record(
        Check::ToolNames,
        joined(defs.iter().filter_map(|t| {
            if !seen.insert(t.name.as_str()) {
                Some(format!(
                    "`{}` is declared twice (the host leaves out every definition)",
                    t.name
                ))
            } else if !is_portable_tool_name(&t.name) {
                Some(format!("`{}` does not fit ^[a-zA-Z0-9_-]{{1,64}}$", t.name))
            } else if t.description.trim().is_empty() {
                Some(format!("`{}` has no description", t.name))
            } else {
                None
            }
        })),
    );
}

/// A pass if there are no problems, else all of them.
fn joined(problems: impl Iterator<Item = String>) -> Result<(), String> {
    let problems: Vec<String> = problems.collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Sends `req` and waits up to `timeout` for an answer that is not an
/// `error`.
async fn request(
    conn: &Connection,
    req: ExtRequest,
    timeout: Duration,
) -> Result<ExtResponse, String> {
    match tokio::time::timeout(timeout, conn.clone().oneshot(req)).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(resp)) => match resp.error_message() {
            Some(m) => Err(format!("answered with an error: {m}")),
            None => Ok(resp),
        },
    }
}

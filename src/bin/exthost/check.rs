//! `exthost check`: a conformance check for extension authors.

use std::collections::BTreeSet;
use std::time::Duration;

use exthost::client::Connection;
use exthost::connector::wait_for_socket;
use exthost::handshake::version_compatible;
use exthost::process::{self, ProcessHandle};
use exthost::proto::{
    capability::Cap, ext_response::Msg, ExtRequest, ExtResponse, PROTOCOL_VERSION,
};
use exthost::registry::is_portable_tool_name;
use serde_json::Value;
use tower::ServiceExt;

/// The checks, in the order they run.
const CHECKS: &[&str] = &[
    "socket",
    "hello",
    "version",
    "configure",
    "register_tools",
    "tools_match",
    "schemas",
    "tool_names",
    "get_schema",
    "query",
    "unknown_tool",
    "correlation_ids",
    "shutdown",
];

struct Report {
    passed: usize,
    run: Vec<&'static str>,
}

impl Report {
    fn record(&mut self, name: &'static str, result: Result<(), String>) {
        self.run.push(name);
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("PASS {name}");
            }
            Err(reason) => println!("FAIL {name}: {reason}"),
        }
    }

    /// Fails every check not run yet.
    fn skip_rest(&mut self, why: &str) {
        for name in CHECKS {
            if !self.run.contains(name) {
                self.record(name, Err(format!("not run: {why}")));
            }
        }
    }
}

pub(crate) async fn check(config_json: &str, timeout: Duration, program: &[String]) -> u8 {
    let config: Value = match serde_json::from_str(config_json) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("exthost: --config-json is not JSON: {e}");
            return 1;
        }
    };
    let dir = std::env::temp_dir().join(format!("exthost-check-{}", std::process::id()));
    if let Err(e) = process::prepare_private_dir(&dir) {
        eprintln!("exthost: cannot create {}: {e}", dir.display());
        return 1;
    }
    let socket = dir.join("ext.sock");
    let log = dir.join("ext.log");
    let mut cmd = tokio::process::Command::new(&program[0]);
    cmd.args(&program[1..])
        .arg("serve")
        .arg("--socket")
        .arg(&socket);
    let mut report = Report {
        passed: 0,
        run: Vec::new(),
    };
    match process::spawn_command("check", cmd, Some(socket.clone()), &log) {
        Ok(proc) => {
            run_checks(&mut report, &proc, &config, timeout, &socket).await;
            if proc.exit_status().is_none() {
                proc.stop(None, Duration::ZERO).await;
            }
            if report.passed < CHECKS.len() {
                let tail = proc.log_tail(10);
                if !tail.is_empty() {
                    eprintln!("last lines of the extension's output:\n{tail}");
                }
            }
        }
        Err(e) => {
            report.record("socket", Err(e.to_string()));
            report.skip_rest("the program did not start");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{}/{} checks passed", report.passed, CHECKS.len());
    u8::from(report.passed != CHECKS.len())
}

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

async fn run_checks(
    report: &mut Report,
    proc: &ProcessHandle,
    config: &Value,
    timeout: Duration,
    socket: &std::path::Path,
) {
    let stream = match wait_for_socket("check", proc, timeout).await {
        Ok(s) => s,
        Err(e) => {
            report.record("socket", Err(e.to_string()));
            return report.skip_rest("no connection");
        }
    };
    report.record("socket", Ok(()));
    let conn = Connection::new(stream);

    let ready = match request(&conn, ExtRequest::hello(PROTOCOL_VERSION), timeout).await {
        Ok(ExtResponse {
            msg: Some(Msg::Ready(r)),
            ..
        }) => r,
        Ok(other) => {
            report.record(
                "hello",
                Err(format!("expected ready, got {}", other.kind_name())),
            );
            return report.skip_rest("no ready");
        }
        Err(e) => {
            report.record("hello", Err(e));
            return report.skip_rest("no ready");
        }
    };
    report.record("hello", Ok(()));
    report.record(
        "version",
        if version_compatible(&ready.version) {
            Ok(())
        } else {
            Err(format!(
                "extension speaks {:?}, host speaks {PROTOCOL_VERSION}",
                ready.version
            ))
        },
    );

    let configured = request(&conn, ExtRequest::configure(config.to_string()), timeout).await;
    report.record("configure", configured.map(|_| ()));

    let schemas = match request(&conn, ExtRequest::register_tools(), timeout).await {
        Ok(ExtResponse {
            msg: Some(Msg::ToolSchemas(s)),
            ..
        }) => {
            report.record("register_tools", Ok(()));
            Some(s.tools)
        }
        Ok(other) => {
            report.record("register_tools", Err(format!("got {}", other.kind_name())));
            None
        }
        Err(e) => {
            report.record("register_tools", Err(e));
            None
        }
    };
    let declared: BTreeSet<&str> = ready
        .capabilities
        .iter()
        .flat_map(|c| match &c.cap {
            Some(Cap::Tools(t)) => t.names.as_slice(),
            _ => &[],
        })
        .map(String::as_str)
        .collect();
    match &schemas {
        None => {
            for name in ["tools_match", "schemas", "tool_names"] {
                report.record(name, Err("not run: no tool schemas".into()));
            }
        }
        Some(tools) => {
            let sent: BTreeSet<&str> = tools.iter().map(|t| t.name.as_str()).collect();
            report.record(
                "tools_match",
                if sent == declared {
                    Ok(())
                } else {
                    Err(format!(
                        "capabilities declare {declared:?} but schemas name {sent:?}"
                    ))
                },
            );
            let bad: Vec<String> = tools
                .iter()
                .filter_map(|t| {
                    let problem = match serde_json::from_slice::<Value>(&t.parameters) {
                        Err(e) => format!("not JSON: {e}"),
                        Ok(v) => schema_problem(&v)?,
                    };
                    Some(format!("`{}`: {problem}", t.name))
                })
                .collect();
            report.record(
                "schemas",
                if bad.is_empty() {
                    Ok(())
                } else {
                    Err(bad.join("; "))
                },
            );
            let bad: Vec<String> = tools
                .iter()
                .filter_map(|t| {
                    if !is_portable_tool_name(&t.name) {
                        Some(format!("`{}` does not fit ^[a-zA-Z0-9_-]{{1,64}}$", t.name))
                    } else if t.description.trim().is_empty() {
                        Some(format!("`{}` has no description", t.name))
                    } else {
                        None
                    }
                })
                .collect();
            report.record(
                "tool_names",
                if bad.is_empty() {
                    Ok(())
                } else {
                    Err(bad.join("; "))
                },
            );
        }
    }

    let schema = match request(&conn, ExtRequest::get_schema(), timeout).await {
        Ok(ExtResponse {
            msg: Some(Msg::SchemaResult(s)),
            ..
        }) => serde_json::from_str::<Value>(&s.schema)
            .map(|_| ())
            .map_err(|e| format!("the schema is not JSON: {e}")),
        Ok(other) => Err(format!("got {}", other.kind_name())),
        Err(e) => Err(e),
    };
    report.record("get_schema", schema);

    let has_query = ready
        .capabilities
        .iter()
        .any(|c| matches!(c.cap, Some(Cap::Query(_))));
    let query = if has_query {
        request(&conn, ExtRequest::service_query("exthost check"), timeout)
            .await
            .map(|_| ())
    } else {
        Ok(())
    };
    report.record("query", query);

    let unknown = match tokio::time::timeout(
        timeout,
        conn.clone()
            .oneshot(ExtRequest::tool_call("exthost_check_no_such_tool", "{}")),
    )
    .await
    {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(format!("the connection failed: {e}")),
        Ok(Ok(r)) if r.error_message().is_some() => Ok(()),
        Ok(Ok(r)) => Err(format!("answered `{}` instead of an error", r.kind_name())),
    };
    report.record("unknown_tool", unknown);

    report.record(
        "correlation_ids",
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

    let _ = tokio::time::timeout(timeout, conn.clone().oneshot(ExtRequest::shutdown())).await;
    let shutdown = match proc.exited_within(timeout).await {
        None => Err(format!("still running {timeout:?} after shutdown")),
        Some(_) if socket.exists() => Err(format!("exited but left {} behind", socket.display())),
        Some(_) => Ok(()),
    };
    report.record("shutdown", shutdown);
}

/// What is wrong with a JSON Schema, structurally, if anything.
fn schema_problem(v: &Value) -> Option<String> {
    const TYPES: &[&str] = &[
        "null", "boolean", "object", "array", "number", "string", "integer",
    ];
    let obj = match v {
        Value::Bool(_) => return None,
        Value::Object(o) => o,
        _ => return Some("a schema must be an object or a boolean".into()),
    };
    match obj.get("type") {
        None => {}
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
        Some(Value::Array(ts))
            if ts
                .iter()
                .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
        Some(t) => return Some(format!("`type` {t} is not a JSON Schema type")),
    }
    if let Some(props) = obj.get("properties") {
        let Some(props) = props.as_object() else {
            return Some("`properties` must be an object".into());
        };
        for (name, sub) in props {
            if let Some(p) = schema_problem(sub) {
                return Some(format!("property `{name}`: {p}"));
            }
        }
    }
    if let Some(req) = obj.get("required") {
        if !req
            .as_array()
            .is_some_and(|r| r.iter().all(Value::is_string))
        {
            return Some("`required` must be an array of strings".into());
        }
    }
    None
}

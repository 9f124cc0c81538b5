//! Tool definitions that LLM APIs accept: a tool whose `parameters` are not
//! an object schema, and a name one extension declares twice, are left out
//! alone with a reason (tool, service, reason) in warnings, status and
//! `exthost tools`, while the rest of the extension works; `exthost check`
//! fails the `schemas` and `tool_names` checks for them.

mod common;
#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};

use common::{call, hostile_bin, manager, temp_dir, WAIT};
use exthost::config::ServiceConfig;
use exthost::registry::LeftOutReason;
use exthost::SchemaProblem;
use run::{exthost, Run};

/// The tools `bad_schemas` declares that must be left out, and why.
const BAD: &[(&str, &str)] = &[
    ("h_string", "top-level `type` is \"string\""),
    ("h_null", "not null"),
    ("h_array", "not an array"),
    ("h_invalid", "not a valid JSON Schema"),
    ("h_not_json", "not JSON"),
    ("h_twice", "declared more than once"),
    ("h_dup", "declared more than once"),
    ("h_bad_ref", "not a valid JSON Schema"),
    ("h_bad_pattern", "not a valid JSON Schema"),
];

/// The tools declared twice: every definition left out.
const TWICE: &[&str] = &["h_twice", "h_dup"];

fn bad_schemas() -> ServiceConfig {
    ServiceConfig::command(hostile_bin()).with_env("HOSTILE_MODE", "bad_schemas")
}

#[tokio::test]
async fn bad_definitions_are_left_out_alone_with_their_reasons_and_the_rest_works() {
    let dir = temp_dir();
    let m = manager(dir.path(), vec![("hostile", bad_schemas())]);
    let report = m.start().await;
    assert_eq!(report.ready, ["hostile"], "{:?}", report.failed);
    // A name declared twice is left out with all its definitions, even
    // when only one of them is a good schema (`h_dup`).
    let tools: Vec<_> = m.tools().into_iter().map(|t| t.tool.name).collect();
    assert_eq!(tools, ["h_call"]);
    let left_out = m.left_out();
    assert_eq!(left_out.len(), BAD.len(), "{left_out:?}");
    for (tool, why) in BAD {
        let l = left_out
            .iter()
            .find(|l| l.tool == *tool)
            .unwrap_or_else(|| panic!("{tool} is not reported: {left_out:?}"));
        assert_eq!(l.service, "hostile");
        assert!(l.to_string().contains(why), "{l}");
    }
    let string = left_out.iter().find(|l| l.tool == "h_string").unwrap();
    assert!(matches!(
        string.reason,
        LeftOutReason::BadSchema(SchemaProblem::NotObjectType(_))
    ));
    for tool in TWICE {
        let twice: Vec<_> = left_out.iter().filter(|l| l.tool == *tool).collect();
        assert_eq!(twice.len(), 1, "{tool} reported more than once: {twice:?}");
        assert_eq!(twice[0].reason, LeftOutReason::DeclaredTwice);
    }
    // The status says the same.
    let status = m.status("hostile").unwrap();
    assert_eq!(status.tools_left_out, left_out);
    // The rest of the extension works; a left-out tool is unknown.
    assert_eq!(call(&m, "h_call", "fine").await.unwrap(), "fine");
    assert!(matches!(
        call(&m, "h_string", "{}").await,
        Err(exthost::CallError::UnknownTool { .. })
    ));
    m.shutdown_all().await;
}

/// A config of the `bad_schemas` extension.
fn config(dir: &Path) -> PathBuf {
    let text = format!(
        "services_dir = \"{0}/services\"\nlogs_dir = \"{0}/logs\"\n\
         [services.hostile]\ncommand = \"{1}\"\nenv = {{ HOSTILE_MODE = \"bad_schemas\" }}\n",
        dir.display(),
        hostile_bin().display(),
    );
    let path = dir.join("exthost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn output(cmd: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("exthost did not finish")
        .unwrap()
}

#[tokio::test]
async fn exthost_tools_lists_only_good_tools_and_tells_why_the_others_are_left_out() {
    let dir = temp_dir();
    let cfg = config(dir.path());
    let out = output(exthost().args(["tools", "--json", "--config"]).arg(&cfg)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let tools: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["h_call"]);
    for (tool, why) in BAD {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("left out:") && l.contains(&format!("\"{tool}\"")))
            .unwrap_or_else(|| panic!("no `left out` line for {tool}:\n{stderr}"));
        assert!(line.contains("`hostile`") && line.contains(why), "{line}");
    }
}

#[tokio::test]
async fn run_status_carries_each_left_out_tool_with_its_reason() {
    let dir = temp_dir();
    let cfg = config(dir.path());
    let mut run = Run::start(&cfg);
    // `tools` answers once the service has settled (a tool call waits).
    let answer = run.ask(r#"{"id": 1, "tool": "h_call", "args": "x"}"#).await;
    assert_eq!(answer["ok"], "x", "{answer}");
    let status = run.ask(r#"{"id": 2, "op": "status"}"#).await;
    let left_out = status["ok"]["hostile"]["tools_left_out"]
        .as_array()
        .unwrap();
    assert_eq!(left_out.len(), BAD.len(), "{status}");
    let string = left_out.iter().find(|l| l["tool"] == "h_string").unwrap();
    assert_eq!(string["service"], "hostile");
    assert_eq!(string["reason"], "bad_schema");
    assert!(
        string["message"].as_str().unwrap().contains("\"string\""),
        "{string}"
    );
    for tool in TWICE {
        let twice = left_out.iter().find(|l| l["tool"] == *tool).unwrap();
        assert_eq!(twice["reason"], "declared_twice", "{twice}");
    }
    run.finish().await;
}

#[tokio::test]
async fn exthost_check_fails_schemas_and_tool_names_for_them() {
    let hostile = hostile_bin();
    let out = output(
        exthost()
            .args(["check", "--", "/usr/bin/env", "HOSTILE_MODE=bad_schemas"])
            .arg(&hostile),
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = |check: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!(" {check}")))
            .unwrap_or_else(|| panic!("no {check} line:\n{stdout}"))
            .to_owned()
    };
    let schemas = line("schemas");
    assert!(schemas.starts_with("FAIL schemas:"), "{stdout}");
    for tool in [
        "h_string",
        "h_null",
        "h_array",
        "h_invalid",
        "h_not_json",
        "h_bad_ref",
        "h_bad_pattern",
    ] {
        assert!(schemas.contains(&format!("`{tool}`")), "{schemas}");
    }
    assert!(!schemas.contains("`h_call`"), "{schemas}");
    let names = line("tool_names");
    assert!(names.starts_with("FAIL tool_names:"), "{stdout}");
    for tool in TWICE {
        assert!(
            names.contains(&format!(
                "`{tool}` is declared twice (the host leaves out every definition)"
            )),
            "{names}"
        );
    }
}

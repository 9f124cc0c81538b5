//! The `exthost` command, run as a real binary against the mock extension.

mod common;
#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{alive, gone_within, mock_bin, temp_dir, Gate, WAIT};
use run::{exthost, Run};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A config with the given `[services.<name>]` bodies, in `dir`.
fn config(dir: &Path, services: &[(&str, &str)]) -> PathBuf {
    let mut text = format!(
        "services_dir = \"{0}/services\"\nlogs_dir = \"{0}/logs\"\n",
        dir.display()
    );
    for (name, body) in services {
        text += &format!(
            "[services.{name}]\ncommand = \"{}\"\n{body}\n",
            mock_bin().display()
        );
    }
    let path = dir.join("exthost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// alpha (`a_` tools, with `a_wait` held at `gate` if given) and beta
/// (`b_` tools, restarted on failure).
fn two_mocks(dir: &Path, gate: Option<&Gate>) -> PathBuf {
    let gate = gate.map_or(String::new(), |g| {
        format!(", MOCK_NOTIFY_SOCKET = \"{}\"", g.path())
    });
    config(
        dir,
        &[
            (
                "alpha",
                &format!(
                    "env = {{ MOCK_PREFIX = \"a_\", MOCK_SERVICE = \"alpha\"{gate} }}\ncall_timeout = \"5s\""
                ),
            ),
            (
                "beta",
                "env = { MOCK_PREFIX = \"b_\", MOCK_SERVICE = \"beta\" }\nrestart = \"on_failure\"",
            ),
        ],
    )
}

async fn output(cmd: &mut tokio::process::Command) -> Output {
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("exthost did not finish")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn tools_prints_the_table_and_json() {
    let dir = temp_dir();
    let cfg = two_mocks(dir.path(), None);
    let out = output(exthost().arg("tools").arg("--config").arg(&cfg)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("SERVICE"), "{text}");
    assert!(
        text.contains("alpha    a_echo   Returns its arguments unchanged"),
        "{text}"
    );
    assert!(text.contains("beta     b_pid"), "{text}");

    let out = output(exthost().args(["tools", "--json", "--config"]).arg(&cfg)).await;
    assert_eq!(out.status.code(), Some(0));
    let tools: Value = serde_json::from_slice(&out.stdout).unwrap();
    let tools = tools.as_array().unwrap();
    assert_eq!(tools.len(), 10);
    assert_eq!(
        tools[0],
        json!({"service": "alpha", "name": "a_echo", "description": "Returns its arguments unchanged", "parameters": {"type": "object"}})
    );
}

#[tokio::test]
async fn tools_exits_1_when_an_extension_fails_but_prints_the_ready_ones() {
    let dir = temp_dir();
    let cfg = config(
        dir.path(),
        &[
            ("good", "env = { MOCK_PREFIX = \"g_\" }"),
            ("bad", "env = { MOCK_MODE = \"exit\" }"),
        ],
    );
    let out = output(exthost().arg("tools").arg("--config").arg(&cfg)).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("g_echo"));
    let err = stderr(&out);
    assert!(
        err.contains("failed: bad: service `bad` exited before it was ready"),
        "{err}"
    );
}

#[tokio::test]
async fn call_exit_codes_tell_the_kind_of_outcome() {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    let alpha = format!(
        "env = {{ MOCK_PREFIX = \"a_\", MOCK_NOTIFY_SOCKET = \"{}\" }}",
        gate.path()
    );
    let cfg = config(
        dir.path(),
        &[
            ("alpha", &alpha),
            ("wrong", "env = { MOCK_MODE = \"wrong_kind\" }"),
        ],
    );
    let call = |args: &[&str]| {
        let mut cmd = exthost();
        cmd.arg("call").arg("--config").arg(&cfg).args(args);
        cmd
    };
    let out = output(&mut call(&[
        "a_echo",
        r#"{"x":1}"#,
        "--agent",
        "me",
        "--task-id",
        "7",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "{\"x\":1}\n");
    let out = output(&mut call(&["a_echo"])).await;
    assert_eq!(stdout(&out), "{}\n", "ARGS defaults to {{}}");

    // The held call cannot be answered before the error is printed.
    let mut timing_out = call(&["a_wait", "held", "--timeout", "200ms"]);
    let mut timing_out = timing_out
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = gate.arrival().await;
    let mut err_lines = BufReader::new(timing_out.stderr.take().unwrap()).lines();
    let mut err = String::new();
    while !err.contains("timeout error") {
        let line = tokio::time::timeout(WAIT, err_lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no timeout error printed: {err}"))
            .unwrap()
            .unwrap_or_else(|| panic!("no timeout error printed: {err}"));
        err += &line;
    }
    // Released, the late answer lets the extension shut down at once.
    held.release();
    let out = tokio::time::timeout(WAIT, timing_out.wait_with_output())
        .await
        .expect("exthost did not finish")
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(stdout(&out).is_empty());

    for (args, code, kind) in [
        (&["nope"][..], 2, "unknown_tool"),
        (&["a_fail"][..], 4, "extension"),
        (&["a_crash"][..], 5, "unavailable"),
        (&["w_echo"][..], 6, "protocol"),
    ] {
        let out = output(&mut call(args)).await;
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
        assert!(
            stderr(&out).contains(&format!("{kind} error")),
            "{}",
            stderr(&out)
        );
    }

    let out = output(exthost().args(["call", "--config", "/nonexistent.toml", "x"])).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot read /nonexistent.toml"));

    // Usage errors are 1 too, never 2 (which means "unknown tool").
    let out = output(exthost().args(["call", "--config"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = output(exthost().args(["call", "--help"])).await;
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test]
async fn run_serves_json_lines_concurrently_and_survives_bad_lines() {
    let dir = temp_dir();
    let gate = Gate::bind(dir.path());
    let mut run = Run::start(&two_mocks(dir.path(), Some(&gate)));

    // A call held until released, then a fast one on the other extension:
    // the fast answer comes first.
    run.send(r#"{"id": 1, "tool": "a_wait", "args": "held"}"#)
        .await;
    run.send(r#"{"id": "fast", "tool": "b_echo", "args": "raw text"}"#)
        .await;
    assert_eq!(run.recv().await, json!({"id": "fast", "ok": "raw text"}));
    gate.arrival().await.release();
    assert_eq!(run.recv().await, json!({"id": 1, "ok": "released held"}));

    let bad = run.ask("this is not json").await;
    assert_eq!(bad["id"], Value::Null);
    assert_eq!(bad["error"]["kind"], "bad_request");
    assert!(bad["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("invalid JSON"));
    let missing = run.ask(r#"{"id": 2}"#).await;
    assert_eq!(missing["error"]["kind"], "bad_request");
    assert_eq!(missing["id"], 2);
    let args = run
        .ask(r#"{"id": 3, "tool": "a_echo", "args": {"k": [1, 2]}}"#)
        .await;
    assert_eq!(args, json!({"id": 3, "ok": "{\"k\":[1,2]}"}));
    let unknown = run.ask(r#"{"id": 4, "tool": "zzz"}"#).await;
    assert_eq!(unknown["error"]["kind"], "unknown_tool");
    let timeout = run
        .ask(r#"{"id": 5, "tool": "a_wait", "args": "held", "timeout_ms": 50}"#)
        .await;
    assert_eq!(timeout["error"]["kind"], "timeout");
    // Its late answer frees alpha for the schema below.
    gate.arrival().await.release();

    let tools = run.ask(r#"{"id": 6, "op": "tools"}"#).await;
    assert_eq!(tools["ok"].as_array().unwrap().len(), 11, "with a_wait");
    let query = run
        .ask(r#"{"id": 7, "op": "query", "service": "beta", "query": "q"}"#)
        .await;
    assert_eq!(query["ok"], r#"{"service":"beta","query":"q"}"#);
    let schema = run
        .ask(r#"{"id": 8, "op": "schema", "service": "alpha"}"#)
        .await;
    assert!(schema["ok"].as_str().unwrap().contains("greeting"));
    let nosvc = run
        .ask(r#"{"id": 9, "op": "schema", "service": "zzz"}"#)
        .await;
    assert_eq!(nosvc["error"]["kind"], "unknown_service");

    // End of input: finish, shut down gracefully, exit 0.
    let status = run.ask(r#"{"id": 10, "op": "status"}"#).await;
    let pids: Vec<u32> = ["alpha", "beta"]
        .iter()
        .map(|s| status["ok"][s]["pid"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(status["ok"]["alpha"]["state"], "ready");
    drop(run.stdin.take());
    let code = tokio::time::timeout(WAIT, run.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code.code(), Some(0));
    assert!(pids.iter().all(|p| !alive(*p)));
}

#[tokio::test]
async fn run_reports_a_crash_and_the_restart() {
    let dir = temp_dir();
    let mut run = Run::start_logged(&two_mocks(dir.path(), None));
    let old = run.ask(r#"{"id": 1, "tool": "b_pid"}"#).await["ok"].clone();
    let crash = run.ask(r#"{"id": 2, "tool": "b_crash"}"#).await;
    assert_eq!(crash["error"]["kind"], "unavailable");
    // The restart shows in the logs, then in the status.
    run.logged(&[
        "service status",
        "service=beta",
        "state=ready",
        "restarts=1",
    ])
    .await;
    let status = run.ask(r#"{"id": "s", "op": "status"}"#).await;
    let beta = &status["ok"]["beta"];
    assert!(
        beta["state"] == "ready" && beta["restarts"] == 1,
        "no restart: {status}"
    );
    let new = run.ask(r#"{"id": 3, "tool": "b_pid"}"#).await["ok"].clone();
    assert_ne!(old, new);
    drop(run.stdin.take());
    assert_eq!(run.child.wait().await.unwrap().code(), Some(0));
}

#[tokio::test]
async fn run_shuts_down_gracefully_on_sigterm() {
    let dir = temp_dir();
    let mut run = Run::start(&two_mocks(dir.path(), None));
    // Answered once alpha is ready (run serves while services start).
    let pid = run.ask(r#"{"id": 1, "tool": "a_pid"}"#).await;
    let pid: u32 = pid["ok"].as_str().unwrap().parse().unwrap();
    let host = nix::unistd::Pid::from_raw(run.child.id().unwrap() as i32);
    nix::sys::signal::kill(host, nix::sys::signal::Signal::SIGTERM).unwrap();
    let code = tokio::time::timeout(WAIT, run.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code.code(), Some(0));
    assert!(gone_within(pid, WAIT).await);
}

/// The lines of `exthost check` output that are not `PASS` lines or the
/// summary.
fn not_passed(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("PASS ") && !l.contains("required checks passed"))
        .collect()
}

fn check(program: &Path) -> tokio::process::Command {
    let mut cmd = exthost();
    cmd.arg("check").arg("--").arg(program);
    cmd
}

#[tokio::test]
async fn check_passes_the_mock_and_fails_broken_extensions() {
    let out = output(&mut check(&mock_bin())).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("PASS unknown_tool\n"), "{text}");
    assert_eq!(text.lines().count(), 14, "{text}");
    assert_eq!(not_passed(&text), Vec::<&str>::new(), "{text}");
    assert!(
        text.ends_with("\n9/9 required checks passed, 0 warnings\n"),
        "{text}"
    );

    let out = output(
        exthost()
            .args(["check", "--timeout", "2s", "--"])
            .arg(mock_bin())
            .env("MOCK_MODE", "exit"),
    )
    .await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.starts_with("FAIL socket: "), "{text}");
    // Nothing else could run; the recommended checks are warnings.
    assert!(text.contains("\nFAIL hello: not run: "), "{text}");
    assert!(text.contains("\nWARN get_schema: not run: "), "{text}");
    assert!(
        text.ends_with("\n0/9 required checks passed, 4 warnings\n"),
        "{text}"
    );

    let out = output(
        exthost()
            .args(["check", "--timeout", "1s", "--"])
            .arg(mock_bin())
            .env("MOCK_MODE", "stubborn"),
    )
    .await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        matches!(not_passed(&text).as_slice(), [l] if l.starts_with("FAIL shutdown: still running")),
        "{text}"
    );
    assert!(
        text.ends_with("\n8/9 required checks passed, 0 warnings\n"),
        "{text}"
    );
}

#[tokio::test]
async fn check_warns_about_an_extension_that_echoes_no_ids_and_strict_fails_it() {
    let mut cmd = check(&common::hostile_bin());
    let out = output(cmd.env("HOSTILE_MODE", "no_ids")).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        matches!(not_passed(&text).as_slice(), [l] if l.starts_with("WARN correlation_ids: answers carry no correlation_id")),
        "{text}"
    );
    assert!(
        text.ends_with("\n9/9 required checks passed, 1 warnings\n"),
        "{text}"
    );

    let out = output(
        exthost()
            .args(["check", "--strict", "--"])
            .arg(common::hostile_bin())
            .env("HOSTILE_MODE", "no_ids"),
    )
    .await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        matches!(not_passed(&text).as_slice(), [l] if l.starts_with("FAIL correlation_ids: ")),
        "{text}"
    );
}

#[tokio::test]
async fn check_passes_the_reference_extension_with_three_warnings_and_strict_fails_it() {
    let reference = common::example_bin("reference_extension");
    let out = output(&mut check(&reference)).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let warned: Vec<&str> = not_passed(&text)
        .into_iter()
        .map(|l| {
            l.strip_prefix("WARN ")
                .expect("only warnings")
                .split(':')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        warned,
        ["get_schema", "unknown_tool", "correlation_ids"],
        "{text}"
    );
    assert!(
        text.ends_with("\n9/9 required checks passed, 3 warnings\n"),
        "{text}"
    );

    let out = output(exthost().args(["check", "--strict", "--"]).arg(&reference)).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let failed: Vec<&str> = not_passed(&text)
        .into_iter()
        .map(|l| {
            l.strip_prefix("FAIL ")
                .expect("only failures")
                .split(':')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        failed,
        ["get_schema", "unknown_tool", "correlation_ids"],
        "{text}"
    );
}

#[tokio::test]
async fn check_exits_1_when_it_cannot_run() {
    let out = output(
        exthost()
            .args(["check", "--config-json", "{not json", "--"])
            .arg(mock_bin()),
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).is_empty());
    assert!(
        stderr(&out).contains("--config-json is not JSON"),
        "{}",
        stderr(&out)
    );
}

/// `exthost tools` on one mock with no `services_dir`, run in `cwd` with
/// `XDG_RUNTIME_DIR` set to `xdg`.
async fn tools_with_runtime_dir(dir: &Path, cwd: &Path, xdg: &str) -> Output {
    let cfg = dir.join("exthost.toml");
    std::fs::write(
        &cfg,
        format!(
            "logs_dir = \"{}/logs\"\n[services.m]\ncommand = \"{}\"\n",
            dir.display(),
            mock_bin().display()
        ),
    )
    .unwrap();
    output(
        exthost()
            .args(["tools", "--config"])
            .arg(&cfg)
            .current_dir(cwd)
            .env("XDG_RUNTIME_DIR", xdg)
            .env("RUST_LOG", "exthost=debug"),
    )
    .await
}

#[tokio::test]
async fn an_empty_or_relative_xdg_runtime_dir_is_ignored_and_the_choice_logged() {
    for xdg in ["", "relative/run"] {
        let dir = temp_dir();
        let cwd = dir.path().join("cwd");
        std::fs::create_dir(&cwd).unwrap();
        let out = tools_with_runtime_dir(dir.path(), &cwd, xdg).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{err}");
        let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().collect();
        assert!(
            left.is_empty(),
            "XDG_RUNTIME_DIR={xdg:?} put {left:?} in the current folder"
        );
        assert!(
            err.lines().any(|l| l.contains("DEBUG")
                && l.contains("XDG_RUNTIME_DIR")
                && l.contains("ignoring")),
            "{err}"
        );
    }
    // An absolute one is used.
    let dir = temp_dir();
    let xdg = dir.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let out = tools_with_runtime_dir(dir.path(), dir.path(), xdg.to_str().unwrap()).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(xdg.join("exthost/services").is_dir());
}

#[tokio::test]
async fn a_toml_syntax_error_names_the_file_line_column_and_field() {
    let dir = temp_dir();
    let cfg = dir.path().join("broken.toml");
    std::fs::write(&cfg, "[services.search]\ncrate = \"unterminated\n").unwrap();
    let out = output(exthost().args(["tools", "--config"]).arg(&cfg)).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("exthost: {}:2:", cfg.display())),
        "{err}"
    );
    assert!(err.contains("`services.search.crate`"), "{err}");
}

#[tokio::test]
async fn an_xdg_runtime_dir_that_does_not_exist_is_ignored_never_created() {
    let dir = temp_dir();
    let missing = dir.path().join("nonexistent/xdg");
    let out = tools_with_runtime_dir(dir.path(), dir.path(), missing.to_str().unwrap()).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !dir.path().join("nonexistent").exists(),
        "exthost created the missing XDG_RUNTIME_DIR"
    );
    assert!(
        err.lines().any(|l| l.contains("DEBUG")
            && l.contains("XDG_RUNTIME_DIR")
            && l.contains("ignoring")),
        "{err}"
    );
}

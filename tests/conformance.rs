//! `exthost::conformance` from `cargo test`: against the real mock and
//! reference extension binaries, and over in-process streams.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{alive, example_bin, gone_within, join, mock_bin, temp_dir, FakeExt, Gate, WAIT};
use exthost::conformance::{Check, Checker, Level, Outcome, Report};
use exthost::proto::{ext_request::Msg, Capability, ExtResponse, PROTOCOL_VERSION};
use exthost::Tool;
use futures::{SinkExt, StreamExt};

/// Runs `program` through `/bin/sh`, which first writes its pid (the
/// program's, after `exec`) and the socket path it was given to `record`.
fn recorded(checker: Checker, program: &Path, record: &Path) -> (Checker, Vec<String>) {
    let checker = checker.env("CHECK_PROGRAM", program);
    let script = r#"echo "$$ $3" > "$0"; exec "$CHECK_PROGRAM" "$@""#;
    let args = vec![
        "-c".to_owned(),
        script.to_owned(),
        record.display().to_string(),
    ];
    (checker, args)
}

/// The pid and socket path written by [`recorded`].
fn read_record(record: &Path) -> (u32, PathBuf) {
    let text = std::fs::read_to_string(record).expect("the wrapper ran");
    let (pid, socket) = text.trim().split_once(' ').expect("pid and socket");
    (pid.parse().unwrap(), PathBuf::from(socket))
}

/// Every check that did not pass, with its outcome.
fn not_passed(report: &Report) -> Vec<(Check, Outcome)> {
    report
        .iter()
        .filter(|(_, o)| !o.is_pass())
        .map(|(c, o)| (c, o.clone()))
        .collect()
}

#[test]
fn checks_run_in_the_cli_order_with_nine_required() {
    let names: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
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
        ]
    );
    let recommended: Vec<Check> = Check::ALL
        .iter()
        .copied()
        .filter(|c| c.level() == Level::Recommended)
        .collect();
    assert_eq!(
        recommended,
        [
            Check::GetSchema,
            Check::Query,
            Check::UnknownTool,
            Check::CorrelationIds
        ]
    );
}

#[tokio::test]
async fn mock_extension_passes_every_check_and_leaves_nothing_behind() {
    let dir = temp_dir();
    let record = dir.path().join("record");
    let (checker, args) = recorded(Checker::new(), &mock_bin(), &record);
    let report = checker.check_program("/bin/sh", &args).await.unwrap();

    assert!(report.is_conformant(true), "{report}");
    assert_eq!(not_passed(&report), []);
    assert_eq!(report.passed_required(), 9);
    assert_eq!(report.required_total(), 9);
    assert_eq!(report.warnings(), 0);
    assert!(
        report
            .to_string()
            .ends_with("\n9/9 required checks passed, 0 warnings\n"),
        "{report}"
    );

    let (pid, socket) = read_record(&record);
    assert!(!alive(pid), "the extension still runs");
    let folder = socket.parent().unwrap();
    assert!(
        folder.starts_with(std::env::temp_dir()),
        "{}",
        folder.display()
    );
    assert!(!folder.exists(), "{} was left behind", folder.display());
}

#[tokio::test]
async fn reference_extension_passes_the_required_checks_with_three_warnings() {
    let report = Checker::new()
        .check_program(example_bin("reference_extension"), [] as [&str; 0])
        .await
        .unwrap();
    let warned: Vec<Check> = not_passed(&report)
        .into_iter()
        .map(|(c, o)| {
            assert!(matches!(o, Outcome::Warn(_)), "{c}: {o:?}");
            c
        })
        .collect();
    assert_eq!(
        warned,
        [Check::GetSchema, Check::UnknownTool, Check::CorrelationIds],
        "{report}"
    );
    assert_eq!(report.passed_required(), report.required_total());
    assert_eq!(report.warnings(), 3);
    assert!(report.is_conformant(false));
    assert!(!report.is_conformant(true));
    assert!(report
        .to_string()
        .ends_with("\n9/9 required checks passed, 3 warnings\n"));
    assert!(
        report
            .display(true)
            .to_string()
            .contains("\nFAIL unknown_tool: "),
        "{}",
        report.display(true)
    );
}

#[tokio::test]
async fn extension_that_ignores_shutdown_fails_only_shutdown_and_is_still_stopped() {
    let dir = temp_dir();
    let record = dir.path().join("record");
    let checker = Checker::new()
        .timeout(Duration::from_secs(1))
        .env("MOCK_MODE", "stubborn");
    let (checker, args) = recorded(checker, &mock_bin(), &record);
    let report = checker.check_program("/bin/sh", &args).await.unwrap();

    let failed = not_passed(&report);
    assert!(
        matches!(failed.as_slice(), [(Check::Shutdown, Outcome::Fail(r))] if r.starts_with("still running")),
        "{report}"
    );
    assert!(!report.is_conformant(false));
    assert!(
        report.output().contains("staying alive anyway"),
        "{}",
        report.output()
    );

    let (pid, socket) = read_record(&record);
    assert!(!alive(pid), "the extension still runs");
    assert!(!socket.parent().unwrap().exists());
}

#[tokio::test]
async fn program_that_does_not_start_fails_socket_and_nothing_else_runs() {
    let report = Checker::new()
        .check_program("/nonexistent/extension", ["--flag"])
        .await
        .unwrap();
    let mut outcomes = report.iter();
    assert!(matches!(
        outcomes.next(),
        Some((Check::Socket, Outcome::Fail(_)))
    ));
    assert!(outcomes.all(|(_, o)| matches!(o, Outcome::NotRun(_))));
    assert_eq!(report.passed_required(), 0);
    assert!(!report.is_conformant(false));
}

#[tokio::test]
async fn dropping_a_check_half_way_kills_the_program_and_removes_its_folder() {
    let dir = temp_dir();
    let record = dir.path().join("record");
    let gate = Gate::bind(dir.path());
    // The extension accepts the connection, then never answers.
    let checker = Checker::new()
        .timeout(Duration::from_secs(600))
        .env("MOCK_MODE", "hang")
        .env("MOCK_NOTIFY_SOCKET", gate.path());
    let (checker, args) = recorded(checker, &mock_bin(), &record);
    let check = checker.check_program("/bin/sh", &args);

    // Drop the check once the extension has accepted its connection and
    // told us so (while it still runs: the check kills it when dropped).
    let told = tokio::select! {
        report = check => panic!("the check finished: {report:?}"),
        pid = gate.hung() => pid,
    };

    let (pid, socket) = read_record(&record);
    assert_eq!(told, pid);
    assert!(!socket.parent().unwrap().exists(), "the folder is left");
    assert!(gone_within(pid, WAIT).await, "the extension still runs");
}

/// Plays a correct extension over `ext` that echoes correlation ids, then
/// ignores `shutdown` and keeps the connection open until the host closes
/// it.
async fn stays_open_after_shutdown(mut ext: FakeExt) {
    while let Some(req) = ext.next().await {
        let req = req.unwrap();
        let mut resp = match req.msg {
            Some(Msg::Hello(_)) => {
                ExtResponse::ready(PROTOCOL_VERSION, "open", vec![Capability::tools(["echo"])])
            }
            Some(Msg::Configure(_)) => ExtResponse::configured(),
            Some(Msg::RegisterTools(_)) => ExtResponse::tool_schemas(vec![Tool::new(
                "echo",
                "Echoes",
                serde_json::json!({"type": "object"}),
            )
            .to_def()]),
            Some(Msg::GetSchema(_)) => ExtResponse::schema_result("{}"),
            Some(Msg::ToolCall(_)) => ExtResponse::error("unknown tool"),
            Some(Msg::Shutdown(_)) => {
                // Reads, and answers, nothing more until the host closes.
                while ext.next().await.is_some() {}
                return;
            }
            _ => ExtResponse::error("unsupported"),
        };
        resp.correlation_id = req.correlation_id;
        ext.send(resp).await.unwrap();
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn over_a_stream_shutdown_fails_while_the_connection_stays_open() {
    let (io, ext) = common::fake_pair();
    let ext = tokio::spawn(stays_open_after_shutdown(ext));
    let report = Checker::new()
        .timeout(Duration::from_secs(5))
        .check_stream(io)
        .await;
    let failed = not_passed(&report);
    assert!(
        matches!(failed.as_slice(), [(Check::Shutdown, Outcome::Fail(r))] if r.contains("still open")),
        "{report}"
    );
    // The checker has closed its end.
    join(ext).await;
}

#[tokio::test]
async fn over_a_stream_an_exthost_server_extension_passes_every_check() {
    use exthost::server::{Call, Extension};
    let (host_io, ext_io) = tokio::io::duplex(64 * 1024);
    let ext = Extension::new("inproc")
        .tool(Tool::new(
            "echo",
            "Echoes",
            serde_json::json!({"type": "object"}),
        ))
        .query(true);
    let served = tokio::spawn(ext.serve_connection(
        ext_io,
        tower::service_fn(|call: Call| async move {
            match call {
                Call::Tool(t) => Ok::<_, std::convert::Infallible>(t.args),
                _ => Ok(String::new()),
            }
        }),
    ));
    let report = Checker::new()
        .config(serde_json::json!({"k": "v"}))
        .check_stream(host_io)
        .await;
    assert!(report.is_conformant(true), "{report}");
    // The extension's side ended on `shutdown`.
    join(served).await.unwrap();
}

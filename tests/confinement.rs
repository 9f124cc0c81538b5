//! Confinement, with real processes: the pinned binary, the tool filter,
//! the clean environment, resource limits and the Landlock sandbox. Each
//! test fails if its restriction is removed.

mod common;
#[path = "common/run.rs"]
mod run;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{call, manager, manager_with, mock, mock_bin, quick_restarts, temp_dir, wait_until};
use exthost::config::{Limits, RestartPolicy, Sandbox, ServiceConfig, ToolFilter};
use exthost::manager::{DownReason, RestartLimits, ServiceState};
use exthost::process::{binary_sha256, SpawnError};
use exthost::{CallError, StartError};

/// The mock with its confinement tools.
fn confined_mock() -> ServiceConfig {
    mock("").with_env("MOCK_CONFINE", "1")
}

/// The spawn error a start failed with.
fn spawn_error(e: &StartError) -> &SpawnError {
    match e {
        StartError::Spawn(e) => e,
        other => panic!("not a spawn error: {other}"),
    }
}

/// Asserts that one of `status`'s restrictions satisfies `matches`.
#[track_caller]
fn assert_restriction(status: &exthost::manager::ServiceStatus, matches: impl Fn(&str) -> bool) {
    assert!(
        status.restrictions.iter().any(|r| matches(r)),
        "{:?}",
        status.restrictions
    );
}

fn json_arg(name: &str, value: impl serde::Serialize) -> String {
    serde_json::json!({ name: value }).to_string()
}

#[tokio::test]
async fn a_binary_with_another_hash_is_refused_and_nothing_is_spawned() {
    let dir = temp_dir();
    let wrong = "0".repeat(64);
    let m = manager(dir.path(), vec![("pinned", mock("").with_sha256(&wrong))]);
    let report = m.start().await;
    let (name, e) = &report.failed[0];
    assert_eq!(name, "pinned");
    match spawn_error(e) {
        SpawnError::HashMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &binary_sha256(&mock_bin()).unwrap());
        }
        other => panic!("not a hash mismatch: {other}"),
    }
    assert!(e.to_string().contains(&wrong), "{e}");
    // Nothing ran: no pid, no log file, no socket.
    assert_eq!(m.status("pinned").unwrap().pid, None);
    assert!(!dir.path().join("logs/pinned.log").exists());
    assert!(!dir.path().join("services/pinned.sock").exists());
    m.shutdown_all().await;
}

#[tokio::test]
async fn the_right_hash_starts_and_is_listed_in_the_status() {
    let dir = temp_dir();
    let hash = binary_sha256(&mock_bin()).unwrap();
    let m = manager(dir.path(), vec![("pinned", mock("").with_sha256(&hash))]);
    assert!(m.start().await.failed.is_empty());
    let status = m.status("pinned").unwrap();
    assert!(
        status.restrictions.contains(&format!("sha256 {hash}")),
        "{:?}",
        status.restrictions
    );
    // The real binary runs (through its descriptor), with its path as
    // argv[0].
    let pid = status.pid.unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, mock_bin());
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_binary_replaced_on_disk_between_restarts_is_refused_on_the_restart() {
    let dir = temp_dir();
    let bin = dir.path().join("ext");
    std::fs::copy(mock_bin(), &bin).unwrap();
    let hash = binary_sha256(&bin).unwrap();
    let config = ServiceConfig::command(&bin)
        .with_sha256(&hash)
        .with_restart(RestartPolicy::OnFailure);
    let m = manager(dir.path(), vec![("pinned", config)]);
    assert!(m.start().await.failed.is_empty());
    assert_eq!(call(&m, "echo", "first").await.unwrap(), "first");

    // Swapped the way an attacker (or an update) would: a new file renamed
    // over the old one, one byte longer.
    let swapped = dir.path().join("ext.new");
    std::fs::copy(mock_bin(), &swapped).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&swapped)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\0"))
        .unwrap();
    std::fs::rename(&swapped, &bin).unwrap();
    let new_hash = binary_sha256(&bin).unwrap();

    let _ = call(&m, "crash", "{}").await;
    let status = wait_until(&m, "pinned", |s| {
        s.error
            .as_ref()
            .is_some_and(|e| e.to_string().contains("pins"))
    })
    .await;
    assert_ne!(status.state, ServiceState::Ready);
    let text = status.error.unwrap().to_string();
    assert!(text.contains(&hash) && text.contains(&new_hash), "{text}");
    assert_eq!(status.pid, None);
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_binary_written_in_place_while_stopped_is_refused_at_the_next_start() {
    let dir = temp_dir();
    let bin = dir.path().join("ext");
    std::fs::copy(mock_bin(), &bin).unwrap();
    let hash = binary_sha256(&bin).unwrap();
    let m = manager(
        dir.path(),
        vec![("pinned", ServiceConfig::command(&bin).with_sha256(&hash))],
    );
    assert!(m.start().await.failed.is_empty());
    m.stop_service("pinned").await.unwrap();
    // The same inode, one byte more: the remembered hash must not be used.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&bin)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\0"))
        .unwrap();
    let status = m.start_service("pinned").await.unwrap();
    assert_eq!(status.state, ServiceState::Failed);
    assert_eq!(status.pid, None);
    let reason = status.error.unwrap().to_string();
    assert!(reason.contains(&format!("pins {hash}")), "{reason}");
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_pinned_script_is_refused() {
    let dir = temp_dir();
    let script = dir.path().join("ext.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hash = binary_sha256(&script).unwrap();
    let m = manager(
        dir.path(),
        vec![("script", ServiceConfig::command(&script).with_sha256(hash))],
    );
    let report = m.start().await;
    assert!(
        matches!(
            spawn_error(&report.failed[0].1),
            SpawnError::PinnedScript { .. }
        ),
        "{:?}",
        report.failed
    );
    m.shutdown_all().await;
}

#[tokio::test]
async fn hidden_tools_are_unknown_and_never_sent() {
    let dir = temp_dir();
    let calls = dir.path().join("calls");
    let config = mock("")
        .with_env("MOCK_CALLS_FILE", calls.to_str().unwrap())
        .with_tools(ToolFilter::allow(["*"]).deny(["crash", "fa?l"]));
    let m = manager(dir.path(), vec![("filtered", config)]);
    assert!(m.start().await.failed.is_empty());
    let names: Vec<String> = m.tools().into_iter().map(|t| t.tool.name).collect();
    assert!(names.contains(&"echo".to_owned()), "{names:?}");
    assert!(!names.contains(&"crash".to_owned()), "{names:?}");
    assert!(!names.contains(&"fail".to_owned()), "{names:?}");

    for hidden in ["crash", "fail"] {
        let e = call(&m, hidden, "{}").await.unwrap_err();
        assert!(matches!(e, CallError::UnknownTool { .. }), "{e}");
    }
    assert_eq!(call(&m, "echo", "seen").await.unwrap(), "seen");
    // Only the visible call reached the extension.
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "echo\n");
    let status = m.status("filtered").unwrap();
    assert_eq!(status.tools_hidden, 2);
    assert!(
        status
            .restrictions
            .contains(&"tools allow [*] deny [crash, fa?l]".to_owned()),
        "{:?}",
        status.restrictions
    );
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_host_variable_is_absent_with_inherit_env_false_and_present_by_default() {
    // Set once, before any service of this test starts; no other test
    // reads these.
    std::env::set_var("EXTHOST_TEST_FAKE_API_KEY", "sk-fake-123");
    std::env::set_var("EXTHOST_TEST_PASSED", "passed-through");
    let dir = temp_dir();
    let clean = confined_mock()
        .with_prefix("c_")
        .with_clean_env(["EXTHOST_TEST_PASSED"]);
    let inherited = confined_mock().with_prefix("i_");
    let m = manager(dir.path(), vec![("clean", clean), ("inherited", inherited)]);
    assert!(m.start().await.failed.is_empty());
    let getenv = |tool: &'static str, var: &'static str| {
        let m = m.clone();
        async move { call(&m, tool, &json_arg("name", var)).await.unwrap() }
    };
    assert_eq!(
        getenv("i_getenv", "EXTHOST_TEST_FAKE_API_KEY").await,
        "sk-fake-123"
    );
    assert_eq!(
        getenv("c_getenv", "EXTHOST_TEST_FAKE_API_KEY").await,
        "unset"
    );
    assert_eq!(
        getenv("c_getenv", "EXTHOST_TEST_PASSED").await,
        "passed-through"
    );
    // The minimal set and the config's own `env` are there.
    assert_eq!(
        getenv("c_getenv", "PATH").await,
        std::env::var("PATH").unwrap()
    );
    assert_eq!(getenv("c_getenv", "MOCK_SERVICE").await, "clean");
    // Everything the child has is accounted for.
    let pid = m.status("clean").unwrap().pid.unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    for entry in environ.split(|b| *b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        let key = entry.split('=').next().unwrap();
        assert!(
            exthost::process::MINIMAL_ENV.contains(&key)
                || key == "EXTHOST_TEST_PASSED"
                || key.starts_with("MOCK_"),
            "unexpected variable {key}"
        );
    }
    let status = m.status("clean").unwrap();
    assert_restriction(&status, |r| r.starts_with("env: minimal"));
    m.shutdown_all().await;
}

/// The soft and hard values of a `/proc/<pid>/limits` line.
fn limit(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let mut fields = line[name.len()..].split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_childs_proc_limits_show_each_limit() {
    let dir = temp_dir();
    let limits = Limits::default()
        .memory(512 << 20)
        .cpu_time(Duration::from_secs(60))
        .open_files(256)
        .processes(64)
        .file_size(1 << 30);
    let m = manager(dir.path(), vec![("limited", mock("").with_limits(limits))]);
    assert!(m.start().await.failed.is_empty());
    let status = m.status("limited").unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", status.pid.unwrap())).unwrap();
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        limit(&limits, "Max data size"),
        pair("536870912", "536870912")
    );
    assert_eq!(limit(&limits, "Max cpu time"), pair("60", "65"));
    assert_eq!(limit(&limits, "Max open files"), pair("256", "256"));
    assert_eq!(limit(&limits, "Max processes"), pair("64", "64"));
    assert_eq!(
        limit(&limits, "Max file size"),
        pair("1073741824", "1073741824")
    );
    assert_eq!(limit(&limits, "Max core file size"), pair("0", "0"));
    for described in [
        "limit memory 512MiB",
        "limit cpu_time 60s",
        "limit open_files 256",
        "limit processes 64",
        "limit file_size 1GiB",
    ] {
        assert!(
            status.restrictions.contains(&described.to_owned()),
            "{described} not in {:?}",
            status.restrictions
        );
    }
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_tool_allocating_past_memory_dies_by_its_signal_and_the_service_restarts() {
    let dir = temp_dir();
    let config = confined_mock()
        .with_limits(Limits::default().memory(128 << 20))
        .with_restart(RestartPolicy::OnFailure);
    // A backoff long enough to see the crash in the status before the
    // restart replaces it.
    let limits = RestartLimits {
        backoff_base: Duration::from_secs(2),
        ..quick_restarts()
    };
    let m = manager_with(dir.path(), vec![("hungry", config)], limits);
    assert!(m.start().await.failed.is_empty());
    let first = m.status("hungry").unwrap().pid.unwrap();
    assert_eq!(
        call(&m, "alloc", &json_arg("mib", 16)).await.unwrap(),
        "allocated 16 MiB"
    );
    assert!(call(&m, "alloc", &json_arg("mib", 512)).await.is_err());
    let crashed = wait_until(&m, "hungry", |s| {
        matches!(s.error, Some(DownReason::Exited(_)))
    })
    .await;
    let Some(DownReason::Exited(status)) = crashed.error else {
        unreachable!()
    };
    assert_eq!(status.signal(), Some(libc_sigabrt()), "{status}");
    let restarted = wait_until(&m, "hungry", |s| {
        s.state == ServiceState::Ready && s.restarts == 1
    })
    .await;
    assert_ne!(restarted.pid, Some(first));
    m.shutdown_all().await;
}

/// SIGABRT: what Rust's allocation failure ends in.
fn libc_sigabrt() -> i32 {
    nix::sys::signal::Signal::SIGABRT as i32
}

/// A folder `inside` holding `ok.txt` and one `outside` holding
/// `secret.txt`, under `dir`.
fn files(dir: &Path) -> (PathBuf, PathBuf) {
    let inside = dir.join("inside");
    let outside = dir.join("outside");
    std::fs::create_dir(&inside).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(inside.join("ok.txt"), "readable").unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    (inside, outside)
}

#[tokio::test]
async fn a_sandboxed_read_outside_read_is_denied_and_inside_works() {
    let dir = temp_dir();
    let (inside, outside) = files(dir.path());
    let config = confined_mock().with_sandbox(Sandbox::default().read([&inside]).required(true));
    let m = manager(dir.path(), vec![("boxed", config)]);
    assert!(m.start().await.failed.is_empty(), "sandboxed start failed");
    let read = |path: PathBuf| {
        let m = m.clone();
        async move { call(&m, "read_file", &json_arg("path", path)).await }
    };
    assert_eq!(read(inside.join("ok.txt")).await.unwrap(), "readable");
    let denied = read(outside.join("secret.txt")).await.unwrap_err();
    assert!(denied.to_string().contains("Permission denied"), "{denied}");
    // The host itself reads it fine: the sandbox is the child's.
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "secret"
    );
    let status = m.status("boxed").unwrap();
    assert_restriction(&status, |r| r.starts_with("sandbox (Landlock ABI"));
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_sandboxed_tcp_connect_is_refused_with_network_false() {
    let dir = temp_dir();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let open = confined_mock()
        .with_prefix("open_")
        .with_sandbox(Sandbox::default().required(true));
    let closed = confined_mock()
        .with_prefix("closed_")
        .with_sandbox(Sandbox::default().network(false).required(true));
    let m = manager(dir.path(), vec![("open", open), ("closed", closed)]);
    assert!(m.start().await.failed.is_empty());
    let connect = |tool: &'static str| {
        let m = m.clone();
        async move { call(&m, tool, &json_arg("port", port)).await }
    };
    assert_eq!(connect("open_connect").await.unwrap(), "connected");
    let refused = connect("closed_connect").await.unwrap_err();
    assert!(
        refused.to_string().contains("Permission denied"),
        "{refused}"
    );
    let status = m.status("closed").unwrap();
    assert_restriction(&status, |r| r.ends_with("network denied"));
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_required_sandbox_without_landlock_fails_to_start_and_an_optional_one_runs() {
    let dir = temp_dir();
    let no_landlock = |required| {
        let mut sandbox = Sandbox::default().required(required);
        sandbox.simulate_no_landlock = true;
        sandbox
    };
    let m = manager(
        dir.path(),
        vec![
            ("required", mock("r_").with_sandbox(no_landlock(true))),
            ("optional", mock("o_").with_sandbox(no_landlock(false))),
        ],
    );
    let report = m.start().await;
    assert_eq!(report.ready, ["optional"]);
    let (name, e) = &report.failed[0];
    assert_eq!(name, "required");
    match spawn_error(e) {
        SpawnError::Sandbox { problem, .. } => {
            assert!(problem.contains("does not support Landlock"), "{problem}")
        }
        other => panic!("not a sandbox error: {other}"),
    }
    assert_eq!(m.status("required").unwrap().pid, None);
    let optional = m.status("optional").unwrap();
    assert_restriction(&optional, |r| r.starts_with("sandbox not enforced"));
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_stdio_mcp_server_gets_a_clean_environment_and_only_allowed_tools() {
    std::env::set_var("EXTHOST_TEST_MCP_API_KEY", "sk-mcp-456");
    let dir = temp_dir();
    let server = |prefix: &str| {
        ServiceConfig::mcp_command(common::example_bin("mcp_server"), Vec::<String>::new())
            .with_prefix(prefix)
            .with_env("MCP_GETENV", "1")
    };
    let clean = server("c_")
        .with_clean_env(Vec::<String>::new())
        .with_tools(ToolFilter::allow(["getenv", "pid", "crash"]).deny(["crash"]));
    let m = manager(
        dir.path(),
        vec![("clean", clean), ("inherited", server("i_"))],
    );
    let report = m.start().await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let getenv = |tool: &'static str| {
        let m = m.clone();
        async move {
            call(&m, tool, &json_arg("name", "EXTHOST_TEST_MCP_API_KEY"))
                .await
                .unwrap()
        }
    };
    assert_eq!(getenv("i_getenv").await, "sk-mcp-456");
    assert_eq!(getenv("c_getenv").await, "unset");

    let mut names: Vec<String> = m
        .tools()
        .into_iter()
        .filter(|t| t.service == "clean")
        .map(|t| t.tool.name)
        .collect();
    names.sort();
    assert_eq!(names, ["c_getenv", "c_pid"]);
    let pid = call(&m, "c_pid", "{}").await.unwrap();
    let e = call(&m, "c_crash", "{}").await.unwrap_err();
    assert!(matches!(e, CallError::UnknownTool { .. }), "{e}");
    // Not sent: the server did not crash.
    assert_eq!(call(&m, "c_pid", "{}").await.unwrap(), pid);
    assert!(m.status("clean").unwrap().tools_hidden >= 5);
    m.shutdown_all().await;
}

/// The error of a one-service TOML configuration whose body is `body`.
fn config_error(body: &str) -> String {
    let text = format!("[services.search]\ncommand = \"/bin/true\"\n{body}\n");
    match exthost::config::HostConfig::from_toml_str(&text) {
        Ok(_) => panic!("accepted: {body}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_confinement_settings_are_refused_naming_the_service_and_field() {
    for (body, expected) in [
        (
            "sha256 = \"abc\"",
            "service `search`: field `sha256` must be 64 hexadecimal digits",
        ),
        (
            "tools = { allow = [\"web_[\"] }",
            "service `search`: field `tools.allow` has a bad pattern \"web_[\"",
        ),
        (
            "tools = { deny = [\"{a\"] }",
            "service `search`: field `tools.deny` has a bad pattern",
        ),
        (
            "env_pass = [\"HTTPS_PROXY\"]",
            "service `search`: field `env_pass` applies only with `inherit_env = false`",
        ),
        (
            "limits = { memory = \"12 parsecs\" }",
            "services.search.limits.memory",
        ),
        (
            "limits = { cpu_time = \"soon\" }",
            "services.search.limits.cpu_time",
        ),
        (
            "limits = { open_files = 0 }",
            "service `search`: field `limits.open_files` must be at least 1",
        ),
        (
            "[services.search.sandbox]\nread = [\"relative/dir\"]",
            "service `search`: field `sandbox.read` must hold absolute paths",
        ),
        (
            "sandbox = { write = [\"tmp\"] }",
            "service `search`: field `sandbox.write` must hold absolute paths",
        ),
        ("sandbox = { netwrok = false }", "unknown field `netwrok`"),
    ] {
        let e = config_error(body);
        assert!(e.contains(expected), "{body}: {e}");
    }
    // Process settings on a remote MCP server.
    let remote = exthost::config::HostConfig::from_toml_str(
        "[services.remote]\nkind = \"mcp\"\nurl = \"http://127.0.0.1:1/mcp\"\n[services.remote.sandbox]\nnetwork = false\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        remote.contains("service `remote`: field `sandbox` applies to a process exthost spawns"),
        "{remote}"
    );
    // The interface of the issue, whole.
    let cfg = exthost::config::HostConfig::from_toml_str(
        r#"
        [services.search]
        command = "/bin/true"
        sha256 = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
        tools = { allow = ["web_*"], deny = ["web_admin"] }
        inherit_env = false
        env_pass = ["HTTPS_PROXY"]
        limits = { memory = "512MiB", cpu_time = "60s", open_files = 256, processes = 64, file_size = "1GiB" }

        [services.search.sandbox]
        read = ["/usr", "/lib", "/etc/ssl"]
        write = ["/var/cache/search"]
        network = false
        required = true
        "#,
    )
    .unwrap();
    let search = &cfg.services["search"];
    assert_eq!(search.limits.memory.unwrap().0, 512 << 20);
    assert_eq!(search.limits.cpu_time, Some(Duration::from_secs(60)));
    assert!(!search.inherit_env);
    let sandbox = search.sandbox.as_ref().unwrap();
    assert!(!sandbox.network && sandbox.required);
}

#[tokio::test]
async fn exthost_tools_prints_each_binarys_hash_and_how_many_tools_are_hidden() {
    let dir = temp_dir();
    let text = format!(
        "services_dir = \"{0}/services\"\nlogs_dir = \"{0}/logs\"\n\
         [services.filtered]\ncommand = \"{1}\"\ntools = {{ deny = [\"crash\", \"fail\", \"filtered_pid\"] }}\n",
        dir.path().display(),
        mock_bin().display()
    );
    let cfg = dir.path().join("exthost.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = tokio::time::timeout(
        common::WAIT,
        run::exthost()
            .arg("tools")
            .arg("--config")
            .arg(&cfg)
            .output(),
    )
    .await
    .expect("exthost tools finished")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("echo") && !stdout.contains("crash"),
        "{stdout}"
    );
    let hash = binary_sha256(&mock_bin()).unwrap();
    assert!(
        stderr.contains(&format!(
            "sha256: `filtered`: {hash}  {}",
            mock_bin().display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("hidden: `filtered`: 2 tools hidden by its `tools` filter"),
        "{stderr}"
    );
    // A pattern naming no tool (here, a prefixed name) is pointed out.
    assert!(
        stderr.contains("matches none of the service's tools") && stderr.contains("filtered_pid"),
        "{stderr}"
    );
}

#[tokio::test]
async fn exthost_tools_says_a_script_cannot_be_pinned() {
    let dir = temp_dir();
    let script = dir.path().join("ext.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = format!(
        "services_dir = \"{0}/services\"\nlogs_dir = \"{0}/logs\"\n\
         [services.script]\ncommand = \"{1}\"\n",
        dir.path().display(),
        script.display()
    );
    let cfg = dir.path().join("exthost.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = tokio::time::timeout(
        common::WAIT,
        run::exthost()
            .arg("tools")
            .arg("--config")
            .arg(&cfg)
            .output(),
    )
    .await
    .expect("exthost tools finished")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "sha256: `script`: a `#!` script, cannot be pinned  {}",
            script.display()
        )),
        "{stderr}"
    );
    let hash = binary_sha256(&script).unwrap();
    assert!(!stderr.contains(&hash), "{stderr}");
}

#[tokio::test]
async fn exthost_run_lists_the_restrictions_in_the_status_and_the_spawn_log_line() {
    let dir = temp_dir();
    let text = format!(
        "services_dir = \"{0}/services\"\nlogs_dir = \"{0}/logs\"\n\
         [services.limited]\ncommand = \"{1}\"\ninherit_env = false\n\
         limits = {{ open_files = 64 }}\ntools = {{ deny = [\"crash\"] }}\n",
        dir.path().display(),
        mock_bin().display()
    );
    let cfg = dir.path().join("exthost.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut run = run::Run::start_logged(&cfg);
    let line = run.logged(&["spawned extension", "limited"]).await;
    assert!(
        line.contains("restrictions")
            && line.contains("env: minimal; limit open_files 64; tools deny [crash]"),
        "{line}"
    );
    // A call is held until its service is ready.
    let pid = run.ask(r#"{"id": 1, "tool": "pid", "args": "{}"}"#).await;
    assert!(pid["ok"].is_string(), "{pid}");
    let status = run.ask(r#"{"id": 2, "op": "status"}"#).await;
    assert_eq!(
        status["ok"]["limited"]["restrictions"],
        serde_json::json!(["env: minimal", "limit open_files 64", "tools deny [crash]"]),
        "{status}"
    );
    run.finish().await;
}

#[tokio::test]
async fn exthost_check_prints_the_binarys_hash() {
    let out = tokio::time::timeout(
        common::WAIT,
        run::exthost()
            .arg("check")
            .arg("--")
            .arg(mock_bin())
            .output(),
    )
    .await
    .expect("exthost check finished")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hash = binary_sha256(&mock_bin()).unwrap();
    assert!(
        stderr.contains(&format!("sha256: {hash}  {}", mock_bin().display())),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_sandbox_allows_the_binary_file_but_not_its_folder() {
    let dir = temp_dir();
    // A file next to the binary (cargo's dependency list of the example).
    let sibling = mock_bin().with_extension("d");
    assert!(sibling.is_file(), "{} is missing", sibling.display());
    let config = confined_mock().with_sandbox(Sandbox::default().required(true));
    let m = manager(dir.path(), vec![("boxed", config)]);
    assert!(m.start().await.failed.is_empty(), "sandboxed start failed");
    let denied = call(&m, "read_file", &json_arg("path", &sibling))
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("Permission denied"), "{denied}");
    let status = m.status("boxed").unwrap();
    assert_restriction(&status, |r| {
        r.contains("read [] (+ the binary, system programs and libraries")
    });
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_symlinked_binary_starts_under_a_sandbox() {
    let dir = temp_dir();
    let link = dir.path().join("ext");
    std::os::unix::fs::symlink(mock_bin(), &link).unwrap();
    let config = ServiceConfig::command(&link)
        .with_env("MOCK_CONFINE", "1")
        .with_sandbox(Sandbox::default().required(true));
    let m = manager(dir.path(), vec![("linked", config)]);
    let report = m.start().await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        call(&m, "echo", "through a link").await.unwrap(),
        "through a link"
    );
    m.shutdown_all().await;
}

#[tokio::test]
async fn an_exec_denied_by_the_sandbox_says_the_sandbox_may_be_the_cause() {
    let dir = temp_dir();
    // A script whose interpreter lies outside every rule.
    let interp = dir.path().join("interp");
    std::fs::copy(std::fs::canonicalize("/bin/true").unwrap(), &interp).unwrap();
    let script = dir.path().join("ext.sh");
    std::fs::write(&script, format!("#!{}\n", interp.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = ServiceConfig::command(&script).with_sandbox(Sandbox::default().required(true));
    let m = manager(dir.path(), vec![("script", config)]);
    let report = m.start().await;
    let (_, e) = &report.failed[0];
    match spawn_error(e) {
        SpawnError::Sandbox { problem, .. } => {
            assert!(problem.contains("may be the cause"), "{problem}");
            assert!(problem.contains("Permission denied"), "{problem}");
        }
        other => panic!("not a sandbox error: {other}"),
    }
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_sandboxed_extension_can_read_the_name_resolution_files() {
    let dir = temp_dir();
    let m = manager(
        dir.path(),
        vec![(
            "boxed",
            confined_mock().with_sandbox(Sandbox::default().required(true)),
        )],
    );
    assert!(m.start().await.failed.is_empty(), "sandboxed start failed");
    for file in ["/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf"] {
        if !Path::new(file).exists() {
            continue;
        }
        let text = call(&m, "read_file", &json_arg("path", file)).await;
        assert!(text.is_ok(), "{file}: {text:?}");
    }
    assert!(
        Path::new("/etc/hosts").exists(),
        "this test needs /etc/hosts"
    );
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_sandboxed_extension_cannot_remove_other_files_in_the_services_folder() {
    let dir = temp_dir();
    let m = manager(
        dir.path(),
        vec![(
            "boxed",
            confined_mock().with_sandbox(Sandbox::default().required(true)),
        )],
    );
    assert!(m.start().await.failed.is_empty(), "sandboxed start failed");
    let victim = dir.path().join("services/other.sock");
    std::fs::write(&victim, "").unwrap();
    let e = call(&m, "remove_file", &json_arg("path", &victim))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Permission denied"), "{e}");
    assert!(victim.exists());
    // Its own socket was made there all the same, and is removed by the
    // host at the stop.
    let own = dir.path().join("services/boxed.sock");
    assert!(own.exists());
    m.stop_service("boxed").await.unwrap();
    assert!(!own.exists());
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_write_path_is_not_executable_unless_also_in_read() {
    let dir = temp_dir();
    let writable = dir.path().join("w");
    std::fs::create_dir(&writable).unwrap();
    let program = writable.join("true");
    std::fs::copy(std::fs::canonicalize("/bin/true").unwrap(), &program).unwrap();
    let write_only = confined_mock()
        .with_prefix("w_")
        .with_sandbox(Sandbox::default().write([&writable]).required(true));
    let both = confined_mock().with_prefix("rw_").with_sandbox(
        Sandbox::default()
            .read([&writable])
            .write([&writable])
            .required(true),
    );
    let m = manager(dir.path(), vec![("w", write_only), ("rw", both)]);
    assert!(m.start().await.failed.is_empty(), "sandboxed start failed");
    let run = |tool: &'static str| {
        let m = m.clone();
        let program = program.clone();
        async move { call(&m, tool, &json_arg("path", program)).await }
    };
    let denied = run("w_run").await.unwrap_err();
    assert!(denied.to_string().contains("Permission denied"), "{denied}");
    assert_eq!(run("rw_run").await.unwrap(), "exit status: 0");
    m.shutdown_all().await;
}

#[tokio::test]
async fn a_hidden_tool_appearing_alone_updates_the_hidden_count() {
    let dir = temp_dir();
    let config =
        ServiceConfig::mcp_command(common::example_bin("mcp_server"), Vec::<String>::new())
            .with_tools(ToolFilter::default().deny(["extra"]));
    let m = manager(dir.path(), vec![("server", config)]);
    let report = m.start().await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(m.status("server").unwrap().tools_hidden, 0);
    assert_eq!(
        call(&m, "change_tools", "{}").await.unwrap(),
        "tools changed"
    );
    wait_until(&m, "server", |s| s.tools_hidden == 1).await;
    m.shutdown_all().await;
}

#[tokio::test]
async fn the_status_shows_the_limit_in_force_when_the_host_caps_it() {
    let dir = temp_dir();
    let (_, max) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let asked = 100_000_000u64;
    assert!(max < asked, "the host's hard descriptor limit is {max}");
    let m = manager(
        dir.path(),
        vec![(
            "capped",
            mock("").with_limits(Limits::default().open_files(asked)),
        )],
    );
    assert!(m.start().await.failed.is_empty());
    let status = m.status("capped").unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", status.pid.unwrap())).unwrap();
    assert_eq!(limit(&limits, "Max open files").0, max.to_string());
    assert!(
        status.restrictions.contains(&format!(
            "limit open_files {asked}, capped at {max} (the host's hard limit)"
        )),
        "{:?}",
        status.restrictions
    );
    m.shutdown_all().await;
}

#[test]
fn loose_confinement_settings_are_refused() {
    for (body, expected) in [
        ("limits = [\"1MiB\"]", "a table"),
        ("tools = [[\"echo\"], [\"echo\"]]", "a table"),
        ("sandbox = [[\"/x\"]]", "a table"),
        ("limits = { memory = \"1.9\" }", "whole number of bytes"),
        ("limits = { memory = \"1.5B\" }", "whole number of bytes"),
        (
            "limits = { cpu_time = \"1500ms\" }",
            "field `limits.cpu_time` must be a whole number of seconds",
        ),
        (
            "limits = { memory = 0 }",
            "field `limits.memory` must be at least 1",
        ),
    ] {
        let e = config_error(body);
        assert!(e.contains(expected), "{body}: {e}");
        assert!(
            body.contains("cpu_time") || !e.contains("cpu_time"),
            "{body}: {e}"
        );
    }
    let sizes = |body: &str| {
        let text = format!("[services.s]\ncommand = \"/bin/true\"\nlimits = {{ {body} }}\n");
        exthost::config::HostConfig::from_toml_str(&text)
            .unwrap()
            .services["s"]
            .limits
            .clone()
    };
    // As systemd and docker read them: one letter is a power of 1024.
    assert_eq!(sizes("memory = \"512M\"").memory.unwrap().0, 512 << 20);
    assert_eq!(sizes("memory = \"1g\"").memory.unwrap().0, 1 << 30);
    assert_eq!(sizes("memory = \"1gib\"").memory.unwrap().0, 1 << 30);
    assert_eq!(sizes("memory = \"1.5KiB\"").memory.unwrap().0, 1536);
    assert_eq!(sizes("memory = \"1 GB\"").memory.unwrap().0, 1_000_000_000);
    assert_eq!(sizes("file_size = 4096").file_size.unwrap().0, 4096);
}

#[test]
fn an_mcp_client_file_takes_the_confinement_keys() {
    let hash = "a".repeat(64);
    let text = format!(
        r#"{{"mcpServers": {{"search": {{
            "command": "/bin/true",
            "sha256": "{hash}",
            "tools": {{"allow": ["web_*"], "deny": ["web_admin"]}},
            "inherit_env": false,
            "env_pass": ["HTTPS_PROXY"],
            "limits": {{"memory": "512MiB", "cpu_time": "60s"}},
            "sandbox": {{"read": ["/srv"], "network": false, "required": true}}
        }}}}}}"#
    );
    let cfg = exthost::config::HostConfig::from_json_str(&text).unwrap();
    let search = &cfg.services["search"];
    assert_eq!(search.sha256.as_deref(), Some(hash.as_str()));
    assert_eq!(
        search.tools,
        Some(ToolFilter::allow(["web_*"]).deny(["web_admin"]))
    );
    assert!(!search.inherit_env);
    assert_eq!(search.env_pass, ["HTTPS_PROXY"]);
    assert_eq!(search.limits.memory.unwrap().0, 512 << 20);
    let sandbox = search.sandbox.as_ref().unwrap();
    assert!(!sandbox.network && sandbox.required);
    assert_eq!(sandbox.read, [PathBuf::from("/srv")]);

    // Validated as in TOML.
    let refused = |entry: &str| {
        let text =
            format!(r#"{{"mcpServers": {{"search": {{"command": "/bin/true", {entry}}}}}}}"#);
        exthost::config::HostConfig::from_json_str(&text)
            .unwrap_err()
            .to_string()
    };
    for (entry, expected) in [
        (
            r#""sha256": "abc""#,
            "field `sha256` must be 64 hexadecimal digits",
        ),
        (
            r#""tools": {"allow": ["web_["]}"#,
            "field `tools.allow` has a bad pattern",
        ),
        (r#""limits": ["1MiB"]"#, "expected an object"),
        (r#""limits": {"memroy": "1MiB"}"#, "unknown field `memroy`"),
        (
            r#""sandbox": {"read": ["rel"]}"#,
            "field `sandbox.read` must hold absolute paths",
        ),
        // Fail closed: null, or a misspelled key, never means "unconfined".
        (r#""sandbox": null"#, "not null"),
        (r#""sha256": null"#, "not null"),
        (
            r#""sanbox": {"read": []}"#,
            "field `sandbox` is spelled \"sanbox\"",
        ),
        (r#""inherit-env": false"#, "field `inherit_env` is spelled"),
        (r#""envPass": ["A"]"#, "field `env_pass` is spelled"),
        (r#""tool": {"deny": ["x"]}"#, "field `tools` is spelled"),
    ] {
        let e = refused(entry);
        assert!(e.contains(expected), "{entry}: {e}");
    }
    // Keys unlike any confinement key are still only warned about.
    let text = r#"{"mcpServers": {"s": {"command": "/bin/true", "roots": [], "timeout": 5}}}"#;
    exthost::config::HostConfig::from_json_str(text).unwrap();
}

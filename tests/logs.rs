//! Log files cannot fill the disk: a size cap and rotation, on by default,
//! that never blocks the extension's writes.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{mock_bin, temp_dir};
use exthost::config::{RestartPolicy, ServiceConfig};
use exthost::manager::{ServiceManager, ServiceState};
use exthost::process::{rotated, Paths};
use exthost::router::ToolCall;
use tower::ServiceExt;

const CAP: u64 = 64 * 1024;

/// A mock extension that first floods stderr (2 MiB) and stdout (1 MiB).
fn flooding(dir: &Path) -> ServiceConfig {
    let script = dir.join("flood.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nhead -c 2097152 /dev/zero | tr '\\0' e >&2\nhead -c 1048576 /dev/zero | tr '\\0' o\nexec {} \"$@\"\n",
            mock_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    ServiceConfig::command(script)
        .with_log_limits(CAP, 2)
        .with_restart(RestartPolicy::Always)
}

fn total_log_bytes(log: &Path) -> u64 {
    let dir = log.parent().unwrap();
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[tokio::test]
async fn a_flood_of_output_is_capped_and_rotated_across_restarts() {
    let dir = temp_dir();
    let configs: BTreeMap<_, _> = [("flood".to_owned(), flooding(dir.path()))].into();
    let m = ServiceManager::with_paths(
        &configs,
        Paths::under(dir.path(), dir.path().join("d.sock")),
    );
    // 3 MiB through a 64 KiB cap: the extension still gets to its handshake.
    assert_eq!(m.start().await.ready, ["flood"]);
    let log = dir.path().join("logs/flood.log");
    assert!(rotated(&log, 1).exists() && rotated(&log, 2).exists());
    assert!(!rotated(&log, 3).exists(), "only 2 old files are kept");
    assert!(
        total_log_bytes(&log) <= 3 * CAP,
        "{} bytes",
        total_log_bytes(&log)
    );

    // A restart floods again; the same files take it.
    let old = m.status("flood").unwrap().pid;
    let _ = m.router().oneshot(ToolCall::new("crash", "{}")).await;
    tokio::time::timeout(
        Duration::from_secs(20),
        m.wait_for("flood", |s| s.state == ServiceState::Ready && s.pid != old),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(
        total_log_bytes(&log) <= 3 * CAP,
        "{} bytes",
        total_log_bytes(&log)
    );
    assert!(!rotated(&log, 3).exists());
    m.shutdown_all().await;
}

#[tokio::test]
async fn the_log_keeps_the_header_and_the_extensions_own_lines_in_order() {
    let dir = temp_dir();
    let script = dir.path().join("say.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho one\necho two >&2\necho three\nexec {} \"$@\"\n",
            mock_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let configs: BTreeMap<_, _> = [("say".to_owned(), ServiceConfig::command(&script))].into();
    let m = ServiceManager::with_paths(
        &configs,
        Paths::under(dir.path(), dir.path().join("d.sock")),
    );
    assert_eq!(m.start().await.ready, ["say"]);
    m.shutdown_all().await;
    let text = std::fs::read_to_string(dir.path().join("logs/say.log")).unwrap();
    let lines: Vec<_> = text.lines().take(4).collect();
    assert!(
        lines[0].starts_with("--- exthost: starting say: "),
        "{text}"
    );
    assert_eq!(lines[1..], ["one", "two", "three"], "{text}");
}

//! Running out of descriptors is neither silent nor fatal to start-up: the
//! host raises its soft `RLIMIT_NOFILE` to the hard limit at start (its
//! extensions get back the soft limit it had), and a resource error in
//! spawning or connecting is reported at once for what it is, never
//! retried until a timeout.

mod common;
#[path = "common/run.rs"]
mod run;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{mock_bin, temp_dir, WAIT};
use run::exthost;

/// How many trivial extensions each test starts.
const EXTENSIONS: usize = 30;

/// A config of `n` mocks, `m0` … (tools `m0_echo`, …, `m0_limits`), each
/// allowed `handshake_timeout` to open its socket.
fn config(dir: &Path, n: usize, handshake_timeout: &str) -> PathBuf {
    let mut text = format!(
        "services_dir = \"{0}/services\"\nlogs_dir = \"{0}/logs\"\n",
        dir.display()
    );
    for i in 0..n {
        text += &format!(
            "[services.m{i}]\ncommand = \"{}\"\nhandshake_timeout = \"{handshake_timeout}\"\n\
             env = {{ MOCK_PREFIX = \"m{i}_\", MOCK_LIMITS = \"1\" }}\n",
            mock_bin().display()
        );
    }
    let path = dir.join("exthost.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `exthost ARGS` under the descriptor limits `ulimit_args` (`-S -n 48`:
/// the soft limit only; `-n 40`: both), bounded by [`WAIT`].
async fn under_limit(ulimit_args: &str, args: &[&str]) -> Output {
    let std = exthost().as_std().get_program().to_owned();
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("ulimit {ulimit_args} && exec \"$0\" \"$@\""))
        .arg(std)
        .args(args)
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("exthost did not finish: a resource error was retried until a timeout?")
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// This process's hard descriptor limit, which the tests keep.
fn hard_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap()
        .1
}

#[tokio::test]
async fn thirty_extensions_start_under_a_soft_limit_of_48() {
    let dir = temp_dir();
    let cfg = config(dir.path(), EXTENSIONS, "60s");
    let cfg = cfg.to_str().unwrap();
    let out = under_limit("-S -n 48", &["tools", "--json", "--config", cfg]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let tools: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(tools.len(), EXTENSIONS * 6, "{stderr}");
}

#[tokio::test]
async fn extensions_get_back_the_soft_limit_the_host_had() {
    let dir = temp_dir();
    let cfg = config(dir.path(), EXTENSIONS, "60s");
    let cfg = cfg.to_str().unwrap();
    let out = under_limit("-S -n 48", &["call", "--config", cfg, "m29_limits"]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.trim(), format!("48 {}", hard_limit()), "{stderr}");
}

#[tokio::test]
async fn running_out_of_descriptors_is_reported_at_once_as_a_resource_error() {
    let dir = temp_dir();
    // The hard limit too is 40: raising cannot help. Each extension has a
    // minute to open its socket; the run must end long before.
    let cfg = config(dir.path(), EXTENSIONS, "60s");
    let cfg = cfg.to_str().unwrap();
    let out = under_limit("-n 40", &["tools", "--config", cfg]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let failed: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("failed: "))
        .collect();
    assert!(!failed.is_empty(), "{stderr}");
    for line in &failed {
        assert!(line.contains("out of resources"), "{line}\n{stderr}");
    }
    assert!(!stderr.contains("did not open its socket"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Out of descriptors at any step of a start (the log file and its
/// rotation's listing included) is a resource error, never a panic nor
/// another error: under several hard limits, so that each step runs out.
#[tokio::test]
async fn running_out_at_any_step_is_a_resource_error_without_a_panic() {
    let dir = temp_dir();
    let cfg = config(dir.path(), EXTENSIONS, "60s");
    let cfg = cfg.to_str().unwrap();
    for limit in [14, 15, 16, 18, 20, 24] {
        let out = under_limit(&format!("-n {limit}"), &["tools", "--config", cfg]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "limit {limit}: {stderr}");
        assert!(!stderr.contains("panicked"), "limit {limit}: {stderr}");
        assert!(!stderr.contains("cannot list"), "limit {limit}: {stderr}");
        let failed: Vec<_> = stderr
            .lines()
            .filter(|l| l.starts_with("failed: "))
            .collect();
        assert!(!failed.is_empty(), "limit {limit}: {stderr}");
        for line in &failed {
            assert!(
                line.contains("out of resources"),
                "limit {limit}: {line}\n{stderr}"
            );
        }
    }
}

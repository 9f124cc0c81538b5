//! Two hosts started from one configuration work side by side, and no host
//! ever removes a socket that is not its own.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{mock_bin, temp_dir};
use exthost::config::ServiceConfig;
use exthost::manager::ServiceManager;
use exthost::process::{Paths, SpawnError};
use exthost::router::ToolCall;
use exthost::StartError;
use tower::ServiceExt;

fn configs() -> BTreeMap<String, ServiceConfig> {
    let cfg = ServiceConfig::command(mock_bin()).with_env("MOCK_PREFIX", "a_");
    [("alpha".to_owned(), cfg)].into()
}

async fn pid(m: &ServiceManager) -> u32 {
    let pid = m
        .router()
        .oneshot(ToolCall::new("a_pid", "{}"))
        .await
        .unwrap();
    pid.text().parse().unwrap()
}

#[tokio::test]
async fn two_managers_on_one_configuration_work_side_by_side() {
    let dir = temp_dir();
    let paths = Paths::under(dir.path(), dir.path().join("d.sock"));
    let first = ServiceManager::with_paths(&configs(), paths.clone());
    let second = ServiceManager::with_paths(&configs(), paths);
    assert_eq!(first.start().await.ready, ["alpha"]);
    assert_eq!(second.start().await.ready, ["alpha"]);
    let (a, b) = (pid(&first).await, pid(&second).await);
    assert_ne!(a, b, "each host runs its own extension");
    // The first host keeps the reference layout; the second has its own.
    let socket = dir.path().join("services/alpha.sock");
    assert!(socket.exists());
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let m = if i % 2 == 0 { &first } else { &second };
            m.router().oneshot(ToolCall::new("a_echo", format!("{i}")))
        })
        .collect();
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap(), i.to_string());
    }
    second.shutdown_all().await;
    drop(second);
    // The second host's shutdown touched nothing of the first's.
    assert!(socket.exists(), "the first host's socket was removed");
    assert_eq!(pid(&first).await, a);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("services"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "only the lock and alpha.sock: {leftovers:?}"
    );
    first.shutdown_all().await;
    assert!(!socket.exists());
}

#[tokio::test]
async fn a_socket_a_live_process_listens_on_is_never_removed() {
    let dir = temp_dir();
    let services = dir.path().join("services");
    exthost::process::prepare_private_dir(&services).unwrap();
    let socket = services.join("alpha.sock");
    // Someone else serves at the path (not a host that holds the folder).
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let m = ServiceManager::with_paths(
        &configs(),
        Paths::under(dir.path(), dir.path().join("d.sock")),
    );
    let report = m.start().await;
    let (_, err) = &report.failed[0];
    assert!(
        matches!(&**err, StartError::Spawn(SpawnError::Io { what, .. }) if what.contains("stale socket")),
        "{err:?}"
    );
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(socket.exists());
    // It still reaches its listener.
    let _client = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::UnixStream::connect(&socket),
    )
    .await
    .unwrap()
    .unwrap();
    listener.accept().await.unwrap();
    m.shutdown_all().await;
    assert!(socket.exists());
}

//! User layers installed through the manager wrap every extension's stack,
//! restarts included.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{mock_bin, temp_dir};
use exthost::config::{RestartPolicy, ServiceConfig};
use exthost::manager::{RestartLimits, ServiceManager, ServiceState};
use exthost::process::Paths;
use exthost::proto::ExtRequest;
use exthost::router::ToolCall;
use exthost::stack::ExtensionService;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(10);

fn mock(name: &str, prefix: &str) -> (String, ServiceConfig) {
    let cfg = ServiceConfig::command(mock_bin())
        .with_env("MOCK_PREFIX", prefix)
        .with_env("MOCK_SERVICE", name)
        .with_restart(RestartPolicy::OnFailure);
    (name.to_owned(), cfg)
}

#[tokio::test]
async fn a_manager_layer_sees_every_call_of_every_extension_after_restarts_too() {
    let dir = temp_dir();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    let counting = tower::layer::layer_fn(move |inner: ExtensionService| {
        let record = record.clone();
        inner.map_request(move |req: ExtRequest| {
            if let Some(tool) = req.tool_name() {
                record.lock().unwrap().push(tool.to_owned());
            }
            req
        })
    });
    let configs: BTreeMap<_, _> = [mock("alpha", "a_"), mock("beta", "b_")].into();
    let m = ServiceManager::builder(&configs)
        .paths(Paths::under(dir.path(), dir.path().join("d.sock")))
        .limits(RestartLimits {
            backoff_base: Duration::from_millis(10),
            ..RestartLimits::default()
        })
        .layer(counting)
        .build();
    let report = m.start().await;
    assert_eq!(report.ready, ["alpha", "beta"], "{:?}", report.failed);
    let call = |tool: &'static str| m.router().oneshot(ToolCall::new(tool, "{}"));
    call("a_echo").await.unwrap();
    call("b_echo").await.unwrap();
    let old = m.status("beta").unwrap().pid;
    call("b_crash").await.unwrap_err();
    tokio::time::timeout(
        WAIT,
        m.wait_for("beta", |s| s.state == ServiceState::Ready && s.pid != old),
    )
    .await
    .expect("beta restarted")
    .unwrap();
    call("b_pid").await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        ["a_echo", "b_echo", "b_crash", "b_pid"],
        "the restarted stack must carry the layer too"
    );
    m.shutdown_all().await;
}

//! Composing your own tower layers around exthost's router: a retry policy
//! that retries only what is safe, and a small metrics layer (count and
//! latency per tool).
//!
//! ```text
//! cargo run --example custom_layers
//! ```
//!
//! Like `agent`, it re-runs itself as the mock extension, so it needs
//! nothing built beforehand.

#[allow(dead_code)]
#[path = "mock_extension.rs"]
mod mock_extension;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use exthost::config::{RestartPolicy, ServiceConfig};
use exthost::manager::{RestartLimits, ServiceManager};
use exthost::process::Paths;
use exthost::router::ToolCall;
use exthost::{CallError, ToolOutput};
use tower::retry::{Policy, RetryLayer};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error>;

/// Retries a call only when it certainly never reached an extension (the
/// extension was down), at most `attempts` times, 200 ms apart. Tool calls
/// may have effects, so a call that may have run is never retried.
#[derive(Clone)]
struct RetryWhenSafe {
    attempts: usize,
}

impl Policy<ToolCall, ToolOutput, CallError> for RetryWhenSafe {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut ToolCall,
        result: &mut Result<ToolOutput, CallError>,
    ) -> Option<Self::Future> {
        match result {
            Err(e) if e.is_retry_safe() && self.attempts > 0 => {
                self.attempts -= 1;
                println!("  retry: {e}");
                Some(tokio::time::sleep(Duration::from_millis(200)))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &ToolCall) -> Option<ToolCall> {
        Some(req.clone())
    }
}

/// Per-tool call counts, error counts and total latency.
#[derive(Debug, Default)]
struct ToolStats {
    calls: u64,
    errors: u64,
    total: Duration,
}

type Metrics = Arc<Mutex<BTreeMap<String, ToolStats>>>;

/// Records [`ToolStats`] for every call through it.
#[derive(Clone)]
struct MetricsLayer {
    metrics: Metrics,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> Service<ToolCall> for MetricsService<S>
where
    S: Service<ToolCall, Response = ToolOutput>,
    S::Future: Send + 'static,
{
    type Response = ToolOutput;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<ToolOutput, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: ToolCall) -> Self::Future {
        let tool = call.name.clone();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(call);
        Box::pin(async move {
            let result = fut.await;
            let mut m = metrics.lock().expect("metrics lock");
            let stats = m.entry(tool).or_default();
            stats.calls += 1;
            stats.errors += u64::from(result.is_err());
            stats.total += start.elapsed();
            result
        })
    }
}

fn main() -> Result<(), Error> {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(mock_extension::run());
    }
    tokio::runtime::Runtime::new()?.block_on(demo())
}

async fn demo() -> Result<(), Error> {
    let me = std::env::current_exe()?;
    let mut configs = BTreeMap::new();
    configs.insert(
        "tools".to_owned(),
        ServiceConfig::command(&me).with_restart(RestartPolicy::Always),
    );
    let dir = tempfile::Builder::new()
        .prefix("exthost-layers-")
        .tempdir_in("/tmp")?;
    let manager = ServiceManager::with_limits(
        &configs,
        Paths::under(dir.path(), dir.path().join("daemon.sock")),
        RestartLimits {
            backoff_base: Duration::from_millis(300),
            ..RestartLimits::default()
        },
    );
    manager.start().await;

    let metrics = Metrics::default();
    // Outermost first: metrics see each call once, retries included.
    let svc = ServiceBuilder::new()
        .layer(MetricsLayer {
            metrics: metrics.clone(),
        })
        .layer(RetryLayer::new(RetryWhenSafe { attempts: 5 }))
        .service(manager.router());

    println!(
        "echo -> {}",
        svc.clone()
            .oneshot(ToolCall::new("echo", "hi"))
            .await?
            .text()
    );
    println!(
        "fail -> {:?}",
        svc.clone().oneshot(ToolCall::new("fail", "{}")).await.err()
    );
    // The crash may have run: it is not retried.
    println!(
        "crash -> {:?}",
        svc.clone()
            .oneshot(ToolCall::new("crash", "{}"))
            .await
            .err()
    );
    // The extension is restarting: this call never reached it, so it is
    // retried until the extension is back.
    println!(
        "echo after the crash -> {}",
        svc.clone()
            .oneshot(ToolCall::new("echo", "back"))
            .await?
            .text()
    );

    println!("\nper-tool metrics:");
    for (tool, s) in metrics.lock().expect("metrics lock").iter() {
        println!(
            "  {tool:<6} calls {} errors {} mean {:.1?}",
            s.calls,
            s.errors,
            s.total / s.calls.max(1) as u32
        );
    }
    manager.shutdown_all().await;
    Ok(())
}

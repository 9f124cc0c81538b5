use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;
use tracing::field;

use super::ResponseFuture;
use crate::proto::{ExtRequest, ExtResponse};

/// Opens a span per extension request and records its latency and outcome.
///
/// See the [module documentation](super) for the fields.
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    service: Arc<str>,
}

impl<S> Trace<S> {
    /// Wraps `inner`; spans name the extension `service`.
    pub fn new(inner: S, service: Arc<str>) -> Self {
        Trace { inner, service }
    }

    /// The extension name the spans carry.
    pub fn service_name(&self) -> &str {
        &self.service
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<ExtRequest> for Trace<S>
where
    S: Service<ExtRequest, Response = ExtResponse>,
    S::Error: std::fmt::Display,
{
    type Response = ExtResponse;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: ExtRequest) -> Self::Future {
        let span = tracing::debug_span!(
            "ext_request",
            service = &*self.service,
            kind = req.kind().as_str(),
            tool = field::Empty,
            agent = field::Empty,
            task_id = field::Empty,
        );
        if !span.is_disabled() {
            if let Some(call) = req.as_tool_call() {
                span.record("tool", call.name.as_str());
                span.record("agent", call.agent.as_str());
                if let Some(id) = call.task_id {
                    span.record("task_id", id);
                }
            }
        }
        // Entering even a disabled span costs a check per enter and exit
        // when tracing's `log` feature is on (tower turns it on): skip it.
        let inner = if span.is_disabled() {
            self.inner.call(req)
        } else {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture::new(inner, span)
    }
}

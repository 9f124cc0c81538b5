use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use tracing::Span;

use crate::proto::ExtResponse;

pin_project! {
    /// Response future of [`Trace`](super::Trace).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        // Set only when the span is enabled.
        start: Option<Instant>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, span: Span) -> Self {
        let start = (!span.is_disabled()).then(Instant::now);
        ResponseFuture { inner, span, start }
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<ExtResponse, E>>,
    E: Display,
{
    type Output = Result<ExtResponse, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let span: &Span = this.span;
        let Some(start) = this.start else {
            // The span is disabled: no enter, no clock, no event.
            return this.inner.poll(cx);
        };
        let result = {
            let _entered = span.enter();
            ready!(this.inner.poll(cx))
        };
        let latency_us = start.elapsed().as_micros() as u64;
        match &result {
            Ok(resp) => match resp.error_message() {
                None => tracing::debug!(parent: span, latency_us, outcome = "ok"),
                Some(message) => tracing::debug!(
                    parent: span,
                    latency_us,
                    outcome = "extension_error",
                    message
                ),
            },
            Err(error) => tracing::debug!(parent: span, latency_us, outcome = "failed", %error),
        }
        Poll::Ready(result)
    }
}

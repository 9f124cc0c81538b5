//! A deadline that covers the wait for readiness as well as the call.
//!
//! tower's `Timeout` starts its clock in `call`, so time spent waiting in
//! `poll_ready` (for a [`Connection`](crate::client::Connection)'s
//! in-flight slot) is not bounded by it. This one starts the clock the first
//! time `poll_ready` finds the inner service busy, and carries the same
//! deadline into the call. Its error, [`TimedOut`], is a type of its own, so
//! a timeout from a user's layer inside the stack is never mistaken for the
//! stack's call timeout.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

/// The stack's call deadline passed, while waiting for an in-flight slot or
/// for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut {
    after: Duration,
}

impl TimedOut {
    /// A timeout after `after`.
    pub const fn new(after: Duration) -> Self {
        TimedOut { after }
    }

    /// The deadline that passed, counted from the first wait for readiness
    /// (or from the call, when the service was ready at once).
    pub const fn after(&self) -> Duration {
        self.after
    }
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request timed out after {:?}", self.after)
    }
}

impl std::error::Error for TimedOut {}

/// Applies [`Timeout`] to a service.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A layer whose services time out after `timeout`.
    pub const fn new(timeout: Duration) -> Self {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout::new(inner, self.timeout)
    }
}

/// Fails a request with [`TimedOut`] when it has not been answered within
/// the timeout, counting the wait for readiness.
///
/// If the deadline passes while `poll_ready` waits, `poll_ready` returns the
/// [`TimedOut`] error; the service itself is not broken, and polling it again
/// starts a new deadline.
#[derive(Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
    /// Armed by the first `poll_ready` that found the inner service busy.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<S> Timeout<S> {
    /// Wraps `inner` with a deadline of `timeout`.
    pub const fn new(inner: S, timeout: Duration) -> Self {
        Timeout {
            inner,
            timeout,
            waiting: None,
        }
    }

    /// The deadline in force.
    pub const fn timeout(&self) -> Duration {
        self.timeout
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

/// A clone starts with no deadline of its own running.
impl<S: Clone> Clone for Timeout<S> {
    fn clone(&self) -> Self {
        Timeout::new(self.inner.clone(), self.timeout)
    }
}

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(r) => Poll::Ready(r.map_err(Into::into)),
            Poll::Pending => {
                let timeout = self.timeout;
                let sleep = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        self.waiting = None;
                        Poll::Ready(Err(TimedOut::new(timeout).into()))
                    }
                }
            }
        }
    }

    fn call(&mut self, req: R) -> Self::Future {
        let deadline = match self.waiting.take() {
            Some(sleep) => sleep.deadline(),
            None => Instant::now() + self.timeout,
        };
        ResponseFuture {
            response: self.inner.call(req),
            sleep: tokio::time::sleep_until(deadline),
            after: self.timeout,
        }
    }
}

pin_project! {
    /// The future of a [`Timeout`] call.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        response: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.response.poll(cx) {
            return Poll::Ready(v.map_err(Into::into));
        }
        match this.sleep.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(TimedOut::new(*this.after).into())),
        }
    }
}

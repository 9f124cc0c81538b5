use std::sync::Arc;

use tower::Layer;

use super::Trace;

/// Wraps a service in [`Trace`], naming the extension in every span.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    service: Arc<str>,
}

impl TraceLayer {
    /// A layer whose spans carry `service` as the extension's name.
    pub fn new(service: impl Into<Arc<str>>) -> Self {
        TraceLayer {
            service: service.into(),
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace::new(inner, self.service.clone())
    }
}

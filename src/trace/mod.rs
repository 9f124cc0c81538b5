//! Tracing for extension requests: a span per request, and its latency and
//! outcome when it completes.
//!
//! [`Trace`] opens a `DEBUG` span named `ext_request` around each call, with
//! the fields `service`, `kind` (such as `tool_call`), `tool`, `agent` and
//! `task_id`, enters it whenever the inner future is polled, and when the
//! call completes emits one event in that span with `latency_us` and
//! `outcome` (`ok`, `extension_error` or `failed`). With no subscriber
//! interested, it costs a few branches per call: no clock reads, no
//! formatting.
//!
//! # Example
//!
//! ```
//! use exthost::proto::{ExtRequest, ExtResponse};
//! use exthost::trace::TraceLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let svc = ServiceBuilder::new()
//!     .layer(TraceLayer::new("demo"))
//!     .service(service_fn(|_req: ExtRequest| async {
//!         Ok::<_, tower::BoxError>(ExtResponse::tool_result("done"))
//!     }));
//! let resp = svc.oneshot(ExtRequest::tool_call("echo", "{}")).await?;
//! assert_eq!(resp, ExtResponse::tool_result("done"));
//! # Ok(())
//! # }
//! ```

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::TraceLayer;
pub use service::Trace;

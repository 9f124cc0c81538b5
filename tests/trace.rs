//! The tracing layer: one span per request with its fields, and an event
//! with latency and outcome when the request completes.

use std::sync::{Arc, Mutex};

use exthost::proto::{ExtRequest, ExtResponse};
use exthost::trace::TraceLayer;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0 += &format!(" {}={:?}", field.name(), value);
    }
}

impl<S: tracing::Subscriber> Layer<S> for Recorder {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _id: &tracing::span::Id,
        _ctx: Context<'_, S>,
    ) {
        let mut f = Fields(format!("span {}", attrs.metadata().name()));
        attrs.record(&mut f);
        self.0.lock().unwrap().push(f.0);
    }

    fn on_record(
        &self,
        _id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _ctx: Context<'_, S>,
    ) {
        let mut f = Fields("record".to_owned());
        values.record(&mut f);
        self.0.lock().unwrap().push(f.0);
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields("event".to_owned());
        event.record(&mut f);
        self.0.lock().unwrap().push(f.0);
    }
}

#[test]
fn each_request_gets_a_span_with_its_fields_and_an_outcome_event() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let svc = ServiceBuilder::new()
                .layer(TraceLayer::new("search"))
                .service(service_fn(|req: ExtRequest| async move {
                    Ok::<_, tower::BoxError>(match req.tool_name() {
                        Some("bad") => ExtResponse::error("no such index"),
                        _ => ExtResponse::tool_result("found"),
                    })
                }));
            svc.clone()
                .oneshot(ExtRequest::tool_call_full(
                    "find",
                    "{}",
                    "planner",
                    Some(42),
                ))
                .await
                .unwrap();
            svc.oneshot(ExtRequest::tool_call("bad", "{}"))
                .await
                .unwrap();
        });
    });
    let log = recorder.0.lock().unwrap().join("\n");
    assert!(
        log.contains(r#"span ext_request service="search" kind="tool_call""#),
        "{log}"
    );
    assert!(log.contains(r#"tool="find""#), "{log}");
    assert!(log.contains(r#"agent="planner""#), "{log}");
    assert!(log.contains("task_id=42"), "{log}");
    assert!(log.contains("latency_us="), "{log}");
    assert!(log.contains(r#"outcome="ok""#), "{log}");
    assert!(log.contains(r#"outcome="extension_error""#), "{log}");
    assert!(log.contains(r#"message="no such index""#), "{log}");
}

/// An event's fields, and the name of the span it belongs to.
type Placed = (String, Option<&'static str>);

/// Records, for each event, its fields and the span it belongs to.
#[derive(Clone, Default)]
struct Parents(Arc<Mutex<Vec<Placed>>>);

impl<S> Layer<S> for Parents
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut f = Fields(String::new());
        event.record(&mut f);
        let parent = ctx.event_span(event).map(|span| span.name());
        self.0.lock().unwrap().push((f.0, parent));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn events_in_the_inner_call_and_its_future_belong_to_the_request_span() {
    let parents = Parents::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(parents.clone()));
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new("search"))
        .service(service_fn(|_req: ExtRequest| {
            // In `call` itself, before the future exists.
            tracing::debug!(step = "call");
            async {
                tracing::debug!(step = "first poll");
                tokio::task::yield_now().await;
                tracing::debug!(step = "second poll");
                Ok::<_, tower::BoxError>(ExtResponse::tool_result("found"))
            }
        }));
    let resp = svc
        .oneshot(ExtRequest::tool_call("find", "{}"))
        .await
        .unwrap();
    assert_eq!(resp, ExtResponse::tool_result("found"));
    // The span is left when the call returns.
    tracing::debug!(step = "after");

    let events = parents.0.lock().unwrap().clone();
    let parent_of = |step: &str| {
        let field = format!(r#" step="{step}""#);
        events
            .iter()
            .find(|(fields, _)| *fields == field)
            .unwrap_or_else(|| panic!("no event {field}: {events:?}"))
            .1
    };
    assert_eq!(parent_of("call"), Some("ext_request"), "{events:?}");
    assert_eq!(parent_of("first poll"), Some("ext_request"), "{events:?}");
    assert_eq!(parent_of("second poll"), Some("ext_request"), "{events:?}");
    assert_eq!(parent_of("after"), None, "{events:?}");
}

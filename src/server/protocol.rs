//! The protocol's answers around the extension author's service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use futures_util::Sink;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tower::{BoxError, Service};

use super::{Call, Meta};
use crate::codec::{CodecError, ServerCodec};
use crate::proto::{ext_request::Msg, ExtRequest, ExtResponse};

/// The framed socket, taking `None` for "no answer" (after `shutdown`).
pub(crate) struct ServerTransport<T> {
    framed: Framed<T, ServerCodec>,
    shutdown: CancellationToken,
    shutdown_requested: bool,
}

impl<T: AsyncRead + AsyncWrite + Unpin> ServerTransport<T> {
    pub(crate) fn new(io: T, shutdown: CancellationToken) -> Self {
        ServerTransport {
            framed: Framed::new(io, ServerCodec::new()),
            shutdown,
            shutdown_requested: false,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Stream for ServerTransport<T> {
    type Item = Result<ExtRequest, CodecError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.shutdown_requested {
            // Read nothing after `shutdown`.
            return Poll::Ready(None);
        }
        Pin::new(&mut self.framed).poll_next(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Sink<Option<ExtResponse>> for ServerTransport<T> {
    type Error = CodecError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        Pin::new(&mut self.framed).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Option<ExtResponse>) -> Result<(), CodecError> {
        match item {
            Some(resp) => {
                // An answer over the frame limit fails only its own call:
                // it becomes an `error` answer naming the size and the limit.
                let len = prost::Message::encoded_len(&resp);
                let max = self.framed.codec().max_frame_len();
                let resp = if len > max {
                    let mut error = ExtResponse::error(format!(
                        "answer of {len} bytes exceeds the {max}-byte frame limit"
                    ));
                    error.correlation_id = resp.correlation_id;
                    error
                } else {
                    resp
                };
                Pin::new(&mut self.framed).start_send(resp)
            }
            None => {
                self.shutdown_requested = true;
                Ok(())
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        ready!(Pin::new(&mut self.framed).poll_flush(cx))?;
        if self.shutdown_requested {
            // Every answer before `shutdown` is out: stop the server.
            self.shutdown.cancel();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), CodecError>> {
        Pin::new(&mut self.framed).poll_close(cx)
    }
}

/// Answers the protocol's own requests and hands the rest to the author's
/// service.
pub(crate) struct Protocol<S> {
    meta: Arc<Meta>,
    inner: S,
}

impl<S> Protocol<S> {
    pub(crate) fn new(meta: Arc<Meta>, inner: S) -> Self {
        Protocol { meta, inner }
    }
}

/// What a successful answer from the author's service becomes.
#[derive(Clone, Copy)]
enum Answer {
    Tool,
    Query,
    Configure,
}

pin_project! {
    #[project = ProtocolFutureProj]
    pub(crate) enum ProtocolFuture<F> {
        Ready { resp: Option<Option<ExtResponse>> },
        Inner { #[pin] fut: F, answer: Answer, id: Option<u64> },
    }
}

impl<F, E> Future for ProtocolFuture<F>
where
    F: Future<Output = Result<String, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Option<ExtResponse>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ProtocolFutureProj::Ready { resp } => {
                Poll::Ready(Ok(resp.take().expect("polled after completion")))
            }
            ProtocolFutureProj::Inner { fut, answer, id } => {
                let mut resp = match ready!(fut.poll(cx)) {
                    Ok(text) => match answer {
                        Answer::Tool => ExtResponse::tool_result(text),
                        Answer::Query => ExtResponse::service_query_result(text),
                        Answer::Configure => ExtResponse::configured(),
                    },
                    Err(e) => ExtResponse::error(e.into().to_string()),
                };
                resp.correlation_id = *id;
                Poll::Ready(Ok(Some(resp)))
            }
        }
    }
}

impl<S> Service<ExtRequest> for Protocol<S>
where
    S: Service<Call, Response = String>,
    S::Error: Into<BoxError>,
{
    type Response = Option<ExtResponse>;
    type Error = BoxError;
    type Future = ProtocolFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: ExtRequest) -> Self::Future {
        // Answers echo the request's correlation id, if it has one.
        let id = req.correlation_id;
        let ready = |mut resp: ExtResponse| {
            resp.correlation_id = id;
            ProtocolFuture::Ready {
                resp: Some(Some(resp)),
            }
        };
        let meta = &*self.meta;
        let (call, answer) = match req.msg {
            Some(Msg::Hello(_)) => {
                let caps = meta.capabilities();
                return ready(ExtResponse::ready(&meta.version, &meta.service, caps));
            }
            Some(Msg::RegisterTools(_)) => {
                let defs = meta.tools.iter().map(|t| t.to_def()).collect();
                return ready(ExtResponse::tool_schemas(defs));
            }
            Some(Msg::GetSchema(_)) => return ready(ExtResponse::schema_result(&meta.schema)),
            Some(Msg::Shutdown(_)) => return ProtocolFuture::Ready { resp: Some(None) },
            Some(Msg::ToolCall(call)) => {
                if !meta.names.contains(&call.name) {
                    return ready(ExtResponse::error(format!("unknown tool: {}", call.name)));
                }
                (Call::Tool(call), Answer::Tool)
            }
            Some(Msg::ServiceQuery(q)) => {
                if !meta.query {
                    return ready(ExtResponse::error(format!(
                        "service `{}` does not answer service queries",
                        meta.service
                    )));
                }
                (Call::Query(q.query), Answer::Query)
            }
            Some(Msg::Configure(c)) => (Call::Configure(c.config), Answer::Configure),
            None => return ready(ExtResponse::error("empty request: no message set")),
        };
        ProtocolFuture::Inner {
            fut: self.inner.call(call),
            answer,
            id,
        }
    }
}

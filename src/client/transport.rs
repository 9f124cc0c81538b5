//! The framed socket under tokio-tower's pipeline client, with the
//! bookkeeping that keeps answers matched to requests.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::Sink;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::codec::Framed;

use super::status::Status;
use super::ConnectionError;
use crate::codec::{Frame, TolerantClientCodec};
use crate::proto::{ExtRequest, ExtResponse, RequestKind, ResponseKind};

/// One answer as the connection hands it to its caller: the response, or
/// why this answer (and only it) could not be used.
pub(crate) type Answer = Result<ExtResponse, ConnectionError>;

/// Any byte stream a connection can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A request on its way to the socket, with the in-flight slot it holds.
pub(crate) struct Tagged {
    pub(crate) req: ExtRequest,
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

/// One request the extension has not answered yet.
struct Slot {
    kind: RequestKind,
    id: u64,
    sent_at: Instant,
    /// Released when the answer arrives (or the connection dies), not when
    /// the caller gives up: the limit counts what the extension still owes.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Sink of requests and stream of responses over one framed socket.
///
/// Besides framing, it enforces the answer-matching rules: each answer must
/// be of the kind its request expects, an answer with nothing pending is a
/// violation, an answer carrying another request's correlation id is a
/// violation, `shutdown` (which gets no answer) yields a synthetic empty
/// response in its place in the order, and a connection whose oldest request
/// is overdue past `stuck_after` fails. Every failure is recorded in
/// `status` before it is returned, so callers that see their request
/// dropped can report the real cause.
pub(crate) struct Transport {
    framed: Framed<Box<dyn Io>, TolerantClientCodec>,
    pending: VecDeque<Slot>,
    status: Arc<Status>,
    stuck_after: Option<Duration>,
    /// The same for the handshake's requests, which run under their own
    /// (often longer) timeout.
    stuck_after_handshake: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The correlation id of the next request.
    next_id: u64,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("pending", &self.pending.len())
            .field("stuck_after", &self.stuck_after)
            .finish()
    }
}

impl Transport {
    pub(crate) fn new(
        io: Box<dyn Io>,
        codec: TolerantClientCodec,
        status: Arc<Status>,
        stuck_after: Option<Duration>,
        stuck_after_handshake: Option<Duration>,
    ) -> Self {
        Transport {
            framed: Framed::new(io, codec),
            pending: VecDeque::new(),
            status,
            stuck_after,
            stuck_after_handshake,
            timer: None,
            next_id: 1,
        }
    }

    /// While nothing is owed, tokio-tower's worker does not read: watch the
    /// socket here so that an unsolicited answer is never handed to the
    /// next request, and a peer that goes away is noticed at once. Polling
    /// registers the worker's waker with the socket. A failure found is
    /// recorded (and returned).
    fn watch_idle(&mut self, cx: &mut Context<'_>) -> Option<ConnectionError> {
        if !self.pending.is_empty() {
            return None;
        }
        let e = match Pin::new(&mut self.framed).poll_next(cx) {
            Poll::Pending => return None,
            Poll::Ready(None) => ConnectionError::Closed,
            Poll::Ready(Some(Err(e))) => e.into(),
            Poll::Ready(Some(Ok(Frame::Message(resp)))) => ConnectionError::Unsolicited {
                response: resp.kind(),
            },
            Poll::Ready(Some(Ok(Frame::Unusable(_)))) => ConnectionError::Unsolicited {
                response: ResponseKind::Empty,
            },
        };
        Some(self.fail(e))
    }

    /// After the last answer owed: watch the socket at once (see
    /// [`watch_idle`](Self::watch_idle)). A failure found now is reported
    /// by the next `poll_ready`, for which the worker is woken.
    fn after_answer(&mut self, cx: &mut Context<'_>) {
        if self.watch_idle(cx).is_some() {
            cx.waker().wake_by_ref();
        }
    }

    fn fail(&self, e: ConnectionError) -> ConnectionError {
        self.status.set(e)
    }

    /// Fails if the oldest pending request is overdue; otherwise arms the
    /// timer for its due time. The timer is re-armed only when it fires, so
    /// a busy connection pays for one reset per `stuck_after` period.
    fn poll_stuck(&mut self, cx: &mut Context<'_>) -> Result<(), ConnectionError> {
        let Some(front) = self.pending.front() else {
            return Ok(());
        };
        let (request, sent_at) = (front.kind, front.sent_at);
        let limit = if request.is_handshake() {
            self.stuck_after_handshake
        } else {
            self.stuck_after
        };
        let Some(after) = limit else {
            return Ok(());
        };
        let due = sent_at + after;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() > due {
            timer.as_mut().reset(due);
        }
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now >= due {
                let waited = now - sent_at;
                return Err(self.status.set(ConnectionError::Stuck { request, waited }));
            }
            timer.as_mut().reset(due);
        }
        Ok(())
    }
}

impl Sink<Tagged> for Transport {
    type Error = ConnectionError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        if let Err(e) = ready!(Pin::new(&mut this.framed).poll_ready(cx)) {
            return Poll::Ready(Err(this.fail(e.into())));
        }
        if let Some(e) = this.status.get() {
            return Poll::Ready(Err(e.clone()));
        }
        if let Some(e) = this.watch_idle(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Tagged) -> Result<(), Self::Error> {
        let this = &mut *self;
        let mut req = item.req;
        let kind = req.kind();
        let id = this.next_id;
        this.next_id += 1;
        req.correlation_id = Some(id);
        if let Err(e) = Pin::new(&mut this.framed).start_send(req) {
            return Err(this.fail(e.into()));
        }
        this.pending.push_back(Slot {
            kind,
            id,
            sent_at: Instant::now(),
            _permit: item.permit,
        });
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        Pin::new(&mut this.framed)
            .poll_flush(cx)
            .map_err(|e| this.fail(e.into()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        Pin::new(&mut this.framed)
            .poll_close(cx)
            .map_err(|e| this.fail(e.into()))
    }
}

impl Stream for Transport {
    /// The outer error fails the connection; the inner one fails only the
    /// call whose answer it is.
    type Item = Result<Answer, ConnectionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(front) = this.pending.front() {
            if front.kind == RequestKind::Shutdown {
                // `shutdown` gets no answer: stand one in, in its place.
                this.pending.pop_front();
                this.after_answer(cx);
                return Poll::Ready(Some(Ok(Ok(ExtResponse::default()))));
            }
        }
        let polled = Pin::new(&mut this.framed).poll_next(cx);
        let item = match polled {
            Poll::Pending => {
                if let Err(e) = this.poll_stuck(cx) {
                    return Poll::Ready(Some(Err(e)));
                }
                return Poll::Pending;
            }
            Poll::Ready(item) => item,
        };
        let mut resp = match item {
            Some(Ok(Frame::Message(resp))) => resp,
            Some(Ok(Frame::Unusable(e))) => {
                // Well framed, so the stream is still in step: only the
                // call this answer belongs to fails.
                if this.pending.pop_front().is_none() {
                    let e = ConnectionError::Unsolicited {
                        response: ResponseKind::Empty,
                    };
                    return Poll::Ready(Some(Err(this.fail(e))));
                }
                this.after_answer(cx);
                return Poll::Ready(Some(Ok(Err(ConnectionError::UnusableAnswer(Arc::new(e))))));
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(this.fail(e.into())))),
            None => return Poll::Ready(Some(Err(this.fail(ConnectionError::Closed)))),
        };
        let Some(slot) = this.pending.pop_front() else {
            let e = ConnectionError::Unsolicited {
                response: resp.kind(),
            };
            return Poll::Ready(Some(Err(this.fail(e))));
        };
        // The id is the connection's business: verified here, not passed on.
        match resp.correlation_id.take() {
            Some(got) if got != slot.id => {
                let e = ConnectionError::Mismatched {
                    expected: slot.id,
                    got: Some(got),
                };
                return Poll::Ready(Some(Err(this.fail(e))));
            }
            // From the first echoed id on, every answer must carry one.
            Some(_) => this.status.set_echoes_ids(),
            None if this.status.echoes_ids() => {
                let e = ConnectionError::Mismatched {
                    expected: slot.id,
                    got: None,
                };
                return Poll::Ready(Some(Err(this.fail(e))));
            }
            None => {}
        }
        if !resp.kind().answers(slot.kind) {
            let e = ConnectionError::WrongResponse {
                request: slot.kind,
                response: resp.kind(),
            };
            return Poll::Ready(Some(Err(this.fail(e))));
        }
        this.after_answer(cx);
        Poll::Ready(Some(Ok(Ok(resp))))
    }
}

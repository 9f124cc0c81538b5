use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::sync::OwnedSemaphorePermit;

use super::shared::{Answer, Reader, State};
use super::{ConnectionError, Handle};
use crate::proto::{ExtRequest, ExtResponse};

/// The future of one [`Connection`](super::Connection) call.
///
/// Its first poll writes the request (a future dropped before that sends
/// nothing and frees its slot at once); after that it waits for the answer,
/// reading the socket itself while it holds the connection's reader role.
pub struct ResponseFuture {
    state: Call,
}

/// Where a call is.
enum Call {
    /// Not written yet.
    Start {
        handle: Arc<Handle>,
        req: ExtRequest,
        permit: Option<OwnedSemaphorePermit>,
    },
    /// Written as request `id`; waiting for its answer.
    Waiting { handle: Arc<Handle>, id: u64 },
    /// Failed before anything was written.
    Failed(ConnectionError),
    /// Resolved.
    Done,
}

impl ResponseFuture {
    pub(super) fn new(
        handle: Arc<Handle>,
        req: ExtRequest,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        ResponseFuture {
            state: Call::Start {
                handle,
                req,
                permit,
            },
        }
    }

    pub(super) fn failed(e: ConnectionError) -> Self {
        ResponseFuture {
            state: Call::Failed(e),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            Call::Start { .. } => "start",
            Call::Waiting { .. } => "waiting",
            Call::Failed(_) => "failed",
            Call::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl Future for ResponseFuture {
    type Output = Result<ExtResponse, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match std::mem::replace(&mut this.state, Call::Done) {
            Call::Done => panic!("ResponseFuture polled after completion"),
            Call::Failed(e) => Poll::Ready(Err(e)),
            Call::Start {
                handle,
                req,
                permit,
            } => {
                let shared = &handle.shared;
                let mut st = shared.lock();
                if st.is_failed() {
                    let e = shared
                        .status
                        .get()
                        .cloned()
                        .unwrap_or(ConnectionError::Closed);
                    return Poll::Ready(Err(e));
                }
                let id = match st.enqueue(req, permit, cx.waker()) {
                    Ok(id) => id,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                if st.reader() != Reader::Caller(id) {
                    // Another caller reads; it finishes the write if the
                    // socket cannot take it all now.
                    st.write_for_reader(&shared.status, id);
                }
                let (poll, wake) = wait(&mut st, &handle, id, cx);
                drop(st);
                finish(this, handle, id, poll, wake)
            }
            Call::Waiting { handle, id } => {
                let mut st = handle.shared.lock();
                let (poll, wake) = wait(&mut st, &handle, id, cx);
                drop(st);
                finish(this, handle, id, poll, wake)
            }
        }
    }
}

/// One look for the answer of call `id`: as the reader, read first; if it
/// has arrived, take it and, as the reader, hand the role on (the waker
/// returned is woken once the lock is released).
fn wait(
    st: &mut State,
    handle: &Handle,
    id: u64,
    cx: &mut Context<'_>,
) -> (Poll<Answer>, Option<Waker>) {
    let shared = &handle.shared;
    if st.reader() != Reader::Caller(id)
        && (st.reader() == Reader::Background || st.reader_is_behind())
    {
        // The background task reads, or the reading caller has not run
        // since the socket rang (its future may be kept but not polled):
        // this caller, running now, reads instead.
        st.take_reader(id);
    }
    let reading = st.reader() == Reader::Caller(id);
    if reading {
        st.drive(&shared.status, cx.waker(), Some(id));
    }
    match st.take(id) {
        Some(answer) => {
            let wake = if reading {
                st.hand_off(&shared.status)
            } else {
                None
            };
            (Poll::Ready(answer), wake)
        }
        None => {
            st.park(id, cx.waker());
            (Poll::Pending, None)
        }
    }
}

fn finish(
    this: &mut ResponseFuture,
    handle: Arc<Handle>,
    id: u64,
    poll: Poll<Answer>,
    wake: Option<Waker>,
) -> Poll<Answer> {
    if let Some(w) = wake {
        w.wake();
    }
    if poll.is_pending() {
        this.state = Call::Waiting { handle, id };
    }
    poll
}

impl Drop for ResponseFuture {
    /// A call dropped while waiting: its answer, when it comes, is thrown
    /// away (the request keeps its slot until then); if it was reading, the
    /// reader role passes on.
    fn drop(&mut self) {
        if let Call::Waiting { handle, id } = &self.state {
            let wake = {
                let mut st = handle.shared.lock();
                st.abandon(*id);
                if st.reader() == Reader::Caller(*id) {
                    st.hand_off(&handle.shared.status)
                } else {
                    None
                }
            };
            if let Some(w) = wake {
                w.wake();
            }
        }
    }
}

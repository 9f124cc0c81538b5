//! The host's side of one extension connection, as a [`tower::Service`].
//!
//! A [`Connection`] sends [`ExtRequest`]s over any byte stream (a Unix
//! socket in practice) and resolves each call with its own [`ExtResponse`].
//! Answers are matched to requests strictly by order, with what the
//! protocol needs on top:
//!
//! - **A caller that gives up never shifts the answers.** A timed-out call's
//!   request stays in the queue; its late answer is read and thrown away.
//! - **The in-flight limit counts what the extension still owes.** A
//!   request holds one of `max_in_flight` slots until its answer arrives,
//!   not until its caller stops waiting, so callers never pile up behind an
//!   extension that has fallen silent. The slot is taken in
//!   [`poll_ready`] (the way tower's `ConcurrencyLimit` takes its permit),
//!   so a full connection is *not ready*: `tower::load_shed` sheds, and
//!   `tower::balance` picks another replica. A clone starts without a slot.
//! - **Violations reset the connection.** An answer with nothing pending, an
//!   answer of the wrong kind, an undecodable or oversized frame, or an
//!   oldest request overdue past `stuck_after` fails every pending call with
//!   a typed [`ConnectionError`].
//! - **The cause is kept.** Once the transport fails, every pending and later
//!   call gets the same error, and [`poll_ready`] reports it, so a
//!   reconnecting layer can replace the connection.
//!
//! `Connection` is cheap to clone; clones share the socket and may be used
//! from many tasks at once. It implements tower's `Load` (answers owed),
//! and since a broken connection fails `poll_ready`,
//! `tower::reconnect::Reconnect` replaces it transparently.
//!
//! # No task between a caller and the socket
//!
//! A call costs no hand-off to another task: the caller's own task writes
//! the request and reads the answer, the way a blocking client would, while
//! requests still pipeline.
//!
//! - **Writing.** On its first poll, a call numbers its request, frames it
//!   into the connection's write buffer and writes it to the socket, under
//!   a short lock (a `std::sync::Mutex`, never held across an await). If
//!   the socket cannot take it all, the rest stays buffered, in order, and
//!   the reader finishes it: frames are never cut or interleaved. A call
//!   dropped before its first poll has written nothing and frees its slot.
//! - **Reading.** Tokio keeps one read waker per socket, so exactly one
//!   party polls it: the *reader*. A call that finds no one reading becomes
//!   the reader; the others wait. The reader reads every frame that has
//!   arrived, matches each to the oldest request owed an answer (the rules
//!   above), stores it, frees its slot and wakes its caller. When it finds
//!   its own answer it takes it and hands the role to the oldest caller
//!   still waiting (waking it), or, with none, to the background task.
//!   A reader dropped while waiting hands the role on the same way; an
//!   answer stored for a caller that then went away is thrown away.
//! - **The background task** is the reader of last resort: it reads while
//!   no caller waits, so answers owed to callers that gave up are still
//!   consumed (and their slots freed), the extension closing an idle
//!   connection or sending an unsolicited answer is noticed at once, and
//!   the stuck timer runs. Handing it the role registers its waker with the
//!   socket without waking it: a sequential call never waits for it, and it
//!   runs only when something arrives that no caller is waiting for. When
//!   every handle is gone it writes what is left and closes the socket.
//! - **A reader that is not polled holds no one up.** A call future can be
//!   kept without being polled (under `timeout(d, &mut call)`, or in a
//!   `select!` loop whose other branch awaits another call). The socket
//!   and the stuck timer are polled with an alarm waker that wakes the
//!   reader and counts its rings: a caller that runs while the reader has
//!   not run since the last ring takes the role, and while other callers
//!   wait the alarm also wakes the background task, which takes the role
//!   if the reader still has not run after one yield. The kept call's
//!   answer is stored for it in its place.
//! - **Failure.** A failure found by whoever reads (or writes) fails every
//!   request owed an answer with the same error, frees their slots and
//!   closes the socket.
//!
//! # Example
//!
//! ```
//! use exthost::client::Connection;
//! use exthost::proto::ExtRequest;
//! use exthost::server::{Call, Extension};
//! use exthost::Tool;
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An in-memory pipe stands in for the extension's socket.
//! let (host_io, ext_io) = tokio::io::duplex(4096);
//! let echo = Extension::new("demo")
//!     .tool(Tool::new("echo", "Returns its arguments", serde_json::json!({"type": "object"})));
//! tokio::spawn(echo.serve_connection(
//!     ext_io,
//!     service_fn(|call: Call| async move {
//!         match call {
//!             Call::Tool(t) => Ok::<_, std::convert::Infallible>(t.args),
//!             _ => Ok(String::new()),
//!         }
//!     }),
//! ));
//!
//! let conn = Connection::new(host_io);
//! let resp = conn.oneshot(ExtRequest::tool_call("echo", r#"{"hi":1}"#)).await?;
//! assert_eq!(resp, exthost::proto::ExtResponse::tool_result(r#"{"hi":1}"#));
//! # Ok(())
//! # }
//! ```
//!
//! [`poll_ready`]: tower::Service::poll_ready

mod error;
mod future;
mod shared;
mod status;

pub use error::ConnectionError;
pub use future::ResponseFuture;

use std::fmt;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::Service;

use crate::proto::{ExtRequest, ExtResponse};
use shared::Shared;

/// The most a correlation id adds to a request: a 2-byte tag and a
/// 10-byte varint.
pub(crate) const CORRELATION_ID_MAX_LEN: usize = 12;

/// A request service over one extension connection.
///
/// See the [module documentation](self) for what it guarantees.
pub struct Connection {
    handle: Arc<Handle>,
    /// Waits for an in-flight slot in `poll_ready`.
    slots: PollSemaphore,
    /// The slot `poll_ready` took, used up by `call`.
    permit: Option<OwnedSemaphorePermit>,
}

/// A clone shares the socket but holds no slot of its own, like tower's
/// `ConcurrencyLimit`.
impl Clone for Connection {
    fn clone(&self) -> Self {
        Connection {
            handle: self.handle.clone(),
            slots: self.slots.clone(),
            permit: None,
        }
    }
}

/// What every handle and call shares; when the last one goes, the
/// background task flushes what is left and closes the socket.
struct Handle {
    shared: Arc<Shared>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    max_frame_len: usize,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("max_in_flight", &self.handle.max_in_flight)
            .field("failure", &self.failure())
            .finish()
    }
}

/// Settings for a [`Connection`].
#[derive(Debug, Clone)]
pub struct Builder {
    max_in_flight: usize,
    stuck_after: Option<Duration>,
    stuck_after_handshake: Option<Duration>,
    max_frame_len: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            max_in_flight: 1,
            stuck_after: None,
            stuck_after_handshake: None,
            max_frame_len: crate::codec::MAX_FRAME_LEN,
        }
    }
}

impl Builder {
    /// How many requests the extension may owe answers to at once (default 1).
    ///
    /// More than one pipelines requests on the connection; the extension
    /// still answers in order.
    ///
    /// # Panics
    ///
    /// If `n` is zero.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        assert!(n > 0, "max_in_flight must be at least 1");
        self.max_in_flight = n;
        self
    }

    /// Reset the connection when its oldest request has been unanswered for
    /// this long (default: never). Set it to the call timeout plus a margin.
    pub fn stuck_after(mut self, after: Option<Duration>) -> Self {
        self.stuck_after = after;
        self
    }

    /// The same for the handshake's requests (`hello`, `configure`,
    /// `register_tools`), which run under the handshake timeout rather than
    /// the call timeout (default: never). Set it to the handshake timeout
    /// plus a margin.
    pub fn stuck_after_handshake(mut self, after: Option<Duration>) -> Self {
        self.stuck_after_handshake = after;
        self
    }

    /// The largest frame accepted or sent (default and maximum of the
    /// protocol: 16 MiB).
    pub fn max_frame_len(mut self, len: usize) -> Self {
        self.max_frame_len = len;
        self
    }

    /// Starts a connection over `io`. Must be called inside a tokio runtime:
    /// it spawns the connection's background task (see the
    /// [module documentation](self)).
    pub fn build<T>(self, io: T) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let in_flight = Arc::new(Semaphore::new(self.max_in_flight));
        let shared = Arc::new(Shared::new(
            Box::new(io),
            self.max_frame_len,
            self.stuck_after,
            self.stuck_after_handshake,
            in_flight.clone(),
        ));
        tokio::spawn(shared.clone().background());
        Connection {
            slots: PollSemaphore::new(in_flight.clone()),
            permit: None,
            handle: Arc::new(Handle {
                shared,
                in_flight,
                max_in_flight: self.max_in_flight,
                max_frame_len: self.max_frame_len,
            }),
        }
    }
}

impl Connection {
    /// Starts a connection over `io` with default settings.
    ///
    /// Must be called inside a tokio runtime.
    pub fn new<T>(io: T) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Builder::default().build(io)
    }

    /// Settings for a new connection.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Why the connection failed, if it has.
    pub fn failure(&self) -> Option<&ConnectionError> {
        self.handle.shared.status.get()
    }

    /// Completes when the connection fails (at once if it has), with the
    /// cause. A supervisor awaits this to notice a lost extension without
    /// making a call.
    pub async fn broken(&self) -> ConnectionError {
        self.handle.shared.status.wait().await
    }

    /// Whether the extension has answered with a correlation id, so that
    /// every answer on this connection is checked against its request (see
    /// [`crate::proto`]).
    pub fn echoes_correlation_ids(&self) -> bool {
        self.handle.shared.status.echoes_ids()
    }

    /// Whether the connection has failed; every call on it now fails.
    pub fn is_broken(&self) -> bool {
        self.failure().is_some()
    }

    /// Slots in use: requests the extension still owes answers to
    /// (including those whose callers have given up), and slots taken by
    /// `poll_ready` for a call not made yet.
    pub fn in_flight(&self) -> usize {
        self.handle.max_in_flight - self.handle.in_flight.available_permits()
    }

    /// Sends `shutdown`, which takes no in-flight slot: it goes out at once,
    /// behind whatever is already queued, and resolves in its place in the
    /// order (the extension owes it no answer). No `poll_ready` is needed.
    ///
    /// # Errors
    ///
    /// The connection's [`ConnectionError`] if it has failed.
    pub fn shutdown(&self) -> ResponseFuture {
        self.send(ExtRequest::shutdown(), None)
    }

    fn send(&self, req: ExtRequest, permit: Option<OwnedSemaphorePermit>) -> ResponseFuture {
        // A request that cannot be framed fails alone, before anything is
        // written.
        let len = prost::Message::encoded_len(&req) + CORRELATION_ID_MAX_LEN;
        let max = self.handle.max_frame_len;
        if len > max {
            return ResponseFuture::failed(ConnectionError::RequestTooLarge { len, max });
        }
        ResponseFuture::new(self.handle.clone(), req, permit)
    }
}

/// The load of a connection is the number of answers it is owed, so that
/// tower's load balancers (`tower::balance::p2c`) can spread calls over
/// connections to several replicas of an extension.
impl tower::load::Load for Connection {
    type Metric = usize;

    fn load(&self) -> usize {
        self.in_flight()
    }
}

impl Service<ExtRequest> for Connection {
    type Response = ExtResponse;
    type Error = ConnectionError;
    type Future = ResponseFuture;

    /// Ready when the connection is healthy and an in-flight slot is free;
    /// the slot is held from here until the extension answers.
    ///
    /// # Errors
    ///
    /// The connection's [`ConnectionError`] once it has failed.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(e) = self.failure() {
            return Poll::Ready(Err(e.clone()));
        }
        if self.permit.is_none() {
            // The slots close when the connection fails, so a caller
            // waiting for one learns of it.
            match ready!(self.slots.poll_acquire(cx)) {
                Some(permit) => self.permit = Some(permit),
                None => {
                    let e = self.failure().cloned().unwrap_or(ConnectionError::Closed);
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ExtRequest) -> Self::Future {
        let permit = self
            .permit
            .take()
            .expect("no in-flight slot; poll_ready must be called first");
        if req.expects_response() {
            self.send(req, Some(permit))
        } else {
            // `shutdown` is owed no answer, so it keeps no slot.
            drop(permit);
            self.send(req, None)
        }
    }
}

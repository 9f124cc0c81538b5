//! The state every handle and call of one connection shares: the socket,
//! its buffers, the queue of requests owed an answer, and who reads.
//!
//! Everything here runs under one short `std::sync::Mutex`, never across
//! an await. The socket is only ever polled with the *reader's* waker (the
//! waiting caller that holds the reader role, or the background task when
//! no caller does): tokio keeps one read and one write waker per socket, so
//! a second party polling it would steal the reader's wake-ups.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};
use tokio_util::codec::Decoder;

use super::status::Status;
use super::ConnectionError;
use crate::codec::{encode_frame, CodecError, Frame, TolerantClientCodec};
use crate::proto::{ExtRequest, ExtResponse, RequestKind, ResponseKind};

/// One answer as the connection hands it to its caller: the response, or
/// why this answer (and only it) could not be used.
pub(crate) type Answer = Result<ExtResponse, ConnectionError>;

/// Any byte stream a connection can run over.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// How much room a read asks for; a frame's payload reserves its own size.
const READ_CHUNK: usize = 8 * 1024;

/// Buffers grown past this (by a large message) are released once empty,
/// so that one big message does not pin its size for the connection's life.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Where a request's answer stands.
enum Answered {
    /// Not answered; its caller waits (with the waker to wake, once it has
    /// polled).
    Owed(Option<Waker>),
    /// Not answered, and its caller has gone: the answer will be thrown away.
    Abandoned,
    /// Answered; the caller has not taken it yet.
    Ready(Answer),
    /// Answered and taken (or thrown away): ready to leave the queue.
    Done,
}

/// One request written to the extension.
struct Entry {
    id: u64,
    kind: RequestKind,
    /// When it was queued, if a stuck limit applies to it.
    sent_at: Option<Instant>,
    /// Released when the answer arrives (or the connection dies), not when
    /// the caller gives up: the limit counts what the extension still owes.
    permit: Option<OwnedSemaphorePermit>,
    answered: Answered,
}

/// The waker the socket and the stuck timer are polled with, whoever
/// reads: it wakes the reader, and counts each ring so that a reader whose
/// future is kept but no longer polled (a `select!` branch, a call under
/// `timeout(d, &mut call)`) can be told from one that is about to run.
/// While other callers wait it also wakes the background task, which takes
/// the role from a reader that has not run since the ring (see
/// [`Shared::background`]), so no caller is held up behind it.
struct Alarm {
    /// Rings so far (socket readiness, the stuck timer).
    rings: AtomicU64,
    /// The reader's own waker (a caller's, or the background task's).
    reader: AtomicWaker,
    /// The background task's waker.
    background: AtomicWaker,
    /// Whether a caller other than the reader waits for an answer.
    followers: AtomicBool,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.rings.fetch_add(1, Ordering::AcqRel);
        if self.followers.load(Ordering::Acquire) {
            self.background.wake();
        }
        self.reader.wake();
    }
}

/// Who polls the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    /// The connection's background task: no caller is waiting.
    Background,
    /// The waiting caller of this request.
    Caller(u64),
}

/// What one connection shares between its handles, its calls and its
/// background task.
pub(crate) struct Shared {
    state: Mutex<State>,
    pub(crate) status: Status,
}

pub(crate) struct State {
    /// `None` once the connection has failed (dropping it closes the
    /// socket).
    io: Option<Box<dyn Io>>,
    codec: TolerantClientCodec,
    read_buf: BytesMut,
    /// Frames encoded but not yet accepted by the socket, in order.
    write_buf: BytesMut,
    /// Every request not yet taken by its caller, in the order written.
    /// Entries before `owed` are answered; from `owed` on, the extension
    /// still owes the answers, and the next frame answers `entries[owed]`.
    entries: VecDeque<Entry>,
    owed: usize,
    /// The correlation id of the next request; ids are consecutive, so an
    /// entry's index is its id minus the front's.
    next_id: u64,
    reader: Reader,
    alarm: Arc<Alarm>,
    /// `alarm` as a waker: what the socket and the timer are polled with.
    socket_waker: Waker,
    /// The alarm's rings when the reader last drove the socket: more since
    /// means the reader has not yet looked at what woke it.
    rung: u64,
    /// The `rung` at which the background task last found the reader
    /// behind; still the same at its next look, it takes the role.
    suspect: Option<u64>,
    /// The background task's waker, once it has run.
    background: Option<Waker>,
    timer: Option<Pin<Box<Sleep>>>,
    stuck_after: Option<Duration>,
    stuck_after_handshake: Option<Duration>,
    /// Every handle is gone: the background task flushes what is left and
    /// ends.
    closed: bool,
}

impl Shared {
    pub(crate) fn new(
        io: Box<dyn Io>,
        max_frame_len: usize,
        stuck_after: Option<Duration>,
        stuck_after_handshake: Option<Duration>,
        slots: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        let alarm = Arc::new(Alarm {
            rings: AtomicU64::new(0),
            reader: AtomicWaker::new(),
            background: AtomicWaker::new(),
            followers: AtomicBool::new(false),
        });
        Shared {
            state: Mutex::new(State {
                io: Some(io),
                codec: TolerantClientCodec::with_max_frame_len(max_frame_len),
                read_buf: BytesMut::new(),
                write_buf: BytesMut::new(),
                entries: VecDeque::new(),
                owed: 0,
                next_id: 1,
                reader: Reader::Background,
                socket_waker: Waker::from(alarm.clone()),
                alarm,
                rung: 0,
                suspect: None,
                background: None,
                timer: None,
                stuck_after,
                stuck_after_handshake,
                closed: false,
            }),
            status: Status::new(slots),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves the state consistent enough to fail
        // calls; never poison every later call with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every handle is gone: let the background task finish.
    pub(crate) fn close(&self) {
        let waker = {
            let mut st = self.lock();
            st.closed = true;
            st.background.clone()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The background task: the reader of last resort. It polls the socket
    /// only while no caller holds the reader role (answers owed to callers
    /// that gave up, the extension closing an idle connection, the stuck
    /// timer); a caller taking the role leaves it parked, a caller handing
    /// the role back registers the task's waker without waking it.
    ///
    /// While callers other than the reader wait, each ring of the socket
    /// wakes it too: if the reader has not run since the ring, it looks
    /// once more after yielding, and if the reader still has not run (its
    /// future is kept but not polled), it takes the role, so the other
    /// callers get their answers.
    pub(crate) async fn background(self: Arc<Self>) {
        std::future::poll_fn(|cx| {
            let mut st = self.lock();
            st.alarm.background.register(cx.waker());
            if !st
                .background
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                st.background = Some(cx.waker().clone());
                if st.reader == Reader::Background {
                    st.alarm.reader.register(cx.waker());
                }
            }
            if st.io.is_none() {
                return Poll::Ready(());
            }
            if st.closed {
                // Whatever was written (a last `shutdown`) still goes out.
                let mut cx = Context::from_waker(cx.waker());
                return match st.flush(&mut cx) {
                    Ok(false) => Poll::Pending,
                    Ok(true) | Err(_) => {
                        st.io = None;
                        Poll::Ready(())
                    }
                };
            }
            match st.reader {
                Reader::Background => {
                    st.suspect = None;
                    st.drive(&self.status, cx.waker(), None);
                }
                Reader::Caller(_) if st.reader_is_behind() => {
                    if st.suspect == Some(st.rung) {
                        st.suspect = None;
                        st.reader = Reader::Background;
                        st.drive(&self.status, cx.waker(), None);
                    } else {
                        // Give the reader, woken by the same ring, its turn.
                        st.suspect = Some(st.rung);
                        cx.waker().wake_by_ref();
                    }
                }
                Reader::Caller(_) => st.suspect = None,
            }
            if st.io.is_none() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl State {
    fn index(&self, id: u64) -> Option<usize> {
        let front = self.entries.front()?.id;
        let i = usize::try_from(id.checked_sub(front)?).ok()?;
        (i < self.entries.len()).then_some(i)
    }

    pub(crate) fn reader(&self) -> Reader {
        self.reader
    }

    /// Whether the socket or the timer rang since the reading caller last
    /// drove it: it has not run since (or is about to).
    pub(crate) fn reader_is_behind(&self) -> bool {
        matches!(self.reader, Reader::Caller(_))
            && self.alarm.rings.load(Ordering::Acquire) != self.rung
    }

    /// Call `id`, waiting and not answered, becomes the reader: the role
    /// was the background task's, or its caller is behind. The caller it
    /// replaces (if any) keeps waiting as a follower.
    pub(crate) fn take_reader(&mut self, id: u64) {
        let i = self.index(id).expect("a waiting call's entry stays queued");
        if matches!(self.entries[i].answered, Answered::Owed(_)) {
            if matches!(self.reader, Reader::Caller(_)) {
                self.alarm.followers.store(true, Ordering::Release);
            }
            self.reader = Reader::Caller(id);
        }
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.io.is_none()
    }

    /// Numbers `req`, frames it into the write buffer and queues it as owed
    /// (its caller waking with `waker`). If no caller is reading, the
    /// caller becomes the reader. Nothing is written to the socket yet.
    ///
    /// # Errors
    ///
    /// [`ConnectionError::RequestTooLarge`] if it cannot be framed; nothing
    /// was queued.
    pub(crate) fn enqueue(
        &mut self,
        mut req: ExtRequest,
        permit: Option<OwnedSemaphorePermit>,
        waker: &Waker,
    ) -> Result<u64, ConnectionError> {
        let id = self.next_id;
        let kind = req.kind();
        req.correlation_id = Some(id);
        let max = self.codec.max_frame_len();
        if let Err(e) = encode_frame(&req, max, &mut self.write_buf) {
            let len = match e {
                CodecError::FrameTooLarge { len, .. } => len,
                _ => prost::Message::encoded_len(&req),
            };
            return Err(ConnectionError::RequestTooLarge { len, max });
        }
        drop(req);
        self.next_id += 1;
        let limit = if kind.is_handshake() {
            self.stuck_after_handshake
        } else {
            self.stuck_after
        };
        self.entries.push_back(Entry {
            id,
            kind,
            sent_at: limit.map(|_| Instant::now()),
            permit,
            answered: Answered::Owed(Some(waker.clone())),
        });
        if self.reader == Reader::Background {
            self.reader = Reader::Caller(id);
            self.alarm.reader.register(waker);
        } else {
            self.alarm.followers.store(true, Ordering::Release);
        }
        self.settle_shutdowns(Some(id));
        Ok(id)
    }

    /// Takes the answer of call `id` if it has arrived.
    pub(crate) fn take(&mut self, id: u64) -> Option<Answer> {
        let i = self.index(id).expect("a waiting call's entry stays queued");
        let entry = &mut self.entries[i];
        if !matches!(entry.answered, Answered::Ready(_)) {
            return None;
        }
        let Answered::Ready(answer) = std::mem::replace(&mut entry.answered, Answered::Done) else {
            unreachable!("checked above");
        };
        self.pop_done();
        Some(answer)
    }

    /// Records the waker of call `id`, still waiting (the reader's was
    /// registered with the alarm when it drove the socket).
    pub(crate) fn park(&mut self, id: u64, waker: &Waker) {
        let i = self.index(id).expect("a waiting call's entry stays queued");
        if let Answered::Owed(w) = &mut self.entries[i].answered {
            if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *w = Some(waker.clone());
            }
        }
        if self.reader != Reader::Caller(id) {
            self.alarm.followers.store(true, Ordering::Release);
        }
    }

    /// The caller of `id` stops waiting (its future was dropped): a later
    /// answer is thrown away; the request keeps its slot until answered.
    pub(crate) fn abandon(&mut self, id: u64) {
        let Some(i) = self.index(id) else { return };
        let entry = &mut self.entries[i];
        entry.answered = match std::mem::replace(&mut entry.answered, Answered::Done) {
            Answered::Owed(_) | Answered::Abandoned => Answered::Abandoned,
            Answered::Ready(_) | Answered::Done => Answered::Done,
        };
        self.pop_done();
    }

    /// The reader (`me`) leaves: the role goes to the oldest caller still
    /// waiting, whose waker is returned to be woken once the lock is
    /// released; with none, to the background task, whose waker is then
    /// registered with the socket (and the timer) here, without waking it.
    pub(crate) fn hand_off(&mut self, status: &Status) -> Option<Waker> {
        let mut waiting = self
            .entries
            .iter()
            .skip(self.owed)
            .filter_map(|e| match &e.answered {
                Answered::Owed(Some(w)) => Some((e.id, w)),
                _ => None,
            });
        let next = waiting.next().map(|(id, w)| (id, w.clone()));
        let more = waiting.next().is_some();
        self.alarm.followers.store(more, Ordering::Release);
        if let Some((id, waker)) = next {
            self.reader = Reader::Caller(id);
            self.alarm.reader.register(&waker);
            return Some(waker);
        }
        self.reader = Reader::Background;
        match self.background.clone() {
            Some(w) => self.drive(status, &w, None),
            // Not yet run: it will read when it first runs.
            None => self.drive(status, Waker::noop(), None),
        }
        None
    }

    /// Pushes what the write buffer holds into the socket with the
    /// alarm (a caller that is not the reader has written its frame; the
    /// reader is woken to finish if the socket is full).
    pub(crate) fn write_for_reader(&mut self, status: &Status, me: u64) {
        let waker = self.socket_waker.clone();
        let mut cx = Context::from_waker(&waker);
        if let Err(e) = self.flush(&mut cx) {
            // Answers already in the socket still reach their callers.
            let _ = self.read(status, &mut cx, Some(me));
            self.fail(status, e, Some(me));
        }
    }

    /// The reader's work, with the reader's waker: write what is buffered,
    /// read and match every answer that has arrived, and check the oldest
    /// request is not stuck. `me` is the caller running it (its own answer
    /// is not woken: it looks for it next).
    pub(crate) fn drive(&mut self, status: &Status, waker: &Waker, me: Option<u64>) {
        if self.io.is_none() {
            return;
        }
        self.alarm.reader.register(waker);
        // Rings from here on are news to this reader.
        self.rung = self.alarm.rings.load(Ordering::Acquire);
        let socket = self.socket_waker.clone();
        let mut cx = Context::from_waker(&socket);
        // A write that fails (the extension answered, then exited) still
        // lets the answers already in the socket reach their callers.
        let flushed = self.flush(&mut cx);
        let result = self
            .read(status, &mut cx, me)
            .and(flushed.map(drop))
            .and_then(|()| self.poll_stuck(&mut cx));
        if let Err(e) = result {
            self.fail(status, e, me);
        }
    }

    /// Writes the buffer out; `Ok(true)` once it is empty.
    fn flush(&mut self, cx: &mut Context<'_>) -> Result<bool, ConnectionError> {
        let Some(io) = self.io.as_mut() else {
            return Ok(true);
        };
        if self.write_buf.is_empty() {
            return Ok(true);
        }
        while !self.write_buf.is_empty() {
            match Pin::new(&mut **io).poll_write(cx, &self.write_buf) {
                Poll::Pending => return Ok(false),
                Poll::Ready(Ok(0)) => return Err(ConnectionError::Closed),
                Poll::Ready(Ok(n)) => self.write_buf.advance(n),
                Poll::Ready(Err(e)) => return Err(CodecError::Io(e).into()),
            }
        }
        if self.write_buf.capacity() > KEEP_CAPACITY {
            self.write_buf = BytesMut::new();
        }
        match Pin::new(&mut **io).poll_flush(cx) {
            Poll::Ready(Err(e)) => Err(CodecError::Io(e).into()),
            Poll::Ready(Ok(())) => Ok(true),
            Poll::Pending => Ok(false),
        }
    }

    /// Reads until the socket has nothing more, matching every frame.
    fn read(
        &mut self,
        status: &Status,
        cx: &mut Context<'_>,
        me: Option<u64>,
    ) -> Result<(), ConnectionError> {
        loop {
            while let Some(frame) = self.codec.decode(&mut self.read_buf)? {
                self.on_frame(status, frame, me)?;
            }
            if self.read_buf.is_empty() && self.read_buf.capacity() > KEEP_CAPACITY {
                self.read_buf = BytesMut::new();
            }
            if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 2 {
                self.read_buf.reserve(READ_CHUNK);
            }
            let io = self.io.as_mut().expect("checked by drive");
            match tokio_util::io::poll_read_buf(Pin::new(&mut **io), cx, &mut self.read_buf) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(e)) => return Err(CodecError::Io(e).into()),
                Poll::Ready(Ok(0)) => {
                    while let Some(frame) = self.codec.decode_eof(&mut self.read_buf)? {
                        self.on_frame(status, frame, me)?;
                    }
                    return Err(ConnectionError::Closed);
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    /// Matches one frame to the oldest request owed an answer.
    fn on_frame(
        &mut self,
        status: &Status,
        frame: Frame<ExtResponse>,
        me: Option<u64>,
    ) -> Result<(), ConnectionError> {
        let Some(entry) = self.entries.get(self.owed) else {
            let response = match &frame {
                Frame::Message(resp) => resp.kind(),
                Frame::Unusable(_) => ResponseKind::Empty,
            };
            return Err(ConnectionError::Unsolicited { response });
        };
        let mut resp = match frame {
            Frame::Message(resp) => resp,
            Frame::Unusable(e) => {
                // Well framed, so the stream is still in step: only the
                // call this answer belongs to fails.
                self.answer(Err(ConnectionError::UnusableAnswer(Arc::new(e))), me);
                return Ok(());
            }
        };
        // The id is the connection's business: verified here, not passed on.
        match resp.correlation_id.take() {
            Some(got) if got != entry.id => {
                return Err(ConnectionError::Mismatched {
                    expected: entry.id,
                    got: Some(got),
                });
            }
            // From the first echoed id on, every answer must carry one.
            Some(_) => status.set_echoes_ids(),
            None if status.echoes_ids() => {
                return Err(ConnectionError::Mismatched {
                    expected: entry.id,
                    got: None,
                });
            }
            None => {}
        }
        if !resp.kind().answers(entry.kind) {
            return Err(ConnectionError::WrongResponse {
                request: entry.kind,
                response: resp.kind(),
            });
        }
        self.answer(Ok(resp), me);
        Ok(())
    }

    /// Gives `answer` to the oldest request owed one, frees its slot and
    /// wakes its caller (unless that is `me`, which is running).
    fn answer(&mut self, answer: Answer, me: Option<u64>) {
        self.settle_oldest(answer, me);
        self.settle_shutdowns(me);
        self.pop_done();
    }

    /// Gives `answer` to the oldest request owed one (stored for a caller
    /// still waiting, woken unless it is `me`; thrown away for one that
    /// gave up) and frees its slot.
    fn settle_oldest(&mut self, answer: Answer, me: Option<u64>) {
        let entry = &mut self.entries[self.owed];
        self.owed += 1;
        entry.permit = None;
        entry.answered = match std::mem::replace(&mut entry.answered, Answered::Done) {
            Answered::Owed(waker) => {
                if let Some(w) = waker.filter(|_| Some(entry.id) != me) {
                    w.wake();
                }
                Answered::Ready(answer)
            }
            Answered::Abandoned | Answered::Ready(_) | Answered::Done => Answered::Done,
        };
    }

    /// `shutdown` gets no answer: once it is the oldest request owed one,
    /// an empty answer stands in for it, in its place in the order.
    fn settle_shutdowns(&mut self, me: Option<u64>) {
        if self
            .entries
            .get(self.owed)
            .is_some_and(|e| e.kind == RequestKind::Shutdown)
        {
            self.answer(Ok(ExtResponse::default()), me);
        }
    }

    fn pop_done(&mut self) {
        while self
            .entries
            .front()
            .is_some_and(|e| matches!(e.answered, Answered::Done))
        {
            self.entries.pop_front();
            self.owed -= 1;
        }
    }

    /// Fails the connection: records `e` (the first failure stays the
    /// cause), closes the socket, and fails every request still owed an
    /// answer with it, freeing their slots.
    fn fail(&mut self, status: &Status, e: ConnectionError, me: Option<u64>) {
        let e = status.set(e);
        self.io = None;
        self.timer = None;
        self.read_buf = BytesMut::new();
        self.write_buf = BytesMut::new();
        while self.owed < self.entries.len() {
            self.settle_oldest(Err(e.clone()), me);
        }
        self.pop_done();
        if let Some(w) = &self.background {
            w.wake_by_ref();
        }
    }

    /// Fails if the oldest request owed an answer is overdue; otherwise
    /// arms the timer for its due time. The timer is re-armed only when it
    /// fires, so a busy connection pays for one reset per period.
    fn poll_stuck(&mut self, cx: &mut Context<'_>) -> Result<(), ConnectionError> {
        let Some(front) = self.entries.get(self.owed) else {
            return Ok(());
        };
        let (request, Some(sent_at)) = (front.kind, front.sent_at) else {
            return Ok(());
        };
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
                return Err(ConnectionError::Stuck { request, waited });
            }
            timer.as_mut().reset(due);
        }
        Ok(())
    }
}

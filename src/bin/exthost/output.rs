//! Standard output and error that never panic.
//!
//! `print!` and `eprintln!` panic when the stream cannot be written (a pipe
//! whose reader went away: Rust ignores SIGPIPE, so the write fails with
//! EPIPE). Here a failed write is an error the commands handle: a closed
//! output is the end of the session, told in one log line, with the
//! extensions stopped gracefully and exit code [`CLOSED_OUTPUT`].

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio_util::sync::CancellationToken;

/// The exit code when standard output could not be written (its reader went
/// away, or the write failed otherwise).
pub(crate) const CLOSED_OUTPUT: u8 = 7;

/// Writes `text` to stdout and flushes it.
pub(crate) fn out(text: &str) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// Writes one line to stderr; a stderr that cannot be written is ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use say;

/// The log writer: stderr, where a failed write (a closed pipe, a full
/// disk) drops the line silently. Logs are not the session's output, so
/// losing them never ends or fails a session; and tracing-subscriber's fmt
/// layer, told of a failed write, would `eprintln!` about it, which panics
/// on the same closed stderr.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct QuietStderr;

impl io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QuietStderr {
    type Writer = QuietStderr;

    fn make_writer(&'a self) -> Self::Writer {
        QuietStderr
    }
}

/// Whether stdout's reader has gone, seen without writing: a pipe or
/// socket whose other end is closed reports an error or a hang-up, as does
/// a hung-up terminal. A file never does.
pub(crate) fn stdout_closed() -> bool {
    closed_within(PollTimeout::ZERO)
}

/// Whether stdin's writer has gone (a pipe with no writer left reports a
/// hang-up), seen without reading.
#[cfg_attr(not(feature = "mcp"), allow(dead_code))]
pub(crate) fn stdin_hung_up() -> bool {
    let stdin = io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        _ => false,
    }
}

fn closed_within(timeout: PollTimeout) -> bool {
    let stdout = io::stdout();
    // No events asked for: only an error or a hang-up wakes the poll.
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
    match poll(&mut fds, timeout) {
        Ok(n) if n > 0 => fds[0].revents().is_some_and(|r| {
            r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
        }),
        _ => false,
    }
}

/// The end of a session's output, told once: by the first write that
/// fails, or by the watch that sees stdout's reader go.
#[derive(Debug, Clone, Default)]
pub(crate) struct Closed {
    token: CancellationToken,
    told: Arc<AtomicBool>,
}

impl Closed {
    /// One that never logs: for a caller that tells the end itself (after
    /// telling a closed output from a client that left altogether).
    #[cfg_attr(not(feature = "mcp"), allow(dead_code))]
    pub(crate) fn silent() -> Self {
        let closed = Closed::default();
        closed.told.store(true, Ordering::SeqCst);
        closed
    }

    /// Marks the output closed, with the one log line (only the first
    /// call logs).
    pub(crate) fn close(&self, error: Option<&io::Error>) {
        if !self.told.swap(true, Ordering::SeqCst) {
            log_closed(error);
        }
        self.token.cancel();
    }

    /// Whether the output is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the output is closed.
    pub(crate) async fn closed(&self) {
        self.token.cancelled().await
    }

    /// Closes this when stdout's reader goes, even while nothing is being
    /// written. The watch runs on a thread of its own, blocked in `poll`,
    /// for the rest of the process's life.
    pub(crate) fn watch_stdout(&self) {
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("exthost-stdout-watch".into())
            .spawn(move || loop {
                if this.is_closed() {
                    return;
                }
                if closed_within(PollTimeout::NONE) {
                    this.close(None);
                    return;
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "cannot watch stdout; a closed output is seen at the next write");
        }
    }
}

/// The one log line of a closed output.
pub(crate) fn log_closed(error: Option<&io::Error>) {
    match error {
        Some(error) => {
            tracing::error!(%error, "standard output cannot be written; ending the session")
        }
        None => tracing::error!("standard output was closed by its reader; ending the session"),
    }
}

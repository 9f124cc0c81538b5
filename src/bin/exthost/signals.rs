//! Termination signals, handled from the first instant.
//!
//! Registered before any extension is spawned, so that a SIGTERM (service
//! managers, container runtimes), SIGINT (a terminal's Ctrl-C) or SIGHUP
//! (a closed terminal) during start-up stops the extensions started so far
//! gracefully instead of killing exthost.

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals that ask exthost to stop.
pub(crate) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Registers the handlers. Must be called inside the runtime.
    pub(crate) fn install() -> io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next one; its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

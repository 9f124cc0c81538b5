use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::{Notify, Semaphore};

use super::ConnectionError;

/// What a connection's transport tells its handles: the first failure (set
/// once, read by every caller, waiters woken when it is set), and whether
/// the extension echoes correlation ids.
#[derive(Debug)]
pub(crate) struct Status {
    cell: OnceLock<ConnectionError>,
    notify: Notify,
    echoes_ids: AtomicBool,
    /// The in-flight slots, closed on failure so that callers waiting for
    /// one in `poll_ready` learn of it.
    slots: Arc<Semaphore>,
}

impl Status {
    pub(crate) fn new(slots: Arc<Semaphore>) -> Self {
        Status {
            cell: OnceLock::new(),
            notify: Notify::new(),
            echoes_ids: AtomicBool::new(false),
            slots,
        }
    }

    /// Records that the extension echoes correlation ids; it stays so.
    pub(crate) fn set_echoes_ids(&self) {
        self.echoes_ids.store(true, Ordering::Relaxed);
    }

    pub(crate) fn echoes_ids(&self) -> bool {
        self.echoes_ids.load(Ordering::Relaxed)
    }

    /// Records `e` unless a failure is already recorded; returns the one in
    /// force.
    pub(crate) fn set(&self, e: ConnectionError) -> ConnectionError {
        let _ = self.cell.set(e);
        self.slots.close();
        self.notify.notify_waiters();
        self.cell.get().expect("failure was just set").clone()
    }

    pub(crate) fn get(&self) -> Option<&ConnectionError> {
        self.cell.get()
    }

    /// Waits until a failure is recorded.
    pub(crate) async fn wait(&self) -> ConnectionError {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(e) = self.get() {
                return e.clone();
            }
            notified.await;
        }
    }
}

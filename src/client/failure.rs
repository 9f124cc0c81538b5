use std::sync::OnceLock;

use tokio::sync::Notify;

use super::ConnectionError;

/// The first failure of a connection, set once by its transport and read by
/// every caller; waiters are woken when it is set.
#[derive(Debug, Default)]
pub(crate) struct Failure {
    cell: OnceLock<ConnectionError>,
    notify: Notify,
}

impl Failure {
    /// Records `e` unless a failure is already recorded; returns the one in
    /// force.
    pub(crate) fn set(&self, e: ConnectionError) -> ConnectionError {
        let _ = self.cell.set(e);
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

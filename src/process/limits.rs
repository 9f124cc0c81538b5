//! The host's descriptor limit: raised at start, given back to children.

use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The limits the process had before [`raise_fd_limit`] raised them: the
/// soft limit children get back, and the hard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit before it was raised (what extensions get).
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
    /// Whether the soft limit was raised (to `hard`).
    pub raised: bool,
}

static RAISED: OnceLock<Option<FdLimit>> = OnceLock::new();

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, once per
/// process (later calls return the first call's result), as process
/// supervisors and the Go runtime do: each extension costs the host a few
/// descriptors (its socket, its log pipe, its process handle), so a host of
/// many extensions needs more than the usual soft limit of 1024 (256 on
/// macOS, sometimes less in service units). Never lowers a limit.
///
/// Extensions spawned by exthost get back the soft limit the host had
/// before (programs that use `select(2)` break above 1024 descriptors).
///
/// The [`ServiceManager`](crate::manager::ServiceManager), the
/// [`Connector`](crate::connector::Connector) and
/// [`spawn`](super::spawn) call it at the first spawn; the `exthost`
/// command calls it at start. Call it yourself earlier if your own code
/// needs the headroom from the start. Returns the limits as they were,
/// or `None` if they cannot be read.
pub fn raise_fd_limit() -> Option<FdLimit> {
    *RAISED.get_or_init(|| {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
            .map_err(|e| tracing::debug!(error = %e, "cannot read the descriptor limit"))
            .ok()?;
        let mut limit = FdLimit {
            soft,
            hard,
            raised: false,
        };
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => {
                    limit.raised = true;
                    tracing::debug!(from = soft, to = hard, "raised the soft descriptor limit to the hard limit");
                }
                Err(e) => {
                    tracing::debug!(error = %e, soft, hard, "cannot raise the soft descriptor limit")
                }
            }
        }
        Some(limit)
    })
}

/// The soft and hard limits a child should get back, if the host raised
/// its own.
pub(super) fn for_children() -> Option<(u64, u64)> {
    raise_fd_limit()
        .filter(|l| l.raised)
        .map(|l| (l.soft, l.hard))
}

/// Whether `e` says the process or the system is out of descriptors or
/// memory (`EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`): retrying soon will not
/// help, and the error must be reported as what it is.
pub fn is_resource_exhausted(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::ENOBUFS)
    )
}

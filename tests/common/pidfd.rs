//! `pidfd_open(2)`: a descriptor that becomes readable when a process
//! exits, whether or not it is a child of ours. Neither stable std nor nix
//! offer it, so this is the one place the tests need `unsafe`.

use std::os::fd::{FromRawFd, OwnedFd};

use nix::libc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A process, watched for its exit.
pub struct PidFd(AsyncFd<OwnedFd>);

impl PidFd {
    /// A pidfd for `pid`; `None` if no such process exists (any more).
    pub fn open(pid: u32) -> Option<Self> {
        let pid = libc::pid_t::try_from(pid).expect("a pid fits in pid_t");
        // SAFETY: pidfd_open takes a pid and flags, passes no memory, and
        // returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            assert_eq!(
                err.raw_os_error(),
                Some(libc::ESRCH),
                "pidfd_open({pid}): {err}"
            );
            return None;
        }
        let fd = i32::try_from(fd).expect("a descriptor fits in i32");
        // SAFETY: the descriptor was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the `OwnedFd` is moved in, so it stays open, and is the
        // same descriptor, for as long as the `AsyncFd` lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .expect("register the pidfd");
        Some(PidFd(fd))
    }

    /// Completes when the process has exited (a zombie has).
    pub async fn exited(&self) {
        let mut ready = self.0.readable().await.expect("poll the pidfd");
        ready.retain_ready();
    }
}

//! The one place exthost needs `unsafe`: code that runs in the forked child
//! between `fork` and `exec`.
//!
//! `Command::pre_exec` is `unsafe` because the closure runs in a child that
//! may hold locks copied from other threads of the parent; it must only make
//! async-signal-safe system calls. Ours make three: `prctl(PR_SET_PDEATHSIG)`,
//! `getppid` and `setrlimit`.

#![allow(unsafe_code)]

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Makes the kernel SIGKILL the child when the thread that spawned it dies
/// (Linux), so extensions never outlive a host that was killed hard.
///
/// The signal follows the spawning *thread*: spawn from a thread that lives
/// as long as the host (a tokio worker thread, not `spawn_blocking`).
pub(crate) fn kill_with_parent(cmd: &mut tokio::process::Command) {
    let parent = Pid::this();
    // SAFETY: the closure only calls prctl(2) and getppid(2), both
    // async-signal-safe, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before the line above took effect.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

/// Gives the child the descriptor limits `soft` and `hard` (the host's own
/// soft limit was raised; see `limits`).
pub(crate) fn restore_fd_limit(cmd: &mut std::process::Command, soft: u64, hard: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls setrlimit(2), async-signal-safe, and
    // allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)?;
            Ok(())
        });
    }
}

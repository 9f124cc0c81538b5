//! The one place exthost needs `unsafe`: code that runs in the forked child
//! between `fork` and `exec`.
//!
//! `Command::pre_exec` is `unsafe` because the closure runs in a child that
//! may hold locks copied from other threads of the parent; it must only make
//! async-signal-safe system calls. Ours make `prctl(PR_SET_PDEATHSIG)`,
//! `getppid`, `setrlimit`, and, for a sandbox, `prctl(PR_SET_NO_NEW_PRIVS)`,
//! `landlock_restrict_self` and `close`. Everything they need (the limits,
//! the Landlock ruleset) is made by the host before the fork.

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

/// Applies a service's confinement in the child: the resource limits
/// `rlimits`, then the Landlock `sandbox`, if any. A sandbox that is
/// `required` and that the kernel did not enforce at all fails the spawn
/// with `EOPNOTSUPP`, and a failing `landlock_restrict_self` with its
/// errno; one that is not required runs without it in both cases.
pub(crate) fn confine(
    cmd: &mut std::process::Command,
    rlimits: super::confine::Rlimits,
    sandbox: Option<super::confine::PreparedSandbox>,
) {
    use std::os::unix::process::CommandExt;
    #[cfg(target_os = "linux")]
    let (mut ruleset, required) = match sandbox {
        Some(s) => (s.ruleset, s.required),
        None => (None, false),
    };
    #[cfg(not(target_os = "linux"))]
    drop(sandbox);
    // SAFETY: the closure only calls setrlimit(2), prctl(2),
    // landlock_restrict_self(2) and close(2), all async-signal-safe, on
    // values made before the fork; it allocates and frees nothing (the
    // ruleset's error path holds only an `io::Error` from errno).
    unsafe {
        cmd.pre_exec(move || {
            for (resource, soft, hard) in rlimits.iter().flatten() {
                nix::sys::resource::setrlimit(*resource, *soft, *hard)?;
            }
            #[cfg(target_os = "linux")]
            if let Some(ruleset) = ruleset.take() {
                match ruleset.restrict_self() {
                    Ok(status) => {
                        if required && status.ruleset == landlock::RulesetStatus::NotEnforced {
                            return Err(nix::errno::Errno::EOPNOTSUPP.into());
                        }
                    }
                    // Not required: run unconfined rather than fail
                    // (for example EPERM from a seccomp filter that
                    // forbids the calls). The child cannot tell the host;
                    // the status still lists the sandbox as prepared.
                    Err(_) if !required => {}
                    Err(e) => return Err(errno_of(&e).into()),
                }
            }
            Ok(())
        });
    }
}

/// The errno under a Landlock error (`EPERM` if there is none).
#[cfg(target_os = "linux")]
fn errno_of(e: &landlock::RulesetError) -> nix::errno::Errno {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(errno) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return nix::errno::Errno::from_raw(errno);
        }
        source = err.source();
    }
    nix::errno::Errno::EPERM
}

/// The kernel's Landlock ABI version: 0 when it has no Landlock (not built
/// in, or off at boot).
#[cfg(target_os = "linux")]
pub(crate) fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: nix::libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag,
    // the call only returns a number; no memory is read or written.
    let abi = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(abi.max(0)).unwrap_or(0)
}

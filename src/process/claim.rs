//! Claiming a services folder, so that two hosts started from one
//! configuration work side by side.
//!
//! The first host takes an exclusive `flock(2)` on
//! `<services_dir>/.exthost.lock` and puts its sockets straight in
//! `services_dir` (the reference's layout). A second host (another process,
//! or another connector in the same process) finds the lock taken and uses
//! a folder of its own, `<services_dir>/<pid>-<n>`, removed when it is done.
//! The kernel drops the lock when its holder dies, however it dies, so a
//! crashed host never blocks the next; instance folders left by dead hosts
//! are removed by the next host that claims the folder.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::fcntl::{Flock, FlockArg};

use super::{prepare_private_dir, Paths};

/// Numbers the instance folders of one process.
static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// A claimed services folder: where this host's sockets go.
#[derive(Debug)]
pub(crate) struct Claim {
    paths: Paths,
    /// Held for as long as the claim lives, when this host has the folder.
    _lock: Option<Flock<File>>,
    /// This host's own folder, when another holds the lock.
    instance: Option<PathBuf>,
}

impl Claim {
    /// Claims `paths.services_dir`; on failure, what could not be done and
    /// why (naming the path).
    pub(crate) fn new(paths: &Paths) -> Result<Self, (&'static str, io::Error)> {
        let dir = &paths.services_dir;
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
        prepare_private_dir(dir).map_err(|e| ("create the services folder", named(e)))?;
        Self::lock(paths).map_err(|e| ("lock the services folder", named(e)))
    }

    fn lock(paths: &Paths) -> io::Result<Self> {
        let dir = &paths.services_dir;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(".exthost.lock"))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                lock.set_len(0)?;
                lock.rewind()?;
                write!(lock, "{}", std::process::id())?;
                remove_dead_instances(dir);
                Ok(Claim {
                    paths: paths.clone(),
                    _lock: Some(lock),
                    instance: None,
                })
            }
            Err((mut file, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
                let instance = dir.join(format!("{}-{n}", std::process::id()));
                prepare_private_dir(&instance)?;
                tracing::info!(
                    services_dir = %dir.display(),
                    holder = holder.trim(),
                    instance = %instance.display(),
                    "the services folder is in use by another host; this one uses a folder of its own"
                );
                let mut paths = paths.clone();
                paths.services_dir = instance.clone();
                Ok(Claim {
                    paths,
                    _lock: None,
                    instance: Some(instance),
                })
            }
            Err((_, errno)) => Err(errno.into()),
        }
    }

    /// Where this host's sockets and logs go.
    pub(crate) fn paths(&self) -> &Paths {
        &self.paths
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(dir) = &self.instance {
            // Empty once every extension is stopped; otherwise left for the
            // next host that claims the folder.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Removes `<pid>-<n>` folders of hosts that no longer run.
fn remove_dead_instances(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, n)| n.parse::<usize>().ok().and(pid.parse::<i32>().ok()))
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

//! Who is on the other end of an extension socket.

use tokio::net::UnixStream;

use crate::connector::StartError;

/// Checks with `SO_PEERCRED` that the peer runs as our user and is the
/// spawned child or one of its descendants (wrappers that fork are fine).
/// A process that grabbed the socket path first is refused.
pub(crate) fn check_peer(service: &str, stream: &UnixStream, child: u32) -> Result<(), StartError> {
    let cred = stream.peer_cred().map_err(|source| StartError::Io {
        service: service.to_owned(),
        what: "read the peer's credentials",
        source,
    })?;
    let uid = nix::unistd::geteuid().as_raw();
    let pid = cred.pid().map(|p| p as u32);
    let descends = pid.is_some_and(|p| descends_from(p, child));
    if cred.uid() != uid || !descends {
        return Err(StartError::Impostor {
            service: service.to_owned(),
            peer_pid: pid,
            peer_uid: cred.uid(),
        });
    }
    Ok(())
}

/// Whether `pid` is `ancestor` or below it in the process tree.
fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        match parent_of(pid) {
            Some(ppid) if ppid > 1 => pid = ppid,
            _ => return false,
        }
    }
    false
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

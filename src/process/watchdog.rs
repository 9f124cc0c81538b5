//! Kills what extensions left behind when the host dies hard.
//!
//! The parent-death signal (see `sys`) reaches only an extension's leader;
//! a helper it forked into its process group would survive a SIGKILLed
//! host. So the first spawn also starts one small watchdog per host
//! process: `/bin/sh`, started through a shell that exits at once so that
//! it is nobody's child (no test or supervisor counting this host's
//! children sees it), in a process group of its own, ignoring the signals
//! a terminal or a service manager sends to the host's group, reading the host's list of live extension groups on its
//! stdin (`+PGID` when one starts, `-PGID` when it is gone). When the host
//! dies, however it dies, the kernel closes that pipe; the watchdog reads
//! end-of-file and SIGKILLs every group still listed, then exits.
//!
//! What it does not cover: a process that left its group (`setsid`,
//! `setpgid`) is out of reach without cgroups; and if the watchdog itself
//! is killed, the next spawn starts a new one.

use std::io::Write;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Mutex;

/// Kills every listed group on end of input. `$g` holds ` PGID` entries.
const SCRIPT: &str = r#"trap '' INT TERM HUP QUIT
g=""
while read -r op pg; do
  case "$op" in
    +) g="$g $pg" ;;
    -) n=""; for x in $g; do [ "$x" = "$pg" ] || n="$n $x"; done; g="$n" ;;
  esac
done
for x in $g; do kill -s KILL -- "-$x" 2>/dev/null; done
"#;

/// The write end of the watchdog's stdin.
static WATCHDOG: Mutex<Option<ChildStdin>> = Mutex::new(None);

/// Tells the watchdog a line; starts it first if there is none, or again
/// if it died (the write fails: Rust programs ignore SIGPIPE).
fn tell(line: &str) {
    let mut guard = WATCHDOG.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..2 {
        if guard.is_none() {
            *guard = start();
        }
        let Some(stdin) = guard.as_mut() else { return };
        if writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .is_ok()
        {
            return;
        }
        *guard = None;
    }
}

fn start() -> Option<ChildStdin> {
    use std::os::unix::process::CommandExt;
    // The outer shell starts the watchdog in the background with our pipe
    // as its stdin (saved in fd 3 first: a background job's stdin is
    // /dev/null before its own redirections), and exits; the watchdog is
    // reparented away from this process.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "exec 3<&0; /bin/sh -c \"$0\" <&3 3<&- &", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some((soft, hard)) = super::limits::for_children() {
        super::sys::restore_fd_limit(&mut cmd, soft, hard);
    }
    let spawned = cmd.spawn();
    match spawned {
        Ok(mut child) => {
            let stdin = child.stdin.take()?;
            // The outer shell exits at once.
            let _ = child.wait();
            Some(stdin)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot start the watchdog: extensions' helpers may outlive a host that is killed hard");
            None
        }
    }
}

/// Lists the process group `pgid` for killing if the host dies.
pub(super) fn watch(pgid: u32) {
    tell(&format!("+ {pgid}"));
}

/// Takes `pgid` off the list: nothing of it is left.
pub(super) fn unwatch(pgid: u32) {
    tell(&format!("- {pgid}"));
}

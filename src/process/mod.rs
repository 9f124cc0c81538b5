//! Extension processes: binary resolution, spawning, socket security,
//! graceful shutdown, and no orphans.
//!
//! [`spawn`] starts one service's process the way the reference did
//! (`serve --socket <services_dir>/<name>.sock`, or `serve --daemon …
//! --config …` for gateways; the host's environment inherited, `RUST_LOG`
//! included, with the config's `env` on top, so a `RUST_LOG` there wins;
//! stdout and stderr appended to `<logs_dir>/<name>.log`, rotated at a
//! size cap ([`LogFile`]); stale socket
//! removed) and more safely:
//!
//! - each child leads its own process group, so signals reach whatever it
//!   forks, and whenever an incarnation ends (stop, crash, lost connection,
//!   restart, host shutdown) the whole group is signalled (SIGTERM, grace,
//!   SIGKILL) while any member lives;
//! - on Linux each child gets SIGKILL when the host dies, even by SIGKILL,
//!   and a watchdog process SIGKILLs what its group still holds (helpers
//!   it forked); a process that left the group with `setsid` is out of
//!   reach without cgroups;
//! - socket paths over the OS limit are refused up front, naming the path;
//! - [`ProcessHandle::stop`] is graceful: `shutdown`, then SIGTERM, then
//!   SIGKILL, each after the grace period, and the child is always reaped;
//! - a service can be confined ([`ServiceConfig`](crate::config::ServiceConfig)'s
//!   `sha256`, `inherit_env`, `env_pass`, `limits`, `sandbox`): its binary
//!   is hashed and that same open file executed (through
//!   `/proc/self/fd/N`), its environment cleared to [`MINIMAL_ENV`], its
//!   resource limits set and its Landlock ruleset (built in the host)
//!   applied in the child before `exec`; what is in force is
//!   [`ProcessHandle::restrictions`];
//! - the first spawn raises the host's soft descriptor limit to its hard
//!   limit ([`raise_fd_limit`]), and each child gets back the soft limit
//!   the host had before.
//!
//! What goes wrong before the process runs is a [`SpawnError`] naming the
//! service: invalid configuration, no binary, a socket path too long, a
//! folder that cannot be made private, a binary whose hash is not the
//! pinned one, a required sandbox the kernel cannot enforce, an `exec` that failed, or, as
//! [`SpawnError::Resources`] at once, no descriptors or memory left.
//!
//! The [`connector`](crate::connector) builds on this to wait for the socket,
//! check the peer and run the handshake.
//!
//! # Example
//!
//! ```
//! use exthost::process::{check_socket_path, Paths, MAX_SOCKET_PATH};
//!
//! let paths = Paths::under("/var/lib/agent", "/run/agent.sock");
//! assert_eq!(paths.socket("search"), std::path::Path::new("/var/lib/agent/services/search.sock"));
//! assert_eq!(paths.log("search"), std::path::Path::new("/var/lib/agent/logs/search.log"));
//! assert!(check_socket_path(&paths.socket("search")).is_ok());
//!
//! let deep = Paths::under("/tmp/".to_owned() + &"d".repeat(MAX_SOCKET_PATH), "/run/a.sock");
//! let err = check_socket_path(&deep.socket("search")).unwrap_err();
//! assert!(err.to_string().contains("over the OS limit of 107"));
//! ```

mod binary;
mod claim;
mod confine;
mod error;
mod handle;
mod limits;
mod log;
mod paths;
mod spawn;
mod sys;
mod watchdog;

pub use binary::resolve_binary;
pub use confine::{binary_sha256, MINIMAL_ENV};
pub use error::SpawnError;
pub use handle::{ProcessHandle, StopOutcome};
pub use limits::{is_resource_exhausted, raise_fd_limit, FdLimit};
pub use log::{rotated, LogFile};
pub use paths::{check_socket_path, prepare_private_dir, Paths, MAX_SOCKET_PATH};
pub use spawn::{spawn, spawn_command, spawn_stdio};

pub(crate) use claim::Claim;
pub(crate) use handle::EXIT_AFTER_CLOSE;

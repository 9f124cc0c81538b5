//! Where sockets and logs go, private folders, and the socket path limit.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::SpawnError;
use crate::config::HostConfig;

/// The longest Unix socket path Linux accepts (`sun_path` is 108 bytes,
/// one of them the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Where sockets, logs and the daemon's socket are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Sockets go here, `<name>.sock`; created private (0700).
    pub services_dir: PathBuf,
    /// Log files go here, `<name>.log`.
    pub logs_dir: PathBuf,
    /// Passed to gateways as `--daemon`.
    pub daemon_socket: PathBuf,
}

impl Paths {
    /// Sockets in `<config_dir>/services`, logs in `<config_dir>/logs`, as
    /// the reference laid them out.
    pub fn under(config_dir: impl AsRef<Path>, daemon_socket: impl Into<PathBuf>) -> Self {
        let dir = config_dir.as_ref();
        Paths {
            services_dir: dir.join("services"),
            logs_dir: dir.join("logs"),
            daemon_socket: daemon_socket.into(),
        }
    }

    /// A private per-user runtime folder: `$XDG_RUNTIME_DIR/exthost` if
    /// that is set to an absolute path, else `/tmp/exthost-<uid>`.
    ///
    /// An `XDG_RUNTIME_DIR` that is empty or relative (common under `sudo`,
    /// `su`, cron and in containers), or that names a folder that does not
    /// exist or is not owned by this user, is invalid by the XDG Base
    /// Directory specification (the folder must exist, owned by the user)
    /// and ignored, with a debug log line saying so: exthost never creates
    /// it.
    pub fn runtime_default() -> Self {
        let base = match absolute_env_dir("XDG_RUNTIME_DIR").filter(|d| usable_runtime_dir(d)) {
            Some(dir) => dir.join("exthost"),
            None => PathBuf::from(format!("/tmp/exthost-{}", nix::unistd::geteuid())),
        };
        Paths {
            services_dir: base.join("services"),
            logs_dir: base.join("logs"),
            daemon_socket: base.join("daemon.sock"),
        }
    }

    /// Where a configuration file puts things: its folders, and for what it
    /// does not configure the private per-user runtime folder
    /// ([`Paths::runtime_default`]), except that logs go to a `logs` folder
    /// beside `services_dir` when only that is set.
    pub fn for_host(config: &HostConfig) -> Self {
        let mut paths = Paths::runtime_default();
        if let Some(d) = &config.services_dir {
            paths.services_dir = d.clone();
            paths.logs_dir = match d.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.join("logs"),
                _ => d.join("logs"),
            };
        }
        if let Some(d) = &config.logs_dir {
            paths.logs_dir = d.clone();
        }
        if let Some(d) = &config.daemon_socket {
            paths.daemon_socket = d.clone();
        }
        paths
    }

    /// The socket path of service `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.services_dir.join(format!("{name}.sock"))
    }

    /// The log file of service `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs_dir.join(format!("{name}.log"))
    }
}

/// The folder an environment variable names, if it is set to an absolute
/// path. Empty and relative values are invalid for the variables exthost
/// reads (`XDG_RUNTIME_DIR` by the XDG specification, `HOME`): they would
/// point into whatever the current folder is. They are ignored, and the
/// choice is logged at debug level.
pub(crate) fn absolute_env_dir(var: &str) -> Option<PathBuf> {
    let value = std::env::var_os(var)?;
    let dir = PathBuf::from(&value);
    if dir.is_absolute() {
        Some(dir)
    } else {
        tracing::debug!(
            var,
            value = %dir.display(),
            "ignoring an environment variable that is empty or not an absolute path"
        );
        None
    }
}

/// Whether `dir` may serve as `XDG_RUNTIME_DIR`: an existing folder owned
/// by this user (the specification's requirements; exthost's own folder in
/// it is made 0700 whatever its mode).
fn usable_runtime_dir(dir: &Path) -> bool {
    let problem = match std::fs::metadata(dir) {
        Err(e) => e.to_string(),
        Ok(meta) if !meta.is_dir() => "not a folder".to_owned(),
        Ok(meta) if meta.uid() != nix::unistd::geteuid().as_raw() => {
            format!("owned by uid {}, not by us", meta.uid())
        }
        Ok(_) => return true,
    };
    tracing::debug!(
        var = "XDG_RUNTIME_DIR",
        value = %dir.display(),
        %problem,
        "ignoring an environment variable whose folder is not usable"
    );
    false
}

/// Creates `dir` (and its parents) private to this user: mode 0700. An
/// existing folder with looser permissions is tightened, with a log line;
/// one owned by another user is an error.
pub fn prepare_private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by us",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o777), "tightening services folder to 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Checks that a socket path fits the OS limit.
pub fn check_socket_path(path: &Path) -> Result<(), SpawnError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(SpawnError::SocketPathTooLong {
            path: path.to_owned(),
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    Ok(())
}

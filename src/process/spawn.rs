//! Starting a service's process: command line, log file, process group,
//! death with the host, and reaping.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::confine::{self, Confinement, Pinned};
use super::log::{LogFile, Pipe};
use super::{
    check_socket_path, prepare_private_dir, resolve_binary, sys, Paths, ProcessHandle, SpawnError,
};
use crate::config::{ServiceConfig, ServiceKind};
use crate::socket::remove_stale_socket;

/// Spawns the process of service `name`. Must be called inside a tokio
/// runtime, from a thread that lives as long as the host (see
/// [`ProcessHandle`]).
///
/// The child inherits the host's environment, `RUST_LOG` included, with the
/// config's `env` set on top: a `RUST_LOG` there wins over the host's. With
/// `inherit_env = false` it gets only [`MINIMAL_ENV`](super::MINIMAL_ENV)
/// and `env_pass` from the host's, and `env`. The config's confinement
/// (`sha256`, `limits`, `sandbox`) is prepared here and applied in the
/// child before `exec`.
pub fn spawn(
    name: &str,
    config: &ServiceConfig,
    paths: &Paths,
) -> Result<ProcessHandle, SpawnError> {
    if config.kind == ServiceKind::Mcp {
        return Err(SpawnError::Config(crate::config::ConfigError::Invalid {
            service: name.to_owned(),
            field: "kind",
            problem: "is \"mcp\": an MCP server is started with `spawn_stdio`".to_owned(),
        }));
    }
    let (cmd, socket, log, confinement) = prepare(name, config, paths)?;
    spawn_logged(name, cmd, socket, &log, false, confinement).map(|(handle, _)| handle)
}

/// Spawns the MCP server of service `name` (`kind = "mcp"` with a
/// `command`): `command` and `args` exactly as given, with its stdin and
/// stdout piped to the host (the protocol) and its stderr appended to its
/// log file, otherwise treated like [`spawn`] (own process group, killed
/// with the host, environment, `cwd`). Returns the process and its stdin
/// and stdout.
pub fn spawn_stdio(
    name: &str,
    config: &ServiceConfig,
    paths: &Paths,
) -> Result<
    (
        ProcessHandle,
        tokio::process::ChildStdin,
        tokio::process::ChildStdout,
    ),
    SpawnError,
> {
    let (cmd, socket, log, confinement) = prepare(name, config, paths)?;
    let (handle, pipes) = spawn_logged(name, cmd, socket, &log, true, confinement)?;
    let (stdin, stdout) = pipes.expect("piped stdio was asked for");
    Ok((handle, stdin, stdout))
}

/// The command line, socket, log file and confinement of service `name`.
fn prepare(
    name: &str,
    config: &ServiceConfig,
    paths: &Paths,
) -> Result<
    (
        tokio::process::Command,
        Option<PathBuf>,
        LogFile,
        Confinement,
    ),
    SpawnError,
> {
    config.validate(name).map_err(SpawnError::Config)?;
    let binary = resolve_binary(name, config)?;
    let mut confinement = Confinement::default();
    // Checked first: a binary that is not the pinned one gets nothing done
    // for it.
    if let Some(expected) = &config.sha256 {
        let pinned = Pinned::open(name, &binary, expected)?;
        confinement
            .restrictions
            .push(format!("sha256 {}", expected.to_ascii_lowercase()));
        confinement.pinned = Some(pinned);
    }
    let io_err = |what| io_error(name, what);
    prepare_private_dir(&paths.logs_dir).map_err(io_err("create the logs folder"))?;

    let mut cmd = match &confinement.pinned {
        Some(pinned) => {
            let mut cmd = tokio::process::Command::new(pinned.exec_path());
            cmd.arg0(&binary);
            cmd
        }
        None => tokio::process::Command::new(&binary),
    };
    if config.kind != ServiceKind::Mcp {
        cmd.arg("serve");
    }
    let socket = match config.kind {
        ServiceKind::Mcp => None,
        ServiceKind::Extension => {
            let socket = paths.socket(name);
            check_socket_path(&socket)?;
            prepare_private_dir(&paths.services_dir)
                .map_err(io_err("create the services folder"))?;
            remove_stale_socket(&socket).map_err(io_err("remove the stale socket"))?;
            cmd.arg("--socket").arg(&socket);
            Some(socket)
        }
        ServiceKind::Gateway => {
            let json = serde_json::to_string(&config.config).unwrap_or_else(|_| "{}".into());
            cmd.arg("--daemon")
                .arg(&paths.daemon_socket)
                .arg("--config")
                .arg(json);
            None
        }
    };
    cmd.args(&config.args);
    confinement
        .restrictions
        .extend(confine::environment(&mut cmd, config));
    cmd.envs(&config.env);
    let (rlimits, described) = confine::rlimits(&config.limits);
    confinement.rlimits = rlimits;
    confinement.restrictions.extend(described);
    if let Some(sandbox) = &config.sandbox {
        let services_dir = socket.as_ref().and(Some(paths.services_dir.as_path()));
        let prepared = confine::sandbox(name, sandbox, &binary, services_dir)?;
        confinement.restrictions.push(prepared.described.clone());
        confinement.sandbox = Some(prepared);
    }
    confinement
        .restrictions
        .extend(config.tools.as_ref().map(ToString::to_string));
    if let Some(cwd) = &config.cwd {
        if !cwd.is_dir() {
            let missing = io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a folder", cwd.display()),
            );
            return Err(io_error(name, "use the working directory `cwd`")(missing));
        }
        cmd.current_dir(cwd);
    }
    let log = LogFile {
        path: paths.log(name),
        max_bytes: config.log_max_bytes(),
        keep: config.log_keep(),
    };
    Ok((cmd, socket, log, confinement))
}

/// Spawns a prepared command as extension `name`, with the same treatment
/// as [`spawn`]: stdout and stderr appended to `log` (10 MiB per file, 3
/// old files kept), its own process group, killed with the host, reaped by
/// a background task. `socket` is where it will listen, if anywhere; it is
/// removed when the process is stopped.
///
/// For tools that need the exact command line, such as `exthost check`,
/// which appends `serve --socket PATH` to a user's program and arguments.
pub fn spawn_command(
    name: &str,
    cmd: tokio::process::Command,
    socket: Option<PathBuf>,
    log: &Path,
) -> Result<ProcessHandle, SpawnError> {
    spawn_logged(
        name,
        cmd,
        socket,
        &LogFile::new(log),
        false,
        Confinement::default(),
    )
    .map(|(handle, _)| handle)
}

/// The stdin and stdout of a child spawned with piped stdio.
type Pipes = (tokio::process::ChildStdin, tokio::process::ChildStdout);

/// Spawns `cmd` with its output appended to `log`: stdout and stderr, or
/// with `stdio`, stderr only, stdin and stdout being piped to the host;
/// `confinement` is applied in the child.
fn spawn_logged(
    name: &str,
    mut cmd: tokio::process::Command,
    socket: Option<PathBuf>,
    log: &LogFile,
    stdio: bool,
    confinement: Confinement,
) -> Result<(ProcessHandle, Option<Pipes>), SpawnError> {
    // The first spawn raises the host's descriptor limit (once).
    super::limits::raise_fd_limit();
    let io_err = |what| io_error(name, what);
    // A pinned binary runs as `/proc/self/fd/N`, its path in `argv[0]`.
    let program = match &confinement.pinned {
        Some(pinned) => pinned.binary.clone(),
        None => PathBuf::from(cmd.as_std().get_program()),
    };
    let header = format!("{}{name}: {}", super::log::HEADER_PREFIX, program.display());
    let pipe = Pipe::new(log, &header).map_err(io_err("open the log file"))?;
    let output = pipe
        .child
        .try_clone()
        .map_err(io_err("open the log file"))?;
    if stdio {
        drop(output);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null()).stdout(Stdio::from(output));
    }
    cmd.stderr(Stdio::from(
        pipe.child
            .try_clone()
            .map_err(io_err("open the log file"))?,
    ))
    .process_group(0)
    .kill_on_drop(true);
    sys::kill_with_parent(&mut cmd);
    if let Some((soft, hard)) = super::limits::for_children() {
        sys::restore_fd_limit(cmd.as_std_mut(), soft, hard);
    }
    let Confinement {
        pinned,
        rlimits,
        sandbox,
        restrictions,
    } = confinement;
    let sandboxed = sandbox.is_some();
    if rlimits.iter().any(Option::is_some) || sandboxed {
        sys::confine(cmd.as_std_mut(), rlimits, sandbox);
    }

    let spawned = cmd.spawn();
    // The pinned binary was executed (or not): its descriptor goes.
    drop(pinned);
    // Our copies of the child's end go now, so the drain sees the end of
    // the output when the child (and what inherited it) closes it.
    drop(cmd);
    let mut child = spawned.map_err(|source| {
        if sandboxed && source.raw_os_error() == Some(nix::errno::Errno::EOPNOTSUPP as i32) {
            SpawnError::Sandbox {
                service: name.to_owned(),
                problem: "is required, and the kernel did not enforce it".to_owned(),
            }
        } else if sandboxed && source.raw_os_error() == Some(nix::errno::Errno::EACCES as i32) {
            SpawnError::Sandbox {
                service: name.to_owned(),
                problem: format!(
                    "may be the cause: running {} was denied ({source}); a `#!` interpreter or a runtime outside the system folders needs its folder in `sandbox.read`",
                    program.display()
                ),
            }
        } else if super::limits::is_resource_exhausted(&source) {
            io_error(name, "spawn its process")(source)
        } else {
            SpawnError::Exec {
                service: name.to_owned(),
                binary: program.clone(),
                source,
            }
        }
    })?;
    let pipes = if stdio {
        let stdin = child.stdin.take().expect("stdin was piped");
        let stdout = child.stdout.take().expect("stdout was piped");
        Some((stdin, stdout))
    } else {
        None
    };
    let drained = pipe.drain().map_err(io_err("read the process's output"))?;
    let log = &log.path;
    let pid = child.id().expect("a just-spawned child has a pid");
    if restrictions.is_empty() {
        tracing::info!(service = %name, pid, binary = %program.display(), log = %log.display(), "spawned extension");
    } else {
        tracing::info!(service = %name, pid, binary = %program.display(), log = %log.display(), restrictions = %restrictions.join("; "), "spawned extension");
    }

    super::watchdog::watch(pid);
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        // Kills the whole group if the host drops this task (runtime shut
        // down) before the child exited.
        let guard = KillGroupOnDrop(Some(pid));
        let status = child.wait().await;
        std::mem::forget(guard);
        if let Ok(status) = status {
            let _ = tx.send(Some(status));
        }
        // The watchdog forgets the group once nothing of it lives, even if
        // no one ever stops it (then helpers may linger: poll, slowly).
        let mut delay = Duration::from_millis(10);
        while killpg(Pid::from_raw(pid as i32), None).is_ok() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
        super::watchdog::unwatch(pid);
    });
    Ok((
        ProcessHandle::new(name, pid, socket, log, rx, drained, restrictions),
        pipes,
    ))
}

/// Wraps an i/o error of `service` while it did `what`: out of
/// descriptors or memory, [`SpawnError::Resources`].
fn io_error(service: &str, what: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    let service = service.to_owned();
    move |source| {
        if super::limits::is_resource_exhausted(&source) {
            SpawnError::Resources {
                service,
                what,
                source,
            }
        } else {
            SpawnError::Io {
                service,
                what,
                source,
            }
        }
    }
}

struct KillGroupOnDrop(Option<u32>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            super::watchdog::unwatch(pid);
        }
    }
}

//! Confinement of a service's process: the pinned binary, the
//! environment, resource limits and the Landlock sandbox. Everything here
//! runs in the host before the spawn; the child only applies what was
//! prepared (see `sys`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::resource::{getrlimit, Resource};
use sha2::{Digest, Sha256};

use super::SpawnError;
use crate::config::{Limits, Sandbox, ServiceConfig};

/// The host variables a service started with `inherit_env = false` gets,
/// when they are set (besides `env_pass` and `env`).
pub const MINIMAL_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "TZ", "RUST_LOG"];

/// Extra CPU seconds between the soft `cpu_time` limit (SIGXCPU) and the
/// hard one (SIGKILL).
const CPU_GRACE_SECS: u64 = 5;

/// The SHA-256 of the file at `path`, as 64 lowercase hexadecimal digits
/// (what `sha256` in a service's configuration pins).
pub fn binary_sha256(path: &Path) -> io::Result<String> {
    hash_file(&mut File::open(path)?)
}

fn hash_file(file: &mut File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Warns when someone other than root and the host's user may write the
/// pinned file: an in-place write between the check and the exec is the
/// one change pinning cannot see.
fn warn_if_others_can_write(name: &str, binary: &Path, file: &File) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else { return };
    let owner_is_trusted = meta.uid() == 0 || meta.uid() == nix::unistd::geteuid().as_raw();
    if !owner_is_trusted || meta.mode() & 0o022 != 0 {
        tracing::warn!(service = %name, binary = %binary.display(), uid = meta.uid(), mode = format_args!("{:o}", meta.mode() & 0o7777), "the pinned binary is writable by other users: a write in place between the hash check and the exec would not be seen");
    }
}

/// What tells one version of a file from another, short of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileIdentity {
    fn of(file: &File) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        Ok(FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The hashes of pinned binaries, by path, with the identity of the file
/// that was hashed.
type Hashed = HashMap<PathBuf, (FileIdentity, String)>;

static HASHED: Mutex<Option<Hashed>> = Mutex::new(None);

/// The binary of a pinned service, opened and checked: the process runs
/// `/proc/self/fd/N` of this very file, so it cannot be swapped between
/// the check and the exec. Kept open until the spawn.
#[derive(Debug)]
pub(super) struct Pinned {
    file: File,
    /// The binary's path.
    pub(super) binary: PathBuf,
}

impl Pinned {
    /// Opens `binary` (close-on-exec), refuses a `#!` script, and checks
    /// its hash against `expected`.
    ///
    /// The hash of the opened file is remembered with its identity
    /// (device, inode, size, modification and change times, from `fstat`
    /// of the very descriptor that is executed): a restart of an unchanged
    /// file does not read it again, and any rename over it (new inode) or
    /// write to it (new change time, which no one can set back) hashes it
    /// afresh.
    pub(super) fn open(name: &str, binary: &Path, expected: &str) -> Result<Self, SpawnError> {
        let io_err = |source| SpawnError::Io {
            service: name.to_owned(),
            what: "read the binary to check its sha256",
            source,
        };
        let mut file = File::open(binary).map_err(io_err)?;
        let mut magic = [0; 2];
        let is_script = matches!(file.read_exact(&mut magic), Ok(()) if magic == *b"#!");
        if is_script {
            return Err(SpawnError::PinnedScript {
                service: name.to_owned(),
                binary: binary.to_owned(),
            });
        }
        let identity = FileIdentity::of(&file).map_err(io_err)?;
        warn_if_others_can_write(name, binary, &file);
        let known = HASHED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|known| known.get(binary))
            .filter(|(id, _)| *id == identity)
            .map(|(_, hash)| hash.clone());
        let actual = match known {
            Some(hash) => hash,
            None => {
                use std::io::Seek;
                file.rewind().map_err(io_err)?;
                let hash = hash_file(&mut file).map_err(io_err)?;
                HASHED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert_with(HashMap::new)
                    .insert(binary.to_owned(), (identity, hash.clone()));
                hash
            }
        };
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(SpawnError::HashMismatch {
                service: name.to_owned(),
                binary: binary.to_owned(),
                expected: expected.to_ascii_lowercase(),
                actual,
            });
        }
        Ok(Pinned {
            file,
            binary: binary.to_owned(),
        })
    }

    /// The path that executes this file.
    pub(super) fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Applies `inherit_env = false`: clears the environment and sets back
/// [`MINIMAL_ENV`] and `env_pass` from the host's (`env` goes on top
/// afterwards). Returns how the environment is described in the status.
pub(super) fn environment(
    cmd: &mut tokio::process::Command,
    config: &ServiceConfig,
) -> Option<String> {
    if config.inherit_env {
        return None;
    }
    cmd.env_clear();
    let passed = MINIMAL_ENV
        .iter()
        .copied()
        .chain(config.env_pass.iter().map(String::as_str));
    for key in passed {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    let mut described = "env: minimal".to_owned();
    if !config.env_pass.is_empty() {
        described += &format!(" + {}", config.env_pass.join(", "));
    }
    if !config.env.is_empty() {
        described += &format!(" + {} set", config.env.len());
    }
    Some(described)
}

/// How many resource limits a child can get.
pub(super) const MAX_RLIMITS: usize = 6;

/// The limits to set in the child: resource, soft, hard.
pub(super) type Rlimits = [Option<(Resource, u64, u64)>; MAX_RLIMITS];

/// The `setrlimit` calls for `limits` (with core dumps off whenever any is
/// set), each capped at the host's own hard limit (only root may raise
/// it), and how they are described in the status.
pub(super) fn rlimits(limits: &Limits) -> (Rlimits, Vec<String>) {
    let mut out: Rlimits = [None; MAX_RLIMITS];
    let mut described = Vec::new();
    if limits.is_empty() {
        return (out, described);
    }
    let wanted = [
        (
            Resource::RLIMIT_DATA,
            limits.memory.map(|m| (m.0, m.0)),
            limits.memory.map(|m| format!("memory {m}")),
        ),
        (
            Resource::RLIMIT_CPU,
            limits
                .cpu_time
                .map(|t| (t.as_secs(), t.as_secs() + CPU_GRACE_SECS)),
            limits
                .cpu_time
                .map(|t| format!("cpu_time {}s", t.as_secs())),
        ),
        (
            Resource::RLIMIT_NOFILE,
            limits.open_files.map(|n| (n, n)),
            limits.open_files.map(|n| format!("open_files {n}")),
        ),
        (
            Resource::RLIMIT_NPROC,
            limits.processes.map(|n| (n, n)),
            limits.processes.map(|n| format!("processes {n}")),
        ),
        (
            Resource::RLIMIT_FSIZE,
            limits.file_size.map(|m| (m.0, m.0)),
            limits.file_size.map(|m| format!("file_size {m}")),
        ),
        (Resource::RLIMIT_CORE, Some((0, 0)), None),
    ];
    for (slot, (resource, values, text)) in out.iter_mut().zip(wanted) {
        let Some((soft, hard)) = values else { continue };
        let max = getrlimit(resource).map_or(u64::MAX, |(_, max)| max);
        *slot = Some((resource, soft.min(max), hard.min(max)));
        // The value in force, not only the one asked for.
        described.extend(text.map(|t| {
            if soft > max {
                format!("limit {t}, capped at {max} (the host's hard limit)")
            } else {
                format!("limit {t}")
            }
        }));
    }
    (out, described)
}

/// Services already warned that their sandbox is not enforced.
static WARNED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Warns, once per service, that its sandbox is not (fully) enforced.
fn warn_once(name: &str, why: &str) {
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned
        .get_or_insert_with(HashSet::new)
        .insert(name.to_owned())
    {
        tracing::warn!(service = %name, "sandbox not enforced: {why}; running without it (set `required = true` to refuse)");
    }
}

/// Everything the child applies, made by the host before the spawn, and
/// how it is described.
#[derive(Debug, Default)]
pub(super) struct Confinement {
    /// The checked binary, for a pinned service.
    pub(super) pinned: Option<Pinned>,
    /// The resource limits.
    pub(super) rlimits: Rlimits,
    /// The sandbox.
    pub(super) sandbox: Option<PreparedSandbox>,
    /// Every restriction in force, as the status lists it.
    pub(super) restrictions: Vec<String>,
}

/// A Landlock ruleset made in the host, applied by the child.
#[derive(Debug)]
pub(super) struct PreparedSandbox {
    /// The ruleset (`None` when the kernel cannot enforce it and it is
    /// not required).
    #[cfg(target_os = "linux")]
    pub(super) ruleset: Option<landlock::RulesetCreated>,
    /// Whether the child must refuse to run unenforced.
    pub(super) required: bool,
    /// How it is described in the status.
    pub(super) described: String,
}

/// Folders and files every sandboxed process may read and run beneath
/// (those that exist): the system's programs and libraries, TLS
/// certificates, and the files the C library reads to resolve host names.
const DEFAULT_READ: [&str; 13] = [
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/etc/ld.so.cache",
    "/etc/ssl",
    "/etc/locale.alias",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
];

/// How the rules every sandbox gets are summed up in the status.
const IMPLICIT_RULES: &str = "+ the binary, system programs and libraries (/usr, /lib, /lib64, /bin, /sbin, /etc/ld.so.cache, /etc/ssl, /etc/locale.alias), name resolution files in /etc, /dev/null";

/// Builds the Landlock ruleset of `sandbox` for `binary`; `services_dir`
/// is where its socket goes, if it has one.
///
/// The binary itself is allowed (read and execute on that one file,
/// after resolving symbolic links: Landlock checks the file they lead
/// to), not its folder.
///
/// # Errors
///
/// [`SpawnError::Sandbox`] when it is `required` and the kernel cannot
/// enforce it, or a listed path cannot be opened.
#[cfg(target_os = "linux")]
pub(super) fn sandbox(
    name: &str,
    sandbox: &Sandbox,
    binary: &Path,
    services_dir: Option<&Path>,
) -> Result<PreparedSandbox, SpawnError> {
    use landlock::{
        Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
        RulesetAttr, RulesetCreatedAttr, Scope, ABI,
    };

    let failed = |problem: String| SpawnError::Sandbox {
        service: name.to_owned(),
        problem,
    };
    let kernel_abi = if sandbox.simulate_no_landlock {
        0
    } else {
        super::sys::landlock_abi()
    };
    let unenforceable = if kernel_abi < 1 {
        Some("the kernel does not support Landlock".to_owned())
    } else if !sandbox.network && kernel_abi < 4 {
        Some(format!(
            "the kernel's Landlock ABI {kernel_abi} cannot restrict TCP (`network = false` needs ABI 4, Linux 6.7)"
        ))
    } else {
        None
    };
    if let Some(why) = unenforceable {
        if sandbox.required {
            return Err(failed(format!("cannot be enforced: {why}")));
        }
        warn_once(name, &why);
        if kernel_abi < 1 {
            return Ok(PreparedSandbox {
                ruleset: None,
                required: false,
                described: format!("sandbox not enforced ({why})"),
            });
        }
    }

    // Pinned, as the crate advises: rights of later ABIs are left out on
    // older kernels (best effort). Not V9: its write rights gate
    // connecting to UNIX sockets.
    let abi = ABI::V7;
    let landlock_err = |e: landlock::RulesetError| failed(format!("cannot be built: {e}"));
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(landlock_err)?;
    if !sandbox.network {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(landlock_err)?;
    }
    let created = ruleset
        .scope(Scope::from_all(abi))
        .map_err(landlock_err)?
        .create()
        .map_err(landlock_err)?;

    let mut rules = Vec::new();
    let mut rule = |path: &Path, access, listed: &'static str| -> Result<(), SpawnError> {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            // A default that this system does not have.
            Err(_) if listed.is_empty() => return Ok(()),
            Err(e) => {
                return Err(failed(format!(
                    "cannot open {} from `{listed}`: {e}",
                    path.display()
                )))
            }
        };
        // A rule on a file may only carry file rights.
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        rules.push(Ok::<_, landlock::RulesetError>(PathBeneath::new(
            fd, access,
        )));
        Ok(())
    };
    for path in DEFAULT_READ {
        rule(Path::new(path), AccessFs::from_read(abi), "")?;
    }
    // The binary file, not its folder: the file a symbolic link leads to
    // is the one Landlock checks.
    let real_binary = std::fs::canonicalize(binary).map_err(|e| {
        failed(format!(
            "cannot resolve the binary {}: {e}",
            binary.display()
        ))
    })?;
    rule(&real_binary, AccessFs::from_read(abi), "the binary")?;
    rule(Path::new("/dev/null"), AccessFs::from_file(abi), "")?;
    if let Some(dir) = services_dir {
        // Binding its socket; the host removes stale sockets before the
        // spawn and after the stop, so the process needs no other right
        // there (not to list or remove other services' sockets or the
        // host's lock).
        rule(dir, AccessFs::MakeSock.into(), "")?;
    }
    for path in &sandbox.read {
        rule(path, AccessFs::from_read(abi), "sandbox.read")?;
    }
    // Read and write, not execute (unless also listed in `read`).
    let write = AccessFs::from_all(abi) & !AccessFs::Execute;
    for path in &sandbox.write {
        rule(path, write, "sandbox.write")?;
    }
    let created = created.add_rules(rules).map_err(landlock_err)?;

    let list = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let described = format!(
        "sandbox (Landlock ABI {}): read [{}] ({IMPLICIT_RULES}{}), write [{}], network {}",
        kernel_abi.min(7),
        list(&sandbox.read),
        if services_dir.is_some() {
            ", its socket"
        } else {
            ""
        },
        list(&sandbox.write),
        if sandbox.network || kernel_abi < 4 {
            "allowed"
        } else {
            "denied"
        }
    );
    Ok(PreparedSandbox {
        ruleset: Some(created),
        required: sandbox.required,
        described,
    })
}

/// No Landlock off Linux: a required sandbox fails, another warns.
#[cfg(not(target_os = "linux"))]
pub(super) fn sandbox(
    name: &str,
    sandbox: &Sandbox,
    _binary: &Path,
    _services_dir: Option<&Path>,
) -> Result<PreparedSandbox, SpawnError> {
    let why = "Landlock is Linux-only";
    if sandbox.required {
        return Err(SpawnError::Sandbox {
            service: name.to_owned(),
            problem: format!("cannot be enforced: {why}"),
        });
    }
    warn_once(name, why);
    Ok(PreparedSandbox {
        required: false,
        described: format!("sandbox not enforced ({why})"),
    })
}

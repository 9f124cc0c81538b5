//! Per-service log files with a size cap and rotation.
//!
//! The child's stdout and stderr are one pipe (so their lines keep their
//! order), drained by a task that appends to `<logs_dir>/<name>.log` through
//! [`file_rotate`]: when the file would pass `max_bytes` it becomes
//! `<name>.log.1` (older ones shift to `.2`, `.3`, …, and the oldest beyond
//! `keep` is deleted). The task always reads, so the extension's writes do
//! not wait on rotation; restarts keep appending to the same files.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use crate::config::{DEFAULT_LOG_KEEP, DEFAULT_LOG_MAX_BYTES};

/// How the line that opens each run of a service in its log begins.
pub(super) const HEADER_PREFIX: &str = "--- exthost: starting ";

/// Where a service's output goes, and how much of it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFile {
    /// The current file, `<logs_dir>/<name>.log`.
    pub path: PathBuf,
    /// A file is rotated before it passes this many bytes (at least 1).
    pub max_bytes: u64,
    /// Rotated files kept beside it, `.1` (newest) to `.keep`.
    pub keep: usize,
}

impl LogFile {
    /// A log at `path` with the default limits (10 MiB, 3 old files).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        LogFile {
            path: path.into(),
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            keep: DEFAULT_LOG_KEEP,
        }
    }

    /// The rotating writer. `spare` holds the two descriptors
    /// file-rotate needs at once (the log file it opens, then the folder
    /// it lists), opened by us so that a host out of descriptors gets the
    /// error, with its OS code, from us. They are closed just before
    /// file-rotate runs, which panics without them; a panic that still
    /// comes (another thread took a descriptor in between) is silenced and
    /// turned into the error it carries, with its OS code where it has one.
    fn writer(&self, spare: Spare) -> io::Result<FileRotate<AppendCount>> {
        let limit = usize::try_from(self.max_bytes.max(1)).unwrap_or(usize::MAX);
        drop(spare);
        quiet_panics::catch(|| {
            FileRotate::new(
                &self.path,
                AppendCount::new(self.keep),
                ContentLimit::Bytes(limit),
                Compression::None,
                None,
            )
        })
        .map_err(|message| {
            // The OS error as it is, so that running out of descriptors
            // is told as such.
            os_error_in(&message).unwrap_or_else(|| {
                io::Error::other(format!(
                    "cannot list the files beside {}: {message}",
                    self.path.display()
                ))
            })
        })
    }
}

/// Descriptors held for file-rotate: the log file and its folder.
struct Spare {
    _file: std::fs::File,
    _dir: std::fs::File,
}

impl Spare {
    /// Opens the log file (creating it) and its folder: the error, if any,
    /// is the real one (out of descriptors included).
    fn open(log: &LogFile) -> io::Result<Spare> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log.path)?;
        let dir = match log.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Ok(Spare {
            _file: file,
            _dir: std::fs::File::open(dir)?,
        })
    }
}

/// The OS error a panic message shows (`Os { code: 24, … }`, what
/// `unwrap()` on an `io::Error` prints), if it shows one.
fn os_error_in(message: &str) -> Option<io::Error> {
    let rest = &message[message.find("Os { code: ")? + "Os { code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().map(io::Error::from_raw_os_error)
}

/// Panics caught without their message on stderr.
mod quiet_panics {
    use std::cell::Cell;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Once;

    thread_local! {
        static QUIET: Cell<bool> = const { Cell::new(false) };
    }

    /// Runs `f`; a panic in it is returned as its message, and not
    /// printed. The first call installs a panic hook that keeps quiet for
    /// such panics and hands every other to the hook it replaced.
    pub(super) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !QUIET.with(Cell::get) {
                    previous(info)
                }
            }));
        });
        let was = QUIET.with(|q| q.replace(true));
        let result = catch_unwind(AssertUnwindSafe(f));
        QUIET.with(|q| q.set(was));
        result.map_err(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default()
        })
    }
}

/// The pipe a child writes its output into, and the task that drains it.
pub(super) struct Pipe {
    /// The child's end, for both stdout and stderr.
    pub(super) child: OwnedFd,
    drain: OwnedFd,
    log: LogFile,
    writer: FileRotate<AppendCount>,
}

impl Pipe {
    /// Makes the pipe, and writes `header` to the log first.
    pub(super) fn new(log: &LogFile, header: &str) -> io::Result<Self> {
        if let Some(dir) = log.path.parent() {
            // file-rotate would panic on a folder it cannot create.
            if !dir.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} is not a folder", dir.display()),
                ));
            }
        }
        // Fails early, with a real error, if the file cannot be written
        // (or no descriptor is left).
        let (drain, child) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let spare = Spare::open(log)?;
        let mut writer = log.writer(spare)?;
        writeln!(writer, "{header}")?;
        Ok(Pipe {
            child,
            drain,
            log: log.clone(),
            writer,
        })
    }

    /// Drains the pipe into the log until every writer has closed it (the
    /// child and whatever inherited its output). Must be called inside a
    /// tokio runtime.
    ///
    /// The receiver turns `true` once the output has ended and is written.
    pub(super) fn drain(self) -> io::Result<watch::Receiver<bool>> {
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(self.drain)?;
        let (log, mut writer) = (self.log, self.writer);
        let (done, drained) = watch::channel(false);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Err(error) = writer.write_all(&buf[..n]) {
                            tracing::warn!(log = %log.path.display(), %error, "cannot write the log; output dropped");
                        }
                    }
                }
            }
            let _ = writer.flush();
            let _ = done.send(true);
        });
        Ok(drained)
    }
}

/// The path of rotated file `n` (1 is the newest) of the log at `path`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

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

    /// The rotating writer. `spare` is a descriptor we hold (the log file,
    /// opened to check it can be written): it is closed just before
    /// file-rotate scans the folder, which needs one and panics without
    /// it, so that a host out of descriptors gets an error here rather
    /// than a panic (a panic that still comes, in a race with another
    /// thread taking that descriptor, is turned into the error).
    fn writer(&self, spare: std::fs::File) -> io::Result<FileRotate<AppendCount>> {
        let limit = usize::try_from(self.max_bytes.max(1)).unwrap_or(usize::MAX);
        drop(spare);
        std::panic::catch_unwind(|| {
            FileRotate::new(
                &self.path,
                AppendCount::new(self.keep),
                ContentLimit::Bytes(limit),
                Compression::None,
                None,
            )
        })
        .map_err(|_| {
            io::Error::other(format!(
                "cannot list the files beside {}",
                self.path.display()
            ))
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
        let spare = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log.path)?;
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

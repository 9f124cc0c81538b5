//! Finding a service's binary.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::SpawnError;
use crate::config::ServiceConfig;

/// Finds the binary of `config`, as an absolute path.
///
/// - `command` with a `/` in it is that path (a relative one is taken from
///   the current directory; [`HostConfig::load`](crate::config::HostConfig::load)
///   has already made it relative to the configuration file);
/// - `command` without one is a name looked up on the `PATH` the service
///   will run with: its own `env.PATH` if it sets one, else the host's;
/// - otherwise `crate` is looked up in `$HOME/.cargo/bin` (when `HOME` is
///   an absolute path), then on that `PATH`.
///
/// # Errors
///
/// [`SpawnError::BinaryNotFound`] listing every place looked, in order,
/// each once;
/// [`SpawnError::NotExecutable`] for a `command` path that is not
/// executable.
pub fn resolve_binary(name: &str, config: &ServiceConfig) -> Result<PathBuf, SpawnError> {
    let search_path: Option<OsString> = match config.env.get("PATH") {
        Some(path) => Some(path.into()),
        None => std::env::var_os("PATH"),
    };
    let on_path = |bin: &Path| -> Vec<PathBuf> {
        search_path
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| absolute(&dir.join(bin)))
            .collect()
    };
    let explicit = config
        .command
        .as_ref()
        .filter(|cmd| cmd.components().count() > 1);
    let candidates = match (explicit, &config.command) {
        (Some(path), _) => vec![absolute(path)],
        (None, Some(bare)) => on_path(bare),
        (None, None) => {
            let mut candidates = Vec::new();
            // An empty or relative HOME is ignored: it would look in the
            // current folder.
            if let Some(home) = super::paths::absolute_env_dir("HOME") {
                candidates.push(home.join(".cargo/bin").join(&config.krate));
            }
            candidates.extend(on_path(Path::new(&config.krate)));
            candidates
        }
    };
    let mut looked: Vec<PathBuf> = Vec::new();
    for path in candidates {
        // `$HOME/.cargo/bin` is often on `PATH` too: each place once.
        if looked.contains(&path) {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.mode() & 0o111 != 0 => return Ok(path),
            Ok(meta) if meta.is_file() && explicit.is_some() => {
                return Err(SpawnError::NotExecutable {
                    service: name.to_owned(),
                    path,
                })
            }
            _ => looked.push(path),
        }
    }
    Err(SpawnError::BinaryNotFound {
        service: name.to_owned(),
        looked,
    })
}

/// `path` made absolute against the current directory, when it can be.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

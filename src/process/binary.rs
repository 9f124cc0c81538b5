//! Finding a service's binary.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::SpawnError;
use crate::config::ServiceConfig;

/// Finds the binary of `config`: `command` if given, else
/// `$HOME/.cargo/bin/<crate>`, else `<crate>` on `PATH`.
pub fn resolve_binary(name: &str, config: &ServiceConfig) -> Result<PathBuf, SpawnError> {
    let mut looked = Vec::new();
    let mut candidates = Vec::new();
    if let Some(cmd) = &config.command {
        candidates.push(cmd.clone());
    } else {
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(PathBuf::from(home).join(".cargo/bin").join(&config.krate));
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path).map(|d| d.join(&config.krate)));
        }
    }
    for path in candidates {
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() && meta.mode() & 0o111 != 0 => return Ok(path),
            Ok(meta) if meta.is_file() && config.command.is_some() => {
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

//! Paths in a configuration file mean the same from any working directory;
//! a service's own `PATH` finds its binary; `cwd` is honoured.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{mock_bin, temp_dir};
use exthost::config::HostConfig;
use exthost::manager::ServiceManager;
use exthost::process::{resolve_binary, Paths, SpawnError};

/// An executable script at `path` that records its working directory in
/// `<dir>/pwd`, then becomes the mock extension.
fn recording_script(path: &Path, dir: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\npwd > {}/pwd\nexec {} \"$@\"\n",
            dir.display(),
            mock_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn relative_command_cwd_and_folders_are_relative_to_the_config_file() {
    let dir = temp_dir();
    let conf_dir = dir.path().join("conf");
    recording_script(&conf_dir.join("bin/ext"), dir.path());
    std::fs::create_dir_all(conf_dir.join("work")).unwrap();
    let file = conf_dir.join("exthost.toml");
    std::fs::write(
        &file,
        "services_dir = \"run/services\"\n\
         [services.ext]\ncommand = \"bin/ext\"\ncwd = \"work\"\n",
    )
    .unwrap();
    // The test's own working directory is the crate, not `conf`.
    assert_ne!(std::env::current_dir().unwrap(), conf_dir);
    let cfg = HostConfig::load(&file).unwrap();
    assert_eq!(
        cfg.services["ext"].command.as_deref(),
        Some(&*conf_dir.join("bin/ext"))
    );
    let paths = Paths::for_host(&cfg);
    assert_eq!(paths.services_dir, conf_dir.join("run/services"));
    // Only services_dir set: logs go beside it.
    assert_eq!(paths.logs_dir, conf_dir.join("run/logs"));
    let m = ServiceManager::with_paths(&cfg.services, paths);
    let report = m.start().await;
    assert_eq!(report.ready, ["ext"], "{:?}", report.failed);
    let pwd = std::fs::read_to_string(dir.path().join("pwd")).unwrap();
    assert_eq!(Path::new(pwd.trim()), conf_dir.join("work"));
    assert!(conf_dir.join("run/logs/ext.log").exists());
    m.shutdown_all().await;
}

#[test]
fn a_missing_relative_command_is_reported_with_its_absolute_path() {
    let dir = temp_dir();
    let file = dir.path().join("exthost.toml");
    std::fs::write(&file, "[services.ext]\ncommand = \"bin/missing\"\n").unwrap();
    let cfg = HostConfig::load(&file).unwrap();
    let err = resolve_binary("ext", &cfg.services["ext"]).unwrap_err();
    let SpawnError::BinaryNotFound { looked, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(looked, &[dir.path().join("bin/missing")]);
    assert!(err
        .to_string()
        .contains(&dir.path().join("bin/missing").display().to_string()));
}

#[test]
fn a_services_own_path_is_searched_for_a_bare_command_and_a_crate() {
    let dir = temp_dir();
    let bin = dir.path().join("tools");
    recording_script(&bin.join("myext"), dir.path());
    let text = format!(
        "[services.bare]\ncommand = \"myext\"\nenv = {{ PATH = \"{0}\" }}\n\
         [services.krate]\ncrate = \"myext\"\nenv = {{ PATH = \"{0}\" }}\n\
         [services.nowhere]\ncommand = \"myext\"\n",
        bin.display()
    );
    let cfg = HostConfig::from_toml_str(&text).unwrap();
    for name in ["bare", "krate"] {
        assert_eq!(
            resolve_binary(name, &cfg.services[name]).unwrap(),
            bin.join("myext"),
            "{name}"
        );
    }
    // Without its own PATH, the host's is searched, and every place is named.
    let err = resolve_binary("nowhere", &cfg.services["nowhere"]).unwrap_err();
    let SpawnError::BinaryNotFound { looked, .. } = &err else {
        panic!("{err:?}");
    };
    let host_path = std::env::var_os("PATH").unwrap();
    let mut expected: Vec<std::path::PathBuf> = Vec::new();
    for place in
        std::env::split_paths(&host_path).map(|d| std::path::absolute(d.join("myext")).unwrap())
    {
        if !expected.contains(&place) {
            expected.push(place);
        }
    }
    assert_eq!(looked, &expected);
}

#[test]
fn each_place_looked_for_a_binary_is_named_once() {
    let home = std::env::var("HOME").expect("HOME is set");
    assert!(home.starts_with('/'), "HOME {home:?} is not absolute");
    // `~/.cargo/bin` is on PATH too (as rustup puts it), and PATH names a
    // folder twice.
    let text = format!(
        "[services.krate]
crate = \"exthost-test-no-such-crate\"
         env = {{ PATH = \"{home}/.cargo/bin:/nonexistent/bin:{home}/.cargo/bin/:/nonexistent/bin\" }}
"
    );
    let cfg = HostConfig::from_toml_str(&text).unwrap();
    let err = resolve_binary("krate", &cfg.services["krate"]).unwrap_err();
    let SpawnError::BinaryNotFound { looked, .. } = &err else {
        panic!("{err:?}");
    };
    let cargo = std::path::Path::new(&home).join(".cargo/bin/exthost-test-no-such-crate");
    assert_eq!(
        looked,
        &[
            cargo,
            std::path::PathBuf::from("/nonexistent/bin/exthost-test-no-such-crate")
        ],
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_cwd_is_an_error_naming_it() {
    let dir = temp_dir();
    let text = format!(
        "[services.ext]\ncommand = \"{}\"\ncwd = \"{}/nope\"\n",
        mock_bin().display(),
        dir.path().display()
    );
    let cfg = HostConfig::from_toml_str(&text).unwrap();
    let m = ServiceManager::with_paths(
        &cfg.services,
        Paths::under(dir.path(), dir.path().join("d.sock")),
    );
    let report = m.start().await;
    let (_, err) = &report.failed[0];
    assert!(
        err.to_string()
            .contains(&format!("{}/nope is not a folder", dir.path().display())),
        "{err}"
    );
    m.shutdown_all().await;
}

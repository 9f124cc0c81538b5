//! Real extension processes: spawn, handshake, failures, security,
//! graceful shutdown, no orphans.

mod common;

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{alive, gone_within, mock_bin, temp_dir};
use exthost::config::ServiceConfig;
use exthost::connector::{Connector, Started, Target};
use exthost::handshake::HandshakeError;
use exthost::process::{Paths, SpawnError, StopOutcome};
use exthost::proto::{ExtRequest, ExtResponse};
use exthost::StartError;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::AsyncReadExt;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(10);

fn paths(dir: &std::path::Path) -> Paths {
    Paths::under(dir, dir.join("daemon.sock"))
}

fn mock(env: &[(&str, &str)]) -> ServiceConfig {
    env.iter()
        .fold(ServiceConfig::command(mock_bin()), |c, (k, v)| {
            c.with_env(*k, *v)
        })
}

/// The mock extension behind a wrapper that first forks a helper (`sleep`)
/// into the extension's process group and writes its pid to
/// `<dir>/<name>.helper`.
fn forking_mock(dir: &std::path::Path, name: &str) -> ServiceConfig {
    let script = dir.join(format!("{name}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh
sleep 1000 &
echo $! > {dir}/{name}.helper
exec {mock} \"$@\"\n",
            dir = dir.display(),
            mock = mock_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    ServiceConfig::command(script)
}

fn helper_pid(dir: &std::path::Path, name: &str) -> u32 {
    let text = std::fs::read_to_string(dir.join(format!("{name}.helper"))).unwrap();
    text.trim().parse().unwrap()
}

async fn stop(started: &Started, grace: Duration) -> StopOutcome {
    started.stop(grace).await.expect("a spawned service")
}

#[tokio::test]
async fn spawned_mock_is_handshaken_called_and_stopped_gracefully() {
    let dir = temp_dir();
    let marker = dir.path().join("stopped");
    let connector = Connector::new(paths(dir.path()));
    let cfg = mock(&[
        ("MOCK_PREFIX", "m_"),
        ("MOCK_SHUTDOWN_FILE", marker.to_str().unwrap()),
    ]);
    let started = connector.start(Target::new("alpha", cfg)).await.unwrap();
    let ext = started.extension.as_ref().unwrap();
    assert_eq!(ext.info.tools[0].name, "m_echo");
    let pid = started.process.as_ref().unwrap().pid();
    let resp = ext
        .service
        .clone()
        .oneshot(ExtRequest::tool_call("m_pid", "{}"))
        .await
        .unwrap();
    assert_eq!(resp, ExtResponse::tool_result(pid.to_string()));

    let services = dir.path().join("services");
    let mode = std::fs::metadata(&services).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "services folder must be private");
    let socket = started
        .process
        .as_ref()
        .unwrap()
        .socket()
        .unwrap()
        .to_owned();
    assert!(socket.exists());

    let outcome = stop(&started, WAIT).await;
    assert!(
        matches!(outcome, StopOutcome::Graceful(s) if s.success()),
        "{outcome:?}"
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "shutdown");
    assert!(!alive(pid), "pid {pid} still alive after shutdown");
    assert!(!socket.exists(), "socket left behind");
    let log = std::fs::read_to_string(dir.path().join("logs/alpha.log")).unwrap();
    assert!(log.contains("exthost: starting alpha"), "{log}");
}

#[tokio::test]
async fn missing_binary_error_says_where_it_looked() {
    let dir = temp_dir();
    let connector = Connector::new(paths(dir.path()));
    let err = connector
        .start(Target::new(
            "ghost",
            ServiceConfig::krate("exthost-no-such-binary"),
        ))
        .await
        .unwrap_err();
    match &err {
        StartError::Spawn(SpawnError::BinaryNotFound { service, looked }) => {
            assert_eq!(service, "ghost");
            assert!(
                looked
                    .iter()
                    .any(|p| p.ends_with(".cargo/bin/exthost-no-such-binary")),
                "{looked:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("looked in"), "{err}");

    let missing = dir.path().join("nope");
    let err = connector
        .start(Target::new("ghost", ServiceConfig::command(&missing)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StartError::Spawn(SpawnError::BinaryNotFound { .. })),
        "{err:?}"
    );

    let not_exec = dir.path().join("plain-file");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let err = connector
        .start(Target::new("ghost", ServiceConfig::command(&not_exec)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StartError::Spawn(SpawnError::NotExecutable { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn binary_the_os_cannot_exec_is_an_exec_error_naming_it() {
    let dir = temp_dir();
    let script = dir.path().join("bad-interpreter");
    std::fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Connector::new(paths(dir.path()))
        .start(Target::new("broken", ServiceConfig::command(&script)))
        .await
        .unwrap_err();
    match &err {
        StartError::Spawn(SpawnError::Exec {
            service, binary, ..
        }) => {
            assert_eq!(service, "broken");
            assert_eq!(binary, &script);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string().starts_with(&format!(
            "service `broken`: cannot spawn {}: ",
            script.display()
        )),
        "{err}"
    );
}

#[tokio::test]
async fn process_exiting_before_ready_reports_status_and_log_tail() {
    let dir = temp_dir();
    let connector = Connector::new(paths(dir.path()));
    // An earlier run's lines in the same log are not this run's tail.
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    std::fs::write(
        dir.path().join("logs/early.log"),
        "--- exthost: starting early: old\nan earlier run's last words\n",
    )
    .unwrap();
    let err = connector
        .start(Target::new("early", mock(&[("MOCK_MODE", "exit")])))
        .await
        .unwrap_err();
    match &err {
        StartError::ExitedEarly {
            service,
            status,
            log_tail,
        } => {
            assert_eq!(service, "early");
            assert_eq!(status.code(), Some(3));
            assert!(log_tail.contains("exiting early as asked"), "{log_tail}");
            assert!(!log_tail.contains("earlier run"), "{log_tail}");
            assert!(
                log_tail.starts_with("--- exthost: starting early: "),
                "{log_tail}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn hanging_extension_does_not_delay_the_others() {
    let dir = temp_dir();
    let connector = Connector::new(paths(dir.path()));
    let hang = mock(&[("MOCK_MODE", "hang")]).with_handshake_timeout(Duration::from_secs(3));
    let mut starts: FuturesUnordered<_> = [
        ("hang", hang),
        ("one", mock(&[("MOCK_SERVICE", "one")])),
        ("two", mock(&[("MOCK_SERVICE", "two")])),
    ]
    .into_iter()
    .map(|(name, cfg)| {
        let connector = connector.clone();
        async move { (name, connector.start(Target::new(name, cfg)).await) }
    })
    .collect();
    let mut order = Vec::new();
    let mut started = Vec::new();
    while let Some((name, result)) = starts.next().await {
        order.push(name);
        match result {
            Ok(s) => started.push(s),
            Err(StartError::Handshake { source, .. }) => {
                assert_eq!(name, "hang");
                assert!(
                    matches!(source, HandshakeError::Timeout { .. }),
                    "{source:?}"
                );
            }
            Err(other) => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(
        order.last(),
        Some(&"hang"),
        "ready ones finish first: {order:?}"
    );
    assert_eq!(started.len(), 2);
    for s in &started {
        stop(s, WAIT).await;
    }
}

#[tokio::test]
async fn extension_ignoring_shutdown_and_sigterm_is_killed_after_the_grace_periods() {
    let dir = temp_dir();
    let connector = Connector::new(paths(dir.path()));
    let started = connector
        .start(Target::new("stubborn", mock(&[("MOCK_MODE", "stubborn")])))
        .await
        .unwrap();
    let pid = started.process.as_ref().unwrap().pid();
    let outcome = stop(&started, Duration::from_millis(300)).await;
    assert!(matches!(outcome, StopOutcome::Killed(_)), "{outcome:?}");
    assert!(!alive(pid));
    let log = started.process.as_ref().unwrap().log_tail(5);
    assert!(log.contains("got shutdown, staying alive anyway"), "{log}");
}

#[tokio::test]
async fn impostor_on_the_socket_is_refused_and_cleaned_up() {
    let dir = temp_dir();
    let connector = Connector::new(paths(dir.path()));
    let err = connector
        .start(Target::new("victim", mock(&[("MOCK_MODE", "impostor")])))
        .await
        .unwrap_err();
    let StartError::Impostor { peer_pid, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        err.to_string().contains("not by the extension we spawned"),
        "{err}"
    );
    // The impostor was in the child's process group, and went with it.
    let peer = peer_pid.expect("Linux reports the peer's pid");
    assert!(gone_within(peer, WAIT).await, "impostor {peer} still alive");
}

#[tokio::test]
async fn over_long_socket_path_is_a_clear_error() {
    let dir = temp_dir();
    let deep = dir.path().join("d".repeat(100));
    let connector = Connector::new(paths(&deep));
    let err = connector
        .start(Target::new("svc", mock(&[])))
        .await
        .unwrap_err();
    match &err {
        StartError::Spawn(SpawnError::SocketPathTooLong { path, max, .. }) => {
            assert_eq!(*max, 107);
            assert!(path.ends_with("services/svc.sock"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("OS limit of 107"), "{err}");
}

#[tokio::test]
async fn loose_services_folder_is_tightened() {
    let dir = temp_dir();
    let services = dir.path().join("services");
    std::fs::create_dir(&services).unwrap();
    std::fs::set_permissions(&services, std::fs::Permissions::from_mode(0o777)).unwrap();
    let connector = Connector::new(paths(dir.path()));
    let started = connector
        .start(Target::new("svc", mock(&[])))
        .await
        .unwrap();
    let mode = std::fs::metadata(&services).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    stop(&started, WAIT).await;
}

#[tokio::test]
async fn many_stubborn_extensions_stopped_together_are_all_killed() {
    let dir = temp_dir();
    let connector = Connector::new(paths(dir.path()));
    let starts = (0..4).map(|i| {
        connector.start(Target::new(
            format!("s{i}"),
            mock(&[("MOCK_MODE", "stubborn")]),
        ))
    });
    let started: Vec<_> = futures::future::try_join_all(starts).await.unwrap();
    let pids: Vec<_> = started
        .iter()
        .map(|s| s.process.as_ref().unwrap().pid())
        .collect();
    let outcomes =
        futures::future::join_all(started.iter().map(|s| stop(s, Duration::from_millis(200))))
            .await;
    assert!(outcomes.iter().all(|o| matches!(o, StopOutcome::Killed(_))));
    assert!(pids.iter().all(|p| !alive(*p)));
}

/// Not a test on its own: the host process for
/// `killing_the_host_with_sigkill_leaves_no_extension_alive`.
#[test]
#[ignore = "run by another test as a child process"]
fn host_process_entry() {
    let Ok(dir) = std::env::var("EXTHOST_TEST_HOST_DIR") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = std::path::Path::new(&dir);
        let connector = Connector::new(paths(dir));
        for name in ["a", "b"] {
            let s = connector.start(Target::new(name, mock(&[]))).await.unwrap();
            println!("{}", s.process.as_ref().unwrap().pid());
        }
        // One that forked a helper into its group: the helper must die too.
        let c = connector
            .start(Target::new("c", forking_mock(dir, "c")))
            .await
            .unwrap();
        println!("{}", c.process.as_ref().unwrap().pid());
        println!("{}", helper_pid(dir, "c"));
        println!("ready");
        std::future::pending::<()>().await;
    });
}

#[tokio::test]
async fn killing_the_host_with_sigkill_leaves_no_extension_alive() {
    let dir = temp_dir();
    let mut host = common::Proc::new(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "host_process_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("EXTHOST_TEST_HOST_DIR", dir.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = host.child.stdout.take().unwrap();
    let pids = tokio::task::spawn_blocking(move || {
        let mut pids = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            // libtest may print its own text before ours on a line.
            let line = line.unwrap();
            let last = line.split_whitespace().last().unwrap_or("");
            if last == "ready" {
                break;
            }
            if let Ok(pid) = last.parse::<u32>() {
                pids.push(pid);
            }
        }
        pids
    })
    .await
    .unwrap();
    assert_eq!(pids.len(), 4, "host did not start its extensions");
    assert!(pids.iter().all(|p| alive(*p)));
    host.child.kill().unwrap(); // SIGKILL
    for pid in pids {
        assert!(
            gone_within(pid, WAIT).await,
            "extension {pid} outlived its host"
        );
    }
}

#[tokio::test]
async fn a_graceful_stop_leaves_nothing_the_extension_forked() {
    let dir = temp_dir();
    let connector = Connector::new(paths(dir.path()));
    let started = connector
        .start(Target::new("f", forking_mock(dir.path(), "f")))
        .await
        .unwrap();
    let helper = helper_pid(dir.path(), "f");
    assert!(alive(helper));
    let outcome = stop(&started, Duration::from_secs(2)).await;
    assert!(matches!(outcome, StopOutcome::Graceful(_)), "{outcome:?}");
    // The leader exited at `shutdown`; stop returns once its group is gone.
    assert!(!alive(started.process.as_ref().unwrap().pid()));
    assert!(!alive(helper), "the helper outlived a graceful stop");
}

#[tokio::test]
async fn a_crash_leaves_nothing_the_extension_forked() {
    let dir = temp_dir();
    let configs: std::collections::BTreeMap<_, _> =
        [("f".to_owned(), forking_mock(dir.path(), "f"))].into();
    let m = exthost::manager::ServiceManager::with_paths(&configs, paths(dir.path()));
    m.start().await;
    let helper = helper_pid(dir.path(), "f");
    let call = exthost::router::ToolCall::new("crash", "{}");
    tower::ServiceExt::oneshot(m.router(), call)
        .await
        .unwrap_err();
    // Failed is set as soon as the crash is known; what is left of the
    // incarnation (its helpers) is stopped right after, with the grace.
    tokio::time::timeout(
        WAIT,
        m.wait_for("f", |s| s.state == exthost::manager::ServiceState::Failed),
    )
    .await
    .unwrap();
    assert!(
        gone_within(helper, WAIT).await,
        "the helper outlived a crash"
    );
    m.shutdown_all().await;
}

#[tokio::test]
async fn gateway_is_spawned_with_daemon_and_config_and_the_environment() {
    let dir = temp_dir();
    let out = dir.path().join("gateway.out");
    let mut fifo = Fifo::create(&out);
    let script = dir.path().join("gateway.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" > {out}\necho \"GW=$GW RUST_LOG=$RUST_LOG\" >> {out}\nexec sleep 30\n",
            out = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = ServiceConfig::command(&script)
        .with_env("GW", "yes")
        .with_env("RUST_LOG", "debug")
        .with_config(serde_json::json!({"room": 1}));
    cfg.kind = exthost::config::ServiceKind::Gateway;
    cfg.args = vec!["--extra".into()];
    let connector = Connector::new(paths(dir.path()));
    let started = connector.start(Target::new("gw", cfg)).await.unwrap();
    assert!(started.extension.is_none(), "gateways are not handshaken");
    // The script writes its two lines into the FIFO before it execs.
    let text = fifo.read_lines(2).await;
    let daemon = dir.path().join("daemon.sock");
    assert_eq!(
        text,
        format!(
            "serve --daemon {} --config {{\"room\":1}} --extra\nGW=yes RUST_LOG=debug\n",
            daemon.display()
        )
    );
    let outcome = started
        .process
        .as_ref()
        .unwrap()
        .stop(None, Duration::from_secs(2))
        .await;
    assert!(matches!(outcome, StopOutcome::Terminated(_)), "{outcome:?}");
}

#[tokio::test]
async fn children_see_the_hosts_rust_log_unless_their_config_sets_one() {
    let dir = temp_dir();
    let out = dir.path().join("gateway.out");
    let mut fifo = Fifo::create(&out);
    std::fs::write(
        dir.path().join("gateway.sh"),
        format!(
            "#!/bin/sh\necho \"$GW_NAME RUST_LOG=$RUST_LOG\" >> {out}\n",
            out = out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.path().join("gateway.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // The host is this test binary again, with RUST_LOG set in its
    // environment to a value no one else uses.
    let marker = format!("exthost_rust_log_marker_{}=trace", std::process::id());
    let host = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "rust_log_host_entry",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env("EXTHOST_TEST_RUST_LOG_DIR", dir.path())
        .env("RUST_LOG", &marker)
        .kill_on_drop(true)
        .output();
    let host = tokio::time::timeout(WAIT, host)
        .await
        .expect("the host did not finish")
        .unwrap();
    assert!(
        host.status.success(),
        "the host failed: {}{}",
        String::from_utf8_lossy(&host.stdout),
        String::from_utf8_lossy(&host.stderr)
    );
    let text = fifo.read_lines(2).await;
    assert_eq!(
        text,
        format!("inherits RUST_LOG={marker}\noverrides RUST_LOG=debug\n")
    );
}

/// Not a test on its own: the host process for
/// `children_see_the_hosts_rust_log_unless_their_config_sets_one`, which
/// sets `RUST_LOG` in its environment. Starts the folder's `gateway.sh`
/// twice, once with a config that sets no `RUST_LOG` and once with one that
/// does, each until it exits.
#[test]
#[ignore = "run by another test as a child process"]
fn rust_log_host_entry() {
    let Ok(dir) = std::env::var("EXTHOST_TEST_RUST_LOG_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let gateway = |name: &str| {
        let mut cfg = ServiceConfig::command(dir.join("gateway.sh")).with_env("GW_NAME", name);
        cfg.kind = exthost::config::ServiceKind::Gateway;
        cfg
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connector = Connector::new(paths(&dir));
        for (name, cfg) in [
            ("inherits", gateway("inherits")),
            (
                "overrides",
                gateway("overrides").with_env("RUST_LOG", "debug"),
            ),
        ] {
            let started = connector.start(Target::new(name, cfg)).await.unwrap();
            let status = started.process.as_ref().unwrap().exited().await;
            assert!(status.success(), "{name}: {status}");
        }
    });
}

/// A FIFO that a spawned script writes its observations into, read by the
/// test as they arrive.
struct Fifo {
    receiver: tokio::net::unix::pipe::Receiver,
    text: Vec<u8>,
}

impl Fifo {
    /// Makes a FIFO at `path` and opens it for reading. Opened read-write,
    /// so that writers never block on opening it and their closing it is no
    /// end of file.
    fn create(path: &std::path::Path) -> Self {
        nix::unistd::mkfifo(
            path,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(path)
            .unwrap();
        Fifo {
            receiver,
            text: Vec::new(),
        }
    }

    /// Everything written so far, once it holds `n` lines (bounded by
    /// [`WAIT`]).
    async fn read_lines(&mut self, n: usize) -> String {
        let read = async {
            while self.text.iter().filter(|b| **b == b'\n').count() < n {
                self.receiver.read_buf(&mut self.text).await.unwrap();
            }
        };
        if tokio::time::timeout(WAIT, read).await.is_err() {
            panic!(
                "waited {WAIT:?} for {n} lines; got {:?}",
                String::from_utf8_lossy(&self.text)
            );
        }
        String::from_utf8(self.text.clone()).unwrap()
    }
}

#[tokio::test]
async fn unusable_folders_are_errors_naming_them_and_others_still_start() {
    let dir = temp_dir();
    // A file where the folders should be: nothing can be created below it.
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let bad_services = Paths {
        services_dir: blocker.join("services"),
        logs_dir: dir.path().join("logs"),
        daemon_socket: dir.path().join("d.sock"),
    };
    let err = Connector::new(bad_services)
        .start(Target::new("svc", mock(&[])))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Spawn(SpawnError::Io { what, .. }) if *what == "create the services folder"),
        "{err:?}"
    );
    let bad_logs = Paths {
        services_dir: dir.path().join("services"),
        logs_dir: blocker.join("logs"),
        daemon_socket: dir.path().join("d.sock"),
    };
    let err = Connector::new(bad_logs)
        .start(Target::new("svc", mock(&[])))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Spawn(SpawnError::Io { what, .. }) if *what == "create the logs folder"),
        "{err:?}"
    );
    assert!(err.to_string().contains("service `svc`"), "{err}");

    // The same failure for one service leaves another unaffected.
    let good = Connector::new(paths(dir.path()))
        .start(Target::new("good", mock(&[])))
        .await
        .unwrap();
    stop(&good, WAIT).await;
}

#[tokio::test]
#[ignore = "needs root (chowns a socket to uid 65534); .ci/run runs it as root with --ignored"]
async fn a_socket_owned_by_another_user_is_not_replaced() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: making a file owned by another user"
    );
    let dir = temp_dir();
    let p = paths(dir.path());
    exthost::process::prepare_private_dir(&p.services_dir).unwrap();
    let socket = p.socket("svc");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    nix::unistd::chown(&socket, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    let err = Connector::new(p)
        .start(Target::new("svc", mock(&[])))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("owned by uid 65534, not by us"),
        "{err}"
    );
    assert!(socket.exists(), "the foreign socket was removed");
}

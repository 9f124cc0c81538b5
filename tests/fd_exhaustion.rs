//! A host out of descriptors while connecting to an extension reports it
//! at once, as a resource error, instead of retrying the connect until the
//! start-up timeout. A test binary of its own: it lowers this process's
//! descriptor limit.

mod common;

use std::time::{Duration, Instant};

use common::{mock, paths, temp_dir, WAIT};
use exthost::connector::wait_for_socket;
use exthost::process;
use exthost::StartError;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

#[tokio::test]
async fn a_connect_out_of_descriptors_fails_at_once_as_a_resource_error() {
    let dir = temp_dir();
    let proc = process::spawn("m", &mock(""), &paths(dir.path())).unwrap();
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Use up every descriptor this process may have.
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, open + 8, hard).unwrap();
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    let began = Instant::now();
    let limit = Duration::from_secs(60);
    let result = tokio::time::timeout(WAIT, wait_for_socket("m", &proc, limit)).await;
    drop(fillers);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    proc.stop(None, Duration::from_secs(5)).await;
    let err = result
        .expect("the connect was retried although no descriptor was left")
        .expect_err("connected without a descriptor");
    assert!(
        matches!(&err, StartError::Resources { .. }) && err.is_resource_exhausted(),
        "{err:?}"
    );
    assert!(err.to_string().contains("out of resources"), "{err}");
    assert!(began.elapsed() < limit);
}

//! `exthost check`: a conformance check for extension authors, printed
//! from [`exthost::conformance`]'s report.

use std::time::Duration;

use exthost::conformance::Checker;

use crate::output::{self, say, CLOSED_OUTPUT};
use serde_json::Value;

/// Checks `program`, prints the report, and returns the exit code: 0 if it
/// conforms (every required check passed; with `strict`, every check), 1
/// otherwise or if the check could not run, 7 if stdout cannot be written.
pub(crate) async fn check(
    config_json: &str,
    timeout: Duration,
    strict: bool,
    program: &[String],
) -> u8 {
    let config: Value = match serde_json::from_str(config_json) {
        Ok(v) => v,
        Err(e) => {
            say!("exthost: --config-json is not JSON: {e}");
            return 1;
        }
    };
    let checker = Checker::new().config(config).timeout(timeout);
    let report = match checker.check_program(&program[0], &program[1..]).await {
        Ok(report) => report,
        Err(e) => {
            say!("exthost: {e}");
            return 1;
        }
    };
    if let Err(e) = output::out(&report.display(strict).to_string()) {
        output::log_closed(Some(&e));
        return CLOSED_OUTPUT;
    }
    match super::pin_hash(std::path::Path::new(&program[0])) {
        Ok(Some(hash)) => say!("sha256: {hash}  {}", program[0]),
        Ok(None) => say!("sha256: a `#!` script, cannot be pinned  {}", program[0]),
        Err(_) => {}
    }
    let conformant = report.is_conformant(strict);
    if !conformant && !report.output().is_empty() {
        say!("last lines of the extension's output:\n{}", report.output());
    }
    u8::from(!conformant)
}

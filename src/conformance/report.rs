use std::fmt;

use super::check::{Check, Level};

/// What came of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// A required check failed, for this reason.
    Fail(String),
    /// A recommended check failed, for this reason: a warning, unless
    /// checking is strict.
    Warn(String),
    /// The check could not run, for this reason (an earlier step failed).
    NotRun(String),
}

impl Outcome {
    /// Whether the check passed.
    pub fn is_pass(&self) -> bool {
        matches!(self, Outcome::Pass)
    }

    /// Why the check did not pass, if it did not.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Pass => None,
            Outcome::Fail(r) | Outcome::Warn(r) | Outcome::NotRun(r) => Some(r),
        }
    }
}

/// The outcome of every check of one run, in run order.
///
/// A check that does not pass fails the run if it is
/// [required](Level::Required); a [recommended](Level::Recommended) one is a
/// warning, unless checking is strict. [`Report::display`] prints it the way
/// `exthost check` does; `{report}` is the same, not strict.
#[derive(Debug, Clone)]
pub struct Report {
    outcomes: Vec<(Check, Outcome)>,
    output: String,
}

impl Report {
    /// The outcome of `check`.
    pub fn outcome(&self, check: Check) -> &Outcome {
        self.outcomes
            .iter()
            .find(|(c, _)| *c == check)
            .map(|(_, o)| o)
            .expect("a report has an outcome for every check")
    }

    /// Every check and its outcome, in run order.
    pub fn iter(&self) -> impl Iterator<Item = (Check, &Outcome)> + '_ {
        self.outcomes.iter().map(|(c, o)| (*c, o))
    }

    /// How many required checks passed.
    pub fn passed_required(&self) -> usize {
        self.iter()
            .filter(|(c, o)| c.is_required() && o.is_pass())
            .count()
    }

    /// How many checks are required (9).
    pub fn required_total(&self) -> usize {
        self.iter().filter(|(c, _)| c.is_required()).count()
    }

    /// How many recommended checks did not pass (failed, or could not run):
    /// the `WARN` lines of `exthost check`.
    pub fn warnings(&self) -> usize {
        self.iter()
            .filter(|(c, o)| !c.is_required() && !o.is_pass())
            .count()
    }

    /// Whether the extension conforms: every required check passed, and,
    /// if `strict`, every recommended check too.
    pub fn is_conformant(&self, strict: bool) -> bool {
        self.iter()
            .all(|(c, o)| o.is_pass() || (!strict && !c.is_required()))
    }

    /// The last lines the program wrote to stdout and stderr, kept from
    /// its log before the check removed it; empty for a stream.
    pub fn output(&self) -> &str {
        &self.output
    }

    /// The report as `exthost check` prints it: a line per check (`PASS
    /// name`, `FAIL name: reason`, or `WARN name: reason` for a recommended
    /// check that did not pass, unless `strict`), then `N/M required
    /// checks passed, K warnings`.
    pub fn display(&self, strict: bool) -> impl fmt::Display + '_ {
        Lines {
            report: self,
            strict,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.display(false).fmt(f)
    }
}

struct Lines<'a> {
    report: &'a Report,
    strict: bool,
}

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (check, outcome) in self.report.iter() {
            let word = match (outcome, check.level()) {
                (Outcome::Pass, _) => {
                    writeln!(f, "PASS {check}")?;
                    continue;
                }
                (_, Level::Recommended) if !self.strict => "WARN",
                _ => "FAIL",
            };
            match outcome {
                Outcome::NotRun(why) => writeln!(f, "{word} {check}: not run: {why}")?,
                other => writeln!(f, "{word} {check}: {}", other.reason().unwrap_or(""))?,
            }
        }
        writeln!(
            f,
            "{}/{} required checks passed, {} warnings",
            self.report.passed_required(),
            self.report.required_total(),
            self.report.warnings()
        )
    }
}

/// Collects outcomes in run order while the checks run.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    outcomes: Vec<(Check, Outcome)>,
}

impl Recorder {
    /// Records `check`, the next in run order: a pass, or a failure that
    /// is a [`Outcome::Fail`] or a [`Outcome::Warn`] by the check's level.
    pub(crate) fn record(&mut self, check: Check, result: Result<(), String>) {
        let outcome = match result {
            Ok(()) => Outcome::Pass,
            Err(reason) if check.is_required() => Outcome::Fail(reason),
            Err(reason) => Outcome::Warn(reason),
        };
        self.push(check, outcome);
    }

    /// Records `check` as not run.
    pub(crate) fn skip(&mut self, check: Check, why: &str) {
        self.push(check, Outcome::NotRun(why.to_owned()));
    }

    /// Records every check not recorded yet as not run.
    pub(crate) fn skip_rest(&mut self, why: &str) {
        for &check in &Check::ALL[self.outcomes.len()..] {
            self.skip(check, why);
        }
    }

    fn push(&mut self, check: Check, outcome: Outcome) {
        debug_assert_eq!(
            Some(&check),
            Check::ALL.get(self.outcomes.len()),
            "checks are recorded in run order"
        );
        self.outcomes.push((check, outcome));
    }

    /// The report, with the program's last lines of output. Every check
    /// must have been recorded.
    pub(crate) fn finish(self, output: String) -> Report {
        assert_eq!(
            self.outcomes.len(),
            Check::ALL.len(),
            "every check is recorded"
        );
        Report {
            outcomes: self.outcomes,
            output,
        }
    }
}

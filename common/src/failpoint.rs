//! Crash points for tests: named places in the protocol where a test can make the
//! process SIGKILL itself or stall, chosen through an environment variable.
//!
//! Test-only by intent, always compiled so the chaos suite can use release binaries.
//! When [`ENV_VAR`] is unset, [`hit`] costs one atomic load.
//!
//! # Syntax
//! `RATIFY_FAILPOINTS="name=action[@probability][,name=action...]"` where action is
//! - `kill`: SIGKILL this process (nothing is flushed, like a power cut for the process);
//! - `sleep:MS`: stall this task for MS milliseconds;
//! - `error:ERRNO`: make the I/O at this place fail with `EIO`, `ENOSPC`, `EDQUOT` or
//!   a number (places that do I/O ask with [`io_error`]);
//! - `off`: nothing (handy to switch one off in a list);
//! - `on`: a switch read with [`is_on`] rather than a place passed with [`hit`].
//!
//! `@p` (0 < p ≤ 1) fires the action on that fraction of hits, at random; without it
//! every hit fires. Example: `RATIFY_FAILPOINTS="pg.before_commit_prepared=kill"`.
//!
//! # Fail points of the SDK and the coordinator
//! - `participant.after_prepare`: the resource voted (YES is durable), the vote is not sent;
//! - `participant.before_commit`, `participant.after_commit` (committed, not acknowledged);
//! - `participant.before_rollback`; `participant.recovery_resolve` (recovery is about to
//!   apply an outcome);
//! - coordinator: `coord.before_prepare`, `coord.after_votes` (no decision yet),
//!   `coord.after_decision` (logged, no phase 2 yet), `coord.after_phase2_ack` (one
//!   branch acknowledged), `coord.before_complete`, `coord.recovery` (a new leader is
//!   about to re-drive), `coord.before_one_phase` (hand-over logged, nothing sent),
//!   `coord.after_one_phase` (the participant answered, its answer not logged),
//!   `coord.before_timeout_abort` (the scan chose an expired transaction, the abort
//!   is not proposed yet), `coord.before_enlist` (an Enlist passed its checks, not
//!   proposed yet), `sm.before_install_save` (a follower received a snapshot and has
//!   not written it yet);
//! - adapters add their own (`pg.*`, `kafka.*`), documented in their modules.
//!
//! # Deliberate bugs (switches, `name=on`)
//! They exist only to show that the chaos suite's checker catches a broken rule; a
//! node running one is no longer correct.
//! - `bug.commit_before_decision`: the coordinator sends COMMIT to every prepared
//!   branch as soon as the votes are in, *before* the decision is logged (breaks
//!   docs/design.md, rule 2). A leader that dies in between leaves committed branches of a
//!   transaction the next leader aborts.
//!
//! Each hit that fires is logged on stderr as `ratify failpoint <name>: <action>` before
//! it acts, so a test can tell a planned crash from a real one.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable holding the fail-point specification.
pub const ENV_VAR: &str = "RATIFY_FAILPOINTS";

/// What a fail point does when it fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// SIGKILL the process.
    Kill,
    /// Stall for this long.
    Sleep(Duration),
    /// Fail the I/O with this OS error code.
    Error(i32),
    /// Nothing.
    Off,
    /// A switch: [`is_on`] answers true; [`hit`] does nothing.
    On,
}

/// One configured fail point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spec {
    /// The action.
    pub action: Action,
    /// Fraction of hits that fire, in (0, 1].
    pub probability: f64,
}

/// A malformed [`ENV_VAR`] value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {ENV_VAR} entry {entry:?}: {why}")]
pub struct ParseError {
    /// The offending entry.
    pub entry: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Parses a specification (the value of [`ENV_VAR`]).
///
/// # Errors
/// [`ParseError`] naming the first malformed entry.
pub fn parse(spec: &str) -> Result<HashMap<String, Spec>, ParseError> {
    let mut out = HashMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why| ParseError {
            entry: entry.to_string(),
            why,
        };
        let (name, rest) = entry
            .split_once('=')
            .ok_or_else(|| bad("expected name=action"))?;
        let (action, probability) = match rest.split_once('@') {
            Some((a, p)) => {
                let p: f64 = p.parse().map_err(|_| bad("probability is not a number"))?;
                if !(p > 0.0 && p <= 1.0) {
                    return Err(bad("probability must be in (0, 1]"));
                }
                (a, p)
            }
            None => (rest, 1.0),
        };
        let action = match action {
            "kill" => Action::Kill,
            "off" => Action::Off,
            "on" => Action::On,
            other => match (other.strip_prefix("sleep:"), other.strip_prefix("error:")) {
                (Some(ms), _) => Action::Sleep(Duration::from_millis(
                    ms.parse().map_err(|_| bad("sleep:MS needs milliseconds"))?,
                )),
                (_, Some(errno)) => Action::Error(match errno {
                    "EIO" => libc::EIO,
                    "ENOSPC" => libc::ENOSPC,
                    "EDQUOT" => libc::EDQUOT,
                    n => n
                        .parse()
                        .map_err(|_| bad("error:ERRNO needs EIO, ENOSPC, EDQUOT or a number"))?,
                }),
                (None, None) => {
                    return Err(bad("action must be kill, sleep:MS, error:ERRNO, off or on"))
                }
            },
        };
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        out.insert(
            name.to_string(),
            Spec {
                action,
                probability,
            },
        );
    }
    Ok(out)
}

fn configured() -> &'static HashMap<String, Spec> {
    static POINTS: OnceLock<HashMap<String, Spec>> = OnceLock::new();
    POINTS.get_or_init(|| match std::env::var(ENV_VAR) {
        Ok(v) => parse(&v).unwrap_or_else(|e| {
            // A test that sets a bad spec must not run as if no fail point were set.
            eprintln!("{e}");
            std::process::abort()
        }),
        Err(_) => HashMap::new(),
    })
}

/// The action that fires at `name` for this hit, if any.
fn fires(name: &str) -> Option<Action> {
    let spec = configured().get(name)?;
    if matches!(spec.action, Action::Off | Action::On) {
        return None;
    }
    if spec.probability < 1.0 && rand::random::<f64>() >= spec.probability {
        return None;
    }
    eprintln!("ratify failpoint {name}: {:?}", spec.action);
    Some(spec.action)
}

/// Is switch `name` configured `on`? (See "Deliberate bugs" above.) Logged on stderr
/// the first time it is asked, so a run's log shows that it ran broken on purpose.
pub fn is_on(name: &str) -> bool {
    let on = configured()
        .get(name)
        .is_some_and(|s| s.action == Action::On);
    if on {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| eprintln!("ratify failpoint {name}: deliberate bug switched on"));
    }
    on
}

/// Passes fail point `name`: SIGKILLs the process or stalls the task when configured.
pub async fn hit(name: &str) {
    match fires(name) {
        Some(Action::Kill) => kill_self(),
        Some(Action::Sleep(d)) => tokio::time::sleep(d).await,
        Some(Action::Off | Action::On | Action::Error(_)) | None => {}
    }
}

/// Like [`hit`] for synchronous code: a `sleep` blocks the thread.
pub fn hit_blocking(name: &str) {
    match fires(name) {
        Some(Action::Kill) => kill_self(),
        Some(Action::Sleep(d)) => std::thread::sleep(d),
        Some(Action::Off | Action::On | Action::Error(_)) | None => {}
    }
}

/// Passes I/O fail point `name`: the error to fail the I/O with, when it is
/// configured `error:ERRNO` and fires (also `kill` and `sleep` act, as in
/// [`hit_blocking`]).
pub fn io_error(name: &str) -> Option<std::io::Error> {
    match fires(name) {
        Some(Action::Error(code)) => Some(std::io::Error::from_raw_os_error(code)),
        Some(Action::Kill) => kill_self(),
        Some(Action::Sleep(d)) => {
            std::thread::sleep(d);
            None
        }
        Some(Action::Off | Action::On) | None => None,
    }
}

fn kill_self() -> ! {
    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    // SIGKILL cannot be caught; this is never reached.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_and_probabilities() {
        let p =
            parse("a=kill, b=sleep:25@0.5,c=off,d=on,e=error:ENOSPC,f=error:5@0.1").expect("valid");
        assert_eq!(p["e"].action, Action::Error(libc::ENOSPC));
        assert_eq!(p["f"].action, Action::Error(5));
        assert_eq!(p["d"].action, Action::On);
        assert_eq!(p["a"].action, Action::Kill);
        assert_eq!(p["a"].probability, 1.0);
        assert_eq!(p["b"].action, Action::Sleep(Duration::from_millis(25)));
        assert_eq!(p["b"].probability, 0.5);
        assert_eq!(p["c"].action, Action::Off);
        assert!(parse("").expect("empty is fine").is_empty());
    }

    #[test]
    fn rejects_malformed_entries() {
        for bad in [
            "a",
            "a=explode",
            "a=sleep:x",
            "a=kill@0",
            "a=kill@1.5",
            "a=kill@x",
            "a=error:EWHAT",
            "=kill",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be refused");
        }
    }
}

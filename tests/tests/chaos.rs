//! The chaos suite in CI: one bounded run with a fixed seed that must keep every rule,
//! and one run with a deliberately broken coordinator that the checker must catch.
//! (The long mode is the `chaos` binary; see the README.)

use std::time::Duration;

use ratify_tests::chaos::{self, world::AppKind, ChaosConfig, Summary};

/// Both runs kill the shared postmaster and broker: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn config(seed: u64, duration: Duration, dir: &tempfile::TempDir) -> ChaosConfig {
    let keep = std::env::var_os("RATIFY_KEEP_TEST_DIRS").is_some();
    let path = if keep {
        let p = std::env::temp_dir().join(format!("ratify-chaos-test-{seed}"));
        eprintln!("keeping the run's folder: {}", p.display());
        p
    } else {
        dir.path().to_path_buf()
    };
    ChaosConfig::new(seed, duration, path)
}

async fn run(config: ChaosConfig) -> anyhow::Result<Summary> {
    let summary = chaos::run(config).await?;
    eprintln!("{}", summary.render());
    Ok(summary)
}

/// Every component kind is killed at least once (leader, follower, two nodes, each
/// application, postmaster, broker), fail points crash processes mid-protocol, the
/// leader is partitioned away (briefly, and once long enough for the majority to
/// snapshot and purge past its log) and paused (SIGSTOP), a disk fault fires (a node
/// fail-stops on a failed log write or sync, or the store's sync fails), one-phase
/// transactions run (some
/// giving up on a slow commit and rolling back), and afterwards the checker finds every transaction
/// atomic, every acknowledged commit present, no leftovers and the money conserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_chaos_run_keeps_every_rule() -> anyhow::Result<()> {
    ratify_tests::init_logging();
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir()?;
    let mut c = config(7, Duration::from_secs(75), &dir);
    c.nemesis.interval_ms = (150, 600);
    // However slow this machine is today, every kind of fault happens.
    c.min_rounds = 1;
    // Arm fail points more often than by default, so crashes inside the protocol
    // happen even in a short run (every restart armed makes the system crash-loop).
    c.nemesis.arm_probability = 0.7;
    c.nemesis.failpoint_probability = 0.2;
    let s = run(c).await?;
    assert!(
        s.violations.is_empty(),
        "seed {}: {} violations, first: {:?}",
        s.seed,
        s.violations.len(),
        s.violations.first()
    );
    assert!(
        s.txns.committed >= 50,
        "too little work to mean anything: {:?}",
        s.txns
    );
    assert!(s.txns.aborted > 0, "no aborts: the faults did not bite");
    let mut kinds = vec!["leader", "follower", "two_nodes", "postmaster", "broker"];
    let apps: Vec<String> = AppKind::ALL
        .iter()
        .map(|k| format!("app:{}", k.name()))
        .collect();
    kinds.extend(apps.iter().map(String::as_str));
    for k in kinds {
        assert!(
            s.kills_by_kind.get(k).copied().unwrap_or(0) > 0,
            "no {k} kill in {:?}",
            s.kills_by_kind
        );
    }
    assert!(
        s.kills_by_kind.keys().any(|k| k.starts_with("failpoint:")),
        "no fail point crash in {:?}",
        s.kills_by_kind
    );
    for k in ["partition_leader", "long_partition"] {
        assert!(
            s.partitions_by_kind.get(k).copied().unwrap_or(0) > 0,
            "no {k} in {:?}",
            s.partitions_by_kind
        );
    }
    assert!(
        s.disk_faults > 0,
        "no disk fault fired ({} armed)",
        s.disk_faults_armed
    );
    assert!(
        s.pauses_by_kind.get("leader").copied().unwrap_or(0) > 0,
        "the leader was never paused: {:?}",
        s.pauses_by_kind
    );
    assert!(
        s.txns.one_phase_committed > 0 && s.txns.commit_gave_up > 0,
        "no one-phase commit, or none given up on: {:?}",
        s.txns
    );
    assert!(s.unexpected_exits.is_empty(), "{:?}", s.unexpected_exits);
    assert!(s.nemesis_errors.is_empty(), "{:?}", s.nemesis_errors);
    // The operator took part: it aborted live transactions (and was refused or told
    // the recorded outcome for others), and the checker found nothing.
    assert!(
        s.operator_actions
            .get("abort_changed")
            .copied()
            .unwrap_or(0)
            > 0,
        "the operator aborted nothing: {:?}",
        s.operator_actions
    );
    Ok(())
}

/// With the test-only switch that makes the coordinator send COMMIT before anything of
/// the commit is logged (docs/design.md, rules 2 and 16), and leaders dying between the
/// two, the checker reports atomicity violations: it is able to see the bug this suite
/// exists to catch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_a_commit_sent_before_the_decision() -> anyhow::Result<()> {
    ratify_tests::init_logging();
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir()?;
    let mut c = config(11, Duration::from_secs(20), &dir);
    // The leader dies after the early COMMITs (to all branches but the last) and
    // before logging anything now and then; the next leader, asked by the last branch,
    // then presumes aborted a transaction whose other branches committed.
    c.node_failpoints = "bug.commit_before_decision=on,coord.after_votes=kill@0.05".into();
    // The bug needs no help from the other faults; keep the run short.
    c.apps.retain(|k| *k != AppKind::Kafka);
    c.nemesis.faults = vec![chaos::nemesis::Fault::App(AppKind::Store)];
    // Two-phase transactions only, and no operator: the violation must come from
    // this bug.
    c.one_phase_share = 0.0;
    c.operator = false;
    c.slow_one_phase = None;
    c.nemesis.interval_ms = (3_000, 5_000);
    c.quiet_timeout = Duration::from_secs(30);
    // No long partitions here: the coordinator's default snapshot interval, as before
    // the long faults came.
    c.snapshot_every = 20_000;
    let s = run(c).await?;
    // The bug's signature: a transaction the coordinator aborted with a branch that
    // committed (not merely slow or unfinished work).
    assert!(
        s.violations.iter().any(|v| v.rule == "atomicity"
            && v.detail.contains("recorded ABORTED")
            && v.detail.contains("present")),
        "the broken coordinator went unnoticed: {:?}",
        s.violations
    );
    Ok(())
}

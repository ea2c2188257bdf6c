//! Hostile command sequences (issue 16, "hostile bytes"): whatever a log holds, in any
//! order, applying it never panics and keeps the table's invariants. Cases: 256 per
//! property in the test suite; more with `PROPTEST_CASES=20000 cargo test -p
//! ratify-coordinator --lib proptests` (README, "Tests").

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::raft::codec;

/// Small spaces, so commands meet: few transaction numbers, few branches.
fn txn() -> impl Strategy<Value = u64> {
    0u64..8
}

fn bquals() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..5, 0..4)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z]{1,8}", ".{0,40}"]
}

fn spec() -> impl Strategy<Value = BranchSpec> {
    (
        prop_oneof!["p:[1-3]", ".{0,12}"],
        prop_oneof!["r[1-2]", ".{0,6}"],
    )
        .prop_map(|(endpoint, resource)| BranchSpec { endpoint, resource })
}

fn reason() -> impl Strategy<Value = Reason> {
    prop_oneof![
        Just(Reason::ClientCommit),
        Just(Reason::ClientRollback),
        Just(Reason::Timeout),
        Just(Reason::VotedNo),
        Just(Reason::ParticipantUnreachable),
        Just(Reason::ParticipantInquiry),
        Just(Reason::Operator),
        Just(Reason::OnePhase),
        Just(Reason::ProtocolError),
        Just(Reason::OnePhaseRefused),
        Just(Reason::LeaderLost),
    ]
}

fn audit_entry() -> impl Strategy<Value = AuditEntry> {
    (
        text(),
        prop_oneof![
            Just(OperatorAction::Abort),
            Just(OperatorAction::Commit),
            Just(OperatorAction::SettleHeuristic)
        ],
        text(),
        any::<u64>(),
    )
        .prop_map(|(operator, action, reason, at_ms)| AuditEntry {
            operator,
            action,
            reason,
            at_ms,
        })
}

fn decision() -> impl Strategy<Value = Decision> {
    (
        any::<bool>(),
        reason(),
        text(),
        0u64..10_000,
        prop::option::of(audit_entry()),
    )
        .prop_map(|(commit, reason, detail, decided_ms, audit)| Decision {
            commit,
            reason,
            detail,
            decided_ms,
            audit: audit.map(AuditTrail::of).unwrap_or_default(),
        })
}

fn seed() -> impl Strategy<Value = Seed> {
    (
        0u64..10_000,
        0u64..20_000,
        prop::collection::btree_map("[a-z]{1,3}", text(), 0..3),
        prop::collection::vec(spec(), 0..4),
    )
        .prop_map(|(created_ms, deadline_ms, labels, branches)| Seed {
            created_ms,
            deadline_ms,
            labels,
            branches,
        })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (1u64..4).prop_map(|cluster_id| Command::SetClusterId { cluster_id }),
        (0u64..10).prop_map(|upto| Command::Reserve { upto }),
        (txn(), seed(), any::<bool>()).prop_map(|(txn, seed, held)| Command::Open {
            txn,
            seed,
            held
        }),
        (txn(), spec()).prop_map(|(txn, branch)| Command::Enlist { txn, branch }),
        (
            txn(),
            decision(),
            prop::option::of(0u32..5),
            bquals(),
            any::<bool>(),
            0u64..3
        )
            .prop_map(
                |(txn, decision, prepared_branches, skip_phase2, complete, round)| {
                    Command::Decide {
                        txn,
                        decision,
                        prepared_branches,
                        skip_phase2,
                        complete,
                        round,
                    }
                }
            ),
        (
            prop::collection::vec(txn(), 0..4),
            0u64..100_000,
            prop::collection::vec(txn(), 0..2)
        )
            .prop_map(|(txns, now_ms, abandoned)| Command::Complete {
                txns,
                now_ms,
                abandoned,
            }),
        // The driver hands over single-branch transactions only; a log may say
        // anything.
        (txn(), prop_oneof![3 => Just(1u32), 1 => 0u32..4])
            .prop_map(|(txn, branches)| Command::HandOver { txn, branches }),
        (txn(), 0u32..5, any::<bool>(), text(), any::<bool>()).prop_map(
            |(txn, bqual, committed, detail, settled)| Command::Heuristic {
                txn,
                bqual,
                heuristic: Heuristic {
                    committed,
                    detail,
                    at_ms: 0,
                    settled,
                },
            }
        ),
        (0u64..100_000, 0u64..4, 0u64..6).prop_map(|(min_age_ms, min_count, max_count)| {
            Command::SetRetention(Retention {
                min_age_ms,
                min_count,
                max_count,
            })
        }),
        (txn(), 0u32..5, 0u64..3).prop_map(|(txn, branches, round)| Command::CommitStarted {
            txn,
            branches,
            round,
        }),
        (txn(), bquals()).prop_map(|(txn, bquals)| Command::Acknowledged { txn, bquals }),
        (txn(), bquals(), audit_entry())
            .prop_map(|(txn, bquals, audit)| { Command::SettleHeuristic { txn, bquals, audit } }),
        (
            prop_oneof!["p[1-3]", ".{0,8}"],
            prop_oneof!["h:[1-3]", ".{0,8}"],
            text()
        )
            .prop_map(|(name, endpoint, by)| Command::Register {
                name,
                endpoint,
                by,
                at_ms: 0
            }),
        prop_oneof!["p[1-3]", ".{0,8}"].prop_map(|name| Command::Unregister { name }),
        any::<[u8; 32]>().prop_map(|secret| Command::SetSecret { secret }),
    ]
}

/// What a transaction was decided as, where the table still says.
fn decided(table: &TxnTable, txn: u64) -> Option<bool> {
    match table.lookup(txn) {
        Lookup::Live(rec) => rec.decision.as_ref().map(|d| d.commit),
        Lookup::Finished(f) => Some(f.decision.commit),
        Lookup::Forgotten | Lookup::Absent | Lookup::Unknown => None,
    }
}

/// The decision the table holds for `txn`, live or finished.
fn decision_of(table: &TxnTable, txn: u64) -> Option<&Decision> {
    match table.lookup(txn) {
        Lookup::Live(rec) => rec.decision.as_ref(),
        Lookup::Finished(f) => Some(&f.decision),
        Lookup::Forgotten | Lookup::Absent | Lookup::Unknown => None,
    }
}

/// What an undecided live record was, before a command.
#[derive(Clone, Copy)]
struct Before {
    handed_over: bool,
    committing: bool,
    round: u64,
}

fn undecided_before(table: &TxnTable) -> BTreeMap<u64, Before> {
    table
        .live
        .iter()
        .filter(|(_, rec)| rec.decision.is_none())
        .map(|(&txn, rec)| {
            (
                txn,
                Before {
                    handed_over: rec.handed_over,
                    committing: rec.committing,
                    round: rec.round,
                },
            )
        })
        .collect()
}

/// Who may decide what (docs/design.md, rules 10 and 16), across one command: a
/// handed-over transaction is decided only by its participant's one-phase answer,
/// and a committing one is aborted only by the round that marked it, on a vote that
/// failed.
fn check_transition(
    before: &BTreeMap<u64, Before>,
    cmd: &Command,
    table: &TxnTable,
) -> Result<(), TestCaseError> {
    for (&txn, was) in before {
        let Some(d) = decision_of(table, txn) else {
            continue;
        };
        if was.handed_over {
            prop_assert!(
                d.reason.is_one_phase_answer(),
                "txn {txn}: handed over, decided by {:?}",
                d.reason
            );
        } else if was.committing && !d.commit {
            let by_marker = matches!(
                cmd,
                Command::Decide { txn: t, round, .. } if *t == txn && *round == was.round
            ) && matches!(
                d.reason,
                Reason::VotedNo | Reason::ParticipantUnreachable | Reason::ProtocolError
            );
            prop_assert!(
                by_marker,
                "txn {txn}: committing in round {}, aborted by {:?}",
                was.round,
                cmd
            );
        }
    }
    Ok(())
}

/// The table's invariants after any prefix of any sequence.
fn check(table: &TxnTable, first_decisions: &mut BTreeMap<u64, bool>) -> Result<(), TestCaseError> {
    for (&txn, rec) in &table.live {
        // A live record's branches are numbered 1..=n in order, at most MAX_BRANCHES.
        prop_assert!(
            rec.branches.len() <= MAX_BRANCHES,
            "txn {txn}: too many branches"
        );
        for (i, b) in rec.branches.iter().enumerate() {
            prop_assert_eq!(b.bqual as usize, i + 1, "txn {}: bquals out of order", txn);
        }
        // Live and finished (or pinned) are exclusive.
        prop_assert!(
            table.finished.get(&txn).is_none() && table.pinned.get(&txn).is_none(),
            "txn {txn} is live and finished"
        );
        // A handed-over transaction has exactly one branch.
        if rec.handed_over {
            prop_assert_eq!(
                rec.branches.len(),
                1,
                "txn {} handed over with other than 1 branch",
                txn
            );
        }
    }
    // The first decision wins: once decided, the outcome never changes while the
    // table knows it. (A generated sequence may re-open a number after its outcome
    // was forgotten, which no leader does; the check restarts there.)
    for txn in 0..8 {
        match decided(table, txn) {
            Some(commit) => {
                let first = *first_decisions.entry(txn).or_insert(commit);
                prop_assert_eq!(first, commit, "txn {}: decision changed", txn);
            }
            None => {
                if !matches!(table.lookup(txn), Lookup::Live(_)) {
                    first_decisions.remove(&txn);
                }
            }
        }
    }
    // The registry is bounded, and one endpoint belongs to one name.
    prop_assert!(table.participants.len() <= MAX_PARTICIPANTS);
    let mut endpoints: Vec<&str> = table
        .participants
        .values()
        .map(|p| p.endpoint.as_str())
        .collect();
    endpoints.sort_unstable();
    let n = endpoints.len();
    endpoints.dedup();
    prop_assert_eq!(endpoints.len(), n, "an endpoint registered under two names");
    // Numbers at or above the reserved mark were never issued, so nothing of them is
    // recorded.
    for &txn in table.live.keys() {
        prop_assert!(
            txn < table.next_txn,
            "txn {txn} recorded above the mark {}",
            table.next_txn
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_command_sequence_keeps_the_invariants(cmds in prop::collection::vec(command(), 0..60)) {
        let mut table = TxnTable::default();
        let mut first = BTreeMap::new();
        for cmd in cmds {
            let before = undecided_before(&table);
            let _ = table.apply(cmd.clone());
            check_transition(&before, &cmd, &table)?;
            check(&table, &mut first)?;
        }
    }

    /// Every replica ends up the same: applying is a pure function of the sequence,
    /// and a snapshot taken anywhere (encoded and decoded as a follower installs it)
    /// continues exactly as the table it was taken from.
    #[test]
    fn replicas_and_snapshots_agree(
        cmds in prop::collection::vec(command(), 0..60),
        cut in 0usize..60,
    ) {
        let mut a = TxnTable::default();
        let mut b = TxnTable::default();
        let cut = cut.min(cmds.len());
        for cmd in &cmds[..cut] {
            let ra = a.apply(cmd.clone());
            let rb = b.apply(cmd.clone());
            prop_assert_eq!(ra, rb);
        }
        let bytes = codec::encode(&a).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut installed: TxnTable = codec::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&installed, &a);
        for cmd in &cmds[cut..] {
            let ra = a.apply(cmd.clone());
            let rs = installed.apply(cmd.clone());
            prop_assert_eq!(ra, rs);
        }
        prop_assert_eq!(installed, a);
    }

    /// A log entry's bytes from anywhere (a torn write, another program, a hostile
    /// peer) decode to an error or to commands; they never panic the reader.
    #[test]
    fn hostile_bytes_never_panic_the_decoder(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<Vec<Command>>(&bytes);
        let _ = codec::decode::<TxnTable>(&bytes);
        for version in [6u8, 7] {
            let mut versioned = bytes.clone();
            versioned.insert(0, version);
            let _ = codec::decode::<Vec<Command>>(&versioned);
            let _ = codec::decode::<TxnTable>(&versioned);
        }
    }
}

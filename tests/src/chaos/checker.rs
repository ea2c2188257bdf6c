//! The checker: once the run is healed and quiet, compares what clients were told,
//! what the coordinator recorded and what each participant really did.
//!
//! Rules checked (each failure is one [`Violation`]):
//! - **atomicity**: every branch of a transaction committed iff the coordinator
//!   recorded COMMITTED (Postgres: the branch's `chaos_ledger` row; account store: its
//!   committed outcome; Kafka: its event, read `read_committed` by the Java client);
//! - **exactly once**: no Kafka event appears twice;
//! - **acknowledged means done**: a client told COMMITTED (ABORTED) finds its
//!   branches committed (rolled back) and the coordinator's outcome COMMITTED
//!   (ABORTED); for a one-phase transaction, whose single participant decides, this is
//!   what shows a commit reported as an abort (including when the client gave up on
//!   Commit and was told by Rollback);
//! - **finished**: every transaction is COMPLETED at the coordinator;
//! - **heuristic**: no transaction is HEURISTIC (a branch answered phase 2 against
//!   the decision, and the coordinator says so);
//! - **no leftovers**: no Postgres prepared transaction, no prepared store or Kafka
//!   branch, no open Kafka transaction, no live coordinator transaction;
//! - **conservation**: the Postgres and store balances add up to the opening total.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use ratify_participant_sdk::client::{ClientError, CoordinatorClient};
use ratify_participant_sdk::xid::Xid;
use ratify_proto::pb;
use serde::Serialize;
use serde_json::json;

use super::history::{Told, TxnRecord};
use super::world::app_call;

/// One broken rule.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// Which rule (`atomicity`, `exactly_once`, `acknowledged`, `finished`,
    /// `heuristic`, `leftover`, `conservation`).
    pub rule: String,
    /// The transaction concerned, if one.
    pub gtrid: String,
    /// What was seen.
    pub detail: String,
}

/// What the participants hold at the end of a run.
#[derive(Debug, Default)]
pub struct Evidence {
    /// Gtrids with a Postgres ledger row.
    pub pg: BTreeSet<String>,
    /// Gtrids whose account-store branch committed.
    pub store: BTreeSet<String>,
    /// Gtrid → how many times its event is in the topic (`read_committed`).
    pub kafka: HashMap<String, usize>,
    /// Sum of Postgres balances.
    pub pg_total: i64,
    /// Sum of account-store balances.
    pub store_total: i64,
    /// Postgres accounts whose balance is not the opening balance plus their ledger
    /// rows (a lost or doubled update), as text.
    pub ledger_mismatches: Vec<String>,
    /// Leftovers found, as text.
    pub leftovers: Vec<String>,
}

/// Where the checker looks.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The run's Postgres database URL.
    pub pg_url: String,
    /// The Postgres application's work address.
    pub pg_app: String,
    /// The account store's work address.
    pub store_app: String,
    /// The Kafka application's work address (if the run has one).
    pub kafka_app: Option<String>,
    /// The events topic.
    pub topic: String,
    /// The adapter's ledger topic.
    pub ledger_topic: String,
    /// Opening balance of each account.
    pub opening_balance: i64,
}

/// What an application's work API says about its own state.
async fn inspect(app: &str) -> anyhow::Result<serde_json::Value> {
    app_call(app, &json!({"op": "inspect"}), Duration::from_secs(10)).await
}

/// Counts of a run's leftovers; empty when quiet.
///
/// # Errors
/// When a source cannot be read.
pub async fn leftovers(
    sources: &Sources,
    client: &CoordinatorClient,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let db = ratify_examples::pg_bank::connect(&sources.pg_url).await?;
    let prepared: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            &[],
        )
        .await?
        .get(0);
    if prepared > 0 {
        out.push(format!("{prepared} Postgres prepared transaction(s)"));
    }
    // (application, field of its `inspect` answer, what a non-zero count means)
    let mut counted = vec![
        (
            &sources.pg_app,
            "open",
            "open Postgres branch(es) at the application",
        ),
        (
            &sources.store_app,
            "prepared",
            "prepared account-store branch(es)",
        ),
    ];
    if let Some(kafka_app) = &sources.kafka_app {
        counted.push((kafka_app, "prepared", "staged Kafka branch(es)"));
    }
    for (app, field, what) in counted {
        let n = inspect(app).await?[field].as_u64().unwrap_or(0);
        if n > 0 {
            out.push(format!("{n} {what}"));
        }
    }
    if sources.kafka_app.is_some() {
        for topic in [&sources.topic, &sources.ledger_topic] {
            for (tp, n) in crate::kafka::open_transactions(topic).await? {
                if n > 0 {
                    out.push(format!(
                        "open Kafka transaction on {tp} ({n} offsets above the LSO)"
                    ));
                }
            }
        }
    }
    let live = client.list(None, 1000, "").await?;
    if !live.transactions.is_empty() {
        out.push(format!(
            "{} live coordinator transaction(s), e.g. {} in {:?}",
            live.transactions.len(),
            live.transactions[0].gtrid,
            pb::TxnState::try_from(live.transactions[0].state).unwrap_or(pb::TxnState::Unspecified)
        ));
    }
    Ok(out)
}

/// Reads what the participants hold.
///
/// # Errors
/// When a source cannot be read.
pub async fn gather(sources: &Sources, client: &CoordinatorClient) -> anyhow::Result<Evidence> {
    let mut ev = Evidence {
        leftovers: leftovers(sources, client).await?,
        ..Evidence::default()
    };
    let db = ratify_examples::pg_bank::connect(&sources.pg_url).await?;
    for row in db.query("SELECT gtrid FROM chaos_ledger", &[]).await? {
        ev.pg.insert(row.get(0));
    }
    for row in db
        .query(
            "SELECT a.id, a.balance, COALESCE(sum(l.delta), 0)::bigint \
             FROM chaos_accounts a LEFT JOIN chaos_ledger l ON l.account = a.id \
             GROUP BY a.id, a.balance \
             HAVING a.balance <> $1::bigint + COALESCE(sum(l.delta), 0)::bigint",
            &[&sources.opening_balance],
        )
        .await?
    {
        let (id, balance, sum): (i32, i64, i64) = (row.get(0), row.get(1), row.get(2));
        ev.ledger_mismatches.push(format!(
            "Postgres account {id} holds {balance}, its ledger says {}",
            sources.opening_balance + sum
        ));
    }
    ev.pg_total = db
        .query_one(
            "SELECT COALESCE(sum(balance), 0)::bigint FROM chaos_accounts",
            &[],
        )
        .await?
        .get(0);
    let store = inspect(&sources.store_app).await?;
    ev.store_total = store["total"].as_i64().context("store total")?;
    for x in store["committed"].as_array().context("store committed")? {
        let xid: Xid = x.as_str().context("xid")?.parse()?;
        ev.store.insert(xid.gtrid().to_string());
    }
    if sources.kafka_app.is_some() {
        for r in crate::kafka::read_committed(&sources.topic).await? {
            let v: serde_json::Value =
                serde_json::from_str(r.value.as_deref().unwrap_or("")).unwrap_or_default();
            // A garbled event counts under a gtrid no transaction has, so it is reported.
            let g = v["gtrid"].as_str().map_or_else(
                || format!("garbled event at offset {}", r.offset),
                str::to_string,
            );
            *ev.kafka.entry(g).or_insert(0) += 1;
        }
    }
    Ok(ev)
}

/// The coordinator's record of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// COMPLETED or decided, with the outcome.
    Decided {
        /// COMMITTED?
        committed: bool,
        /// Every branch acknowledged (COMPLETED)?
        completed: bool,
    },
    /// Not decided (ACTIVE, PREPARING, or ONE_PHASE: waiting for its participant).
    Undecided,
    /// Decided, but a branch answered phase 2 against the decision (HEURISTIC): the
    /// coordinator itself reports a contradiction.
    Heuristic {
        /// COMMITTED was the decision?
        committed: bool,
    },
    /// Completed so long ago that its outcome was dropped (FORGOTTEN).
    Forgotten,
    /// The coordinator does not know it.
    Unknown,
    /// The coordinator could not be asked.
    Unreachable,
}

impl Recorded {
    /// What a GetTransaction answer says: decided or not.
    pub fn of(t: &pb::Transaction) -> Self {
        let state = pb::TxnState::try_from(t.state).unwrap_or(pb::TxnState::Unspecified);
        let outcome = pb::Outcome::try_from(t.outcome).unwrap_or(pb::Outcome::Unspecified);
        let completed = state == pb::TxnState::Completed;
        match (state, outcome) {
            (pb::TxnState::Active | pb::TxnState::Preparing | pb::TxnState::OnePhase, _) => {
                Recorded::Undecided
            }
            (_, pb::Outcome::Forgotten) => Recorded::Forgotten,
            (pb::TxnState::Heuristic, o) => Recorded::Heuristic {
                committed: o == pb::Outcome::Committed,
            },
            (_, pb::Outcome::Committed) => Recorded::Decided {
                committed: true,
                completed,
            },
            (_, pb::Outcome::Aborted) => Recorded::Decided {
                committed: false,
                completed,
            },
            _ => Recorded::Undecided,
        }
    }
}

/// Asks the coordinator about every gtrid.
///
/// # Errors
/// Never for a single transaction (that is [`Recorded::Unknown`]).
pub async fn recorded(
    client: &CoordinatorClient,
    gtrids: impl IntoIterator<Item = String>,
) -> BTreeMap<String, Recorded> {
    futures::stream::iter(gtrids)
        .map(|g| async move {
            let r = match client.get(&g).await {
                Ok(t) => Recorded::of(&t),
                Err(ClientError::Forgotten(_)) => Recorded::Forgotten,
                Err(ClientError::Rejected { message, .. }) if message.contains("forgotten") => {
                    Recorded::Forgotten
                }
                Err(ClientError::Rejected {
                    code: tonic::Code::NotFound,
                    ..
                }) => Recorded::Unknown,
                Err(_) => Recorded::Unreachable,
            };
            (g, r)
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// Which of `apps` hold `gtrid`'s effects, and how many times its Kafka event appears.
fn effects(ev: &Evidence, gtrid: &str) -> Vec<(&'static str, bool)> {
    vec![
        ("pg", ev.pg.contains(gtrid)),
        ("store", ev.store.contains(gtrid)),
        ("kafka", ev.kafka.get(gtrid).copied().unwrap_or(0) > 0),
    ]
}

/// What the client of `t` was told, and how, for a violation's detail: "one-phase
/// client was told ABORTED by rollback after its commit got no answer in time".
fn told_how(t: &TxnRecord) -> String {
    let what = match t.told {
        Told::Committed => "COMMITTED",
        Told::Aborted => "ABORTED",
        Told::Unknown => "nothing (no answer)",
        Told::BeginFailed => "that begin failed",
    };
    let shape = if t.one_phase { "one-phase " } else { "" };
    let by = if t.told_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", t.told_by)
    };
    let after = if t.asked == super::workload::COMMIT_GAVE_UP {
        " after its commit got no answer in time"
    } else {
        ""
    };
    format!("{shape}client was told {what}{by}{after}")
}

/// Applies every rule; returns the violations.
pub fn check(
    txns: &[TxnRecord],
    ev: &Evidence,
    coordinator: &BTreeMap<String, Recorded>,
    opening_total: i64,
) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut push = |rule: &str, gtrid: &str, detail: String| {
        v.push(Violation {
            rule: rule.into(),
            gtrid: gtrid.into(),
            detail,
        });
    };
    let mut in_history = BTreeSet::new();
    for t in txns.iter().filter(|t| !t.gtrid.is_empty()) {
        in_history.insert(t.gtrid.clone());
        let rec = coordinator
            .get(&t.gtrid)
            .copied()
            .unwrap_or(Recorded::Unreachable);
        let branch_apps: BTreeSet<&str> = t.branches.iter().map(|b| b.app.as_str()).collect();
        let found = effects(ev, &t.gtrid);
        let seen = found
            .iter()
            .filter(|(app, _)| branch_apps.contains(app))
            .map(|(app, p)| format!("{app} {}", if *p { "present" } else { "absent" }))
            .collect::<Vec<_>>()
            .join(", ");
        for (app, present) in &found {
            if *present && !branch_apps.contains(app) {
                push(
                    "atomicity",
                    &t.gtrid,
                    format!("{app} holds effects of a transaction it was no branch of"),
                );
            }
        }
        if ev.kafka.get(&t.gtrid).copied().unwrap_or(0) > 1 {
            push(
                "exactly_once",
                &t.gtrid,
                format!("its Kafka event appears {} times", ev.kafka[&t.gtrid]),
            );
        }
        let present: Vec<bool> = found
            .iter()
            .filter(|(app, _)| branch_apps.contains(app))
            .map(|(_, p)| *p)
            .collect();
        let all = present.iter().all(|p| *p);
        let none = !present.iter().any(|p| *p);
        // What the client was told must hold whatever the coordinator remembers. For a
        // one-phase transaction this is the rule that matters: the participant decided,
        // and the client must have been told what it did.
        let told = told_how(t);
        match t.told {
            Told::Committed if !all => push("acknowledged", &t.gtrid, format!("{told}; {seen}")),
            Told::Aborted if !none => push("acknowledged", &t.gtrid, format!("{told}; {seen}")),
            _ => {}
        }
        let (committed, completed) = match rec {
            Recorded::Decided {
                committed,
                completed,
            } => (committed, completed),
            Recorded::Forgotten => {
                // Only all-or-none can be checked.
                if !all && !none {
                    push("atomicity", &t.gtrid, format!("outcome forgotten; {seen}"));
                }
                continue;
            }
            Recorded::Heuristic { committed } => {
                let outcome = if committed { "COMMITTED" } else { "ABORTED" };
                push(
                    "heuristic",
                    &t.gtrid,
                    format!(
                        "the coordinator decided {outcome} and reports a branch that answered \
                         against it ({told}); {seen}"
                    ),
                );
                // Visible is not atomic: a branch committed under an abort (or missing
                // under a commit) is broken, whatever the coordinator now shows.
                if (committed && !all) || (!committed && !none) {
                    push(
                        "atomicity",
                        &t.gtrid,
                        format!("coordinator recorded {outcome} (heuristic), {told}; {seen}"),
                    );
                }
                continue;
            }
            other => {
                push(
                    "finished",
                    &t.gtrid,
                    format!("after the quiet period the coordinator says {other:?}; {seen}"),
                );
                continue;
            }
        };
        match (t.told, committed) {
            (Told::Committed, false) => push(
                "acknowledged",
                &t.gtrid,
                format!("{told}, the coordinator recorded ABORTED; {seen}"),
            ),
            (Told::Aborted, true) => push(
                "acknowledged",
                &t.gtrid,
                format!("{told}, the coordinator recorded COMMITTED; {seen}"),
            ),
            _ => {}
        }
        let outcome = if committed { "COMMITTED" } else { "ABORTED" };
        if !completed {
            push(
                "finished",
                &t.gtrid,
                format!("{outcome} but phase 2 never completed; {seen}"),
            );
        }
        // A branch committed under an abort can never be undone; a branch missing under
        // a commit is a violation only once phase 2 is over.
        let broken = if committed { completed && !all } else { !none };
        if broken {
            push(
                "atomicity",
                &t.gtrid,
                format!("coordinator recorded {outcome}, {told}; {seen}"),
            );
        }
    }
    // One line per rule and transaction is enough to read.
    v.dedup_by(|a, b| a.rule == b.rule && a.gtrid == b.gtrid);
    let mut extra: BTreeSet<&String> = ev.pg.iter().chain(&ev.store).collect();
    extra.extend(ev.kafka.keys());
    for g in extra.into_iter().filter(|g| !in_history.contains(*g)) {
        if !matches!(
            coordinator.get(g),
            Some(Recorded::Decided {
                committed: true,
                ..
            })
        ) {
            v.push(Violation {
                rule: "atomicity".into(),
                gtrid: g.clone(),
                detail: format!(
                    "participants hold effects ({:?}) of a transaction no client recorded and the coordinator did not commit",
                    effects(ev, g)
                ),
            });
        }
    }
    for l in &ev.leftovers {
        v.push(Violation {
            rule: "leftover".into(),
            gtrid: String::new(),
            detail: l.clone(),
        });
    }
    for m in &ev.ledger_mismatches {
        v.push(Violation {
            rule: "conservation".into(),
            gtrid: String::new(),
            detail: m.clone(),
        });
    }
    let total = ev.pg_total + ev.store_total;
    if total != opening_total {
        v.push(Violation {
            rule: "conservation".into(),
            gtrid: String::new(),
            detail: format!(
                "balances add up to {total} (Postgres {} + store {}), opening total {opening_total}",
                ev.pg_total, ev.store_total
            ),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::BranchRecord;

    fn txn(gtrid: &str, apps: &[&str], told: Told) -> TxnRecord {
        TxnRecord {
            client: 0,
            gtrid: gtrid.into(),
            branches: apps
                .iter()
                .map(|a| BranchRecord {
                    app: (*a).into(),
                    xid: format!("52544659.{gtrid}.1"),
                })
                .collect(),
            asked: "commit".into(),
            one_phase: apps.len() == 1,
            amount: 5,
            told,
            told_by: String::new(),
            detail: String::new(),
            start_ms: 0,
            end_ms: 1,
        }
    }

    fn decided(committed: bool) -> Recorded {
        Recorded::Decided {
            committed,
            completed: true,
        }
    }

    /// T1 committed everywhere, T2 aborted everywhere, T3 unknown to its client but
    /// committed everywhere: nothing to report.
    fn clean() -> (Vec<TxnRecord>, Evidence, BTreeMap<String, Recorded>) {
        let txns = vec![
            txn("t1", &["pg", "store", "kafka"], Told::Committed),
            txn("t2", &["pg", "store"], Told::Aborted),
            txn("t3", &["pg", "store"], Told::Unknown),
        ];
        let ev = Evidence {
            pg: ["t1", "t3"].map(String::from).into(),
            store: ["t1", "t3"].map(String::from).into(),
            kafka: [("t1".to_string(), 1)].into(),
            pg_total: 100,
            store_total: 100,
            ledger_mismatches: vec![],
            leftovers: vec![],
        };
        let rec = [("t1", true), ("t2", false), ("t3", true)]
            .map(|(g, c)| (g.to_string(), decided(c)))
            .into();
        (txns, ev, rec)
    }

    fn rules(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.rule.as_str()).collect()
    }

    #[test]
    fn a_consistent_run_has_no_violation() {
        let (txns, ev, rec) = clean();
        assert!(check(&txns, &ev, &rec, 200).is_empty());
    }

    #[test]
    fn a_branch_committed_under_an_abort_is_an_atomicity_violation() {
        let (txns, mut ev, rec) = clean();
        ev.pg.insert("t2".into());
        let v = check(&txns, &ev, &rec, 200);
        assert_eq!(rules(&v), ["acknowledged", "atomicity"]);
        assert_eq!(v[1].gtrid, "t2");
        assert!(
            v[1].detail.contains("recorded ABORTED") && v[1].detail.contains("pg present"),
            "{}",
            v[1].detail
        );
    }

    #[test]
    fn a_missing_branch_of_a_commit_is_an_atomicity_violation() {
        let (txns, mut ev, rec) = clean();
        ev.kafka.clear();
        assert_eq!(
            rules(&check(&txns, &ev, &rec, 200)),
            ["acknowledged", "atomicity"]
        );
    }

    #[test]
    fn a_duplicate_event_is_reported() {
        let (txns, mut ev, rec) = clean();
        ev.kafka.insert("t1".into(), 2);
        assert_eq!(rules(&check(&txns, &ev, &rec, 200)), ["exactly_once"]);
    }

    #[test]
    fn an_acknowledged_commit_the_coordinator_aborted_is_reported() {
        let (txns, mut ev, mut rec) = clean();
        rec.insert("t1".into(), decided(false));
        ev.pg.remove("t1");
        ev.store.remove("t1");
        ev.kafka.clear();
        assert_eq!(rules(&check(&txns, &ev, &rec, 200)), ["acknowledged"]);
    }

    #[test]
    fn unfinished_transactions_leftovers_and_lost_money_are_reported() {
        let (txns, mut ev, mut rec) = clean();
        rec.insert("t2".into(), Recorded::Undecided);
        ev.leftovers
            .push("1 Postgres prepared transaction(s)".into());
        ev.store_total = 90;
        assert_eq!(
            rules(&check(&txns, &ev, &rec, 200)),
            ["finished", "leftover", "conservation"]
        );
    }

    #[test]
    fn a_forgotten_outcome_is_still_checked_all_or_none() {
        let (txns, mut ev, mut rec) = clean();
        rec.insert("t3".into(), Recorded::Forgotten);
        assert!(check(&txns, &ev, &rec, 200).is_empty());
        ev.store.remove("t3");
        ev.store_total -= 5;
        ev.pg_total += 5;
        assert_eq!(rules(&check(&txns, &ev, &rec, 200)), ["atomicity"]);
    }

    #[test]
    fn a_slow_commit_is_unfinished_not_broken() {
        let (txns, mut ev, mut rec) = clean();
        rec.insert(
            "t3".into(),
            Recorded::Decided {
                committed: true,
                completed: false,
            },
        );
        ev.store.remove("t3");
        ev.store_total -= 5;
        ev.pg_total += 5;
        assert_eq!(rules(&check(&txns, &ev, &rec, 200)), ["finished"]);
    }

    #[test]
    fn effects_at_an_application_that_was_no_branch_are_reported() {
        let (txns, mut ev, rec) = clean();
        ev.kafka.insert("t3".into(), 1);
        assert_eq!(rules(&check(&txns, &ev, &rec, 200)), ["atomicity"]);
    }

    #[test]
    fn a_commit_no_client_ran_is_reported() {
        let (txns, mut ev, rec) = clean();
        ev.store.insert("t9".into());
        assert_eq!(rules(&check(&txns, &ev, &rec, 200)), ["atomicity"]);
    }

    /// A one-phase transaction (one store branch) whose client gave up on Commit after
    /// the short deadline and was told ABORTED by Rollback.
    fn one_phase_told_aborted() -> TxnRecord {
        let mut t = txn("t4", &["store"], Told::Aborted);
        t.asked = crate::chaos::workload::COMMIT_GAVE_UP.into();
        t.told_by = "rollback".into();
        t
    }

    #[test]
    fn one_phase_transactions_told_what_their_branch_did_are_fine() {
        let (mut txns, mut ev, mut rec) = clean();
        txns.push(one_phase_told_aborted());
        txns.push(txn("t5", &["pg"], Told::Committed));
        ev.pg.insert("t5".into());
        rec.insert("t4".into(), decided(false));
        rec.insert("t5".into(), decided(true));
        assert!(check(&txns, &ev, &rec, 200).is_empty());
    }

    /// The coordinator bug the one-phase workload exists to catch: the participant
    /// committed the single branch (answering late), the client's Commit gave up, its
    /// Rollback answered ABORTED, and the transaction ended COMPLETED as ABORTED.
    #[test]
    fn a_one_phase_commit_reported_as_aborted_is_reported() {
        let (mut txns, mut ev, mut rec) = clean();
        txns.push(one_phase_told_aborted());
        ev.store.insert("t4".into());
        rec.insert("t4".into(), decided(false));
        let v = check(&txns, &ev, &rec, 200);
        assert_eq!(rules(&v), ["acknowledged", "atomicity"]);
        assert!(v.iter().all(|v| v.gtrid == "t4"), "{v:?}");
        assert!(
            v[0].detail
                .contains("one-phase client was told ABORTED by rollback")
                && v[0].detail.contains("no answer in time")
                && v[0].detail.contains("store present"),
            "{}",
            v[0].detail
        );
        // Whatever the coordinator recorded, or forgot: the client was told wrong.
        for r in [decided(true), Recorded::Forgotten] {
            rec.insert("t4".into(), r);
            assert_eq!(
                rules(&check(&txns, &ev, &rec, 200)),
                ["acknowledged"],
                "recorded {r:?}"
            );
        }
    }

    #[test]
    fn a_one_phase_commit_whose_branch_rolled_back_is_reported() {
        let (mut txns, ev, mut rec) = clean();
        txns.push(txn("t5", &["pg"], Told::Committed));
        rec.insert("t5".into(), decided(true));
        assert_eq!(
            rules(&check(&txns, &ev, &rec, 200)),
            ["acknowledged", "atomicity"]
        );
    }

    #[test]
    fn a_heuristic_outcome_is_reported() {
        let (txns, ev, mut rec) = clean();
        rec.insert("t1".into(), Recorded::Heuristic { committed: true });
        assert_eq!(rules(&check(&txns, &ev, &rec, 200)), ["heuristic"]);
    }

    #[test]
    fn a_heuristic_outcome_with_branches_that_disagree_is_not_atomic() {
        let (txns, mut ev, mut rec) = clean();
        ev.pg.insert("t2".into());
        rec.insert("t2".into(), Recorded::Heuristic { committed: false });
        let v = check(&txns, &ev, &rec, 200);
        assert!(v.iter().any(|v| v.rule == "heuristic"), "{v:?}");
        assert!(
            v.iter().any(|v| v.rule == "atomicity"
                && v.detail.contains("recorded ABORTED")
                && v.detail.contains("present")),
            "{v:?}"
        );
    }
}

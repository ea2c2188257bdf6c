//! The checker: once the run is healed and quiet, compares what clients were told,
//! what the coordinator recorded and what each participant really did.
//!
//! Rules checked (each failure is one [`Violation`]):
//! - **atomicity**: every branch of a transaction committed iff the coordinator
//!   recorded COMMITTED (Postgres: the branch's `chaos_ledger` row; account store: its
//!   committed outcome; Kafka: its event, read `read_committed` by the Java client);
//! - **exactly once**: no Kafka event appears twice;
//! - **acknowledged means done**: a client told COMMITTED (ABORTED) finds the
//!   coordinator's outcome COMMITTED (ABORTED);
//! - **finished**: every transaction is COMPLETED at the coordinator;
//! - **no leftovers**: no Postgres prepared transaction, no prepared store or Kafka
//!   branch, no open Kafka transaction, no live coordinator transaction;
//! - **conservation**: the Postgres and store balances add up to the opening total.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use ratify_participant_sdk::client::CoordinatorClient;
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
    /// `leftover`, `conservation`).
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
    /// Leftovers found, as text.
    pub leftovers: Vec<String>,
}

/// Where the checker looks.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The run's Postgres database URL.
    pub pg_url: String,
    /// The account store's work address.
    pub store_app: String,
    /// The Kafka application's work address (if the run has one).
    pub kafka_app: Option<String>,
    /// The events topic.
    pub topic: String,
    /// The adapter's ledger topic.
    pub ledger_topic: String,
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
    let store = app_call(
        &sources.store_app,
        &json!({"op": "inspect"}),
        Duration::from_secs(5),
    )
    .await?;
    if store["prepared"].as_u64().unwrap_or(0) > 0 {
        out.push(format!(
            "{} prepared account-store branch(es)",
            store["prepared"]
        ));
    }
    if let Some(kafka_app) = &sources.kafka_app {
        let kafka = app_call(kafka_app, &json!({"op": "inspect"}), Duration::from_secs(5)).await?;
        if kafka["prepared"].as_u64().unwrap_or(0) > 0 {
            out.push(format!("{} staged Kafka branch(es)", kafka["prepared"]));
        }
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
    ev.pg_total = db
        .query_one(
            "SELECT COALESCE(sum(balance), 0)::bigint FROM chaos_accounts",
            &[],
        )
        .await?
        .get(0);
    let store = app_call(
        &sources.store_app,
        &json!({"op": "inspect"}),
        Duration::from_secs(10),
    )
    .await?;
    ev.store_total = store["total"].as_i64().context("store total")?;
    for x in store["committed"].as_array().context("store committed")? {
        let xid: Xid = x.as_str().context("xid")?.parse()?;
        ev.store.insert(xid.gtrid().to_string());
    }
    if sources.kafka_app.is_some() {
        for r in crate::kafka::read_committed(&sources.topic).await? {
            let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap_or("{}"))?;
            let g = v["gtrid"].as_str().unwrap_or("?").to_string();
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
    /// Not decided (ACTIVE or PREPARING).
    Undecided,
    /// The coordinator does not know it.
    Unknown,
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
                Ok(t) => {
                    let state =
                        pb::TxnState::try_from(t.state).unwrap_or(pb::TxnState::Unspecified);
                    let outcome =
                        pb::Outcome::try_from(t.outcome).unwrap_or(pb::Outcome::Unspecified);
                    match (state, outcome) {
                        (pb::TxnState::Active | pb::TxnState::Preparing, _) => Recorded::Undecided,
                        (_, pb::Outcome::Committed) => Recorded::Decided {
                            committed: true,
                            completed: state == pb::TxnState::Completed,
                        },
                        (_, pb::Outcome::Aborted) => Recorded::Decided {
                            committed: false,
                            completed: state == pb::TxnState::Completed,
                        },
                        _ => Recorded::Undecided,
                    }
                }
                Err(_) => Recorded::Unknown,
            };
            (g, r)
        })
        .buffer_unordered(16)
        .collect()
        .await
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
            .unwrap_or(Recorded::Unknown);
        let committed = match rec {
            Recorded::Decided {
                committed,
                completed,
            } => {
                if !completed {
                    push(
                        "finished",
                        &t.gtrid,
                        "decided but phase 2 never completed".into(),
                    );
                }
                committed
            }
            Recorded::Undecided => {
                push(
                    "finished",
                    &t.gtrid,
                    "still undecided after the quiet period".into(),
                );
                continue;
            }
            Recorded::Unknown => {
                push(
                    "finished",
                    &t.gtrid,
                    "the coordinator does not know it".into(),
                );
                continue;
            }
        };
        match (t.told, committed) {
            (Told::Committed, false) => push(
                "acknowledged",
                &t.gtrid,
                "client was told COMMITTED, the coordinator recorded ABORTED".into(),
            ),
            (Told::Aborted, true) => push(
                "acknowledged",
                &t.gtrid,
                "client was told ABORTED, the coordinator recorded COMMITTED".into(),
            ),
            _ => {}
        }
        let mut seen = Vec::new();
        let mut broken = false;
        for b in &t.branches {
            let (present, text) = match b.app.as_str() {
                "pg" => (ev.pg.contains(&t.gtrid), "pg ledger row"),
                "store" => (ev.store.contains(&t.gtrid), "store commit"),
                "kafka" => {
                    let n = ev.kafka.get(&t.gtrid).copied().unwrap_or(0);
                    if n > 1 {
                        push(
                            "exactly_once",
                            &t.gtrid,
                            format!("its Kafka event appears {n} times"),
                        );
                    }
                    (n > 0, "kafka event")
                }
                other => (false, other),
            };
            broken |= present != committed;
            seen.push(format!(
                "{text} {}",
                if present { "present" } else { "absent" }
            ));
        }
        if broken {
            push(
                "atomicity",
                &t.gtrid,
                format!(
                    "coordinator recorded {}, client was told {:?}; {}",
                    if committed { "COMMITTED" } else { "ABORTED" },
                    t.told,
                    seen.join(", ")
                ),
            );
        }
    }
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
                detail: "a participant committed a branch of a transaction no client ran to commit and the coordinator did not commit".into(),
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
            amount: 5,
            told,
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
        assert_eq!(rules(&v), ["atomicity"]);
        assert_eq!(v[0].gtrid, "t2");
        assert!(
            v[0].detail.contains("pg ledger row present"),
            "{}",
            v[0].detail
        );
    }

    #[test]
    fn a_missing_branch_of_a_commit_is_an_atomicity_violation() {
        let (txns, mut ev, rec) = clean();
        ev.kafka.clear();
        assert_eq!(rules(&check(&txns, &ev, &rec, 200)), ["atomicity"]);
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
    fn a_commit_no_client_ran_is_reported() {
        let (txns, mut ev, rec) = clean();
        ev.store.insert("t9".into());
        assert_eq!(rules(&check(&txns, &ev, &rec, 200)), ["atomicity"]);
    }
}

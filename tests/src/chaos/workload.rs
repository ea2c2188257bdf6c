//! The workload: concurrent clients, each running transfers that touch two or three
//! participants, recording every attempt in the history.
//!
//! A transfer moves `amount` between a Postgres account and an account-store account
//! (in either direction), and half of them also publish an event about it on Kafka.
//! About one in twenty is rolled back on purpose, so the rollback path runs too.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratify_participant_sdk::client::{BeginOptions, CoordinatorClient, Outcome};
use serde_json::json;
use tokio::sync::watch;

use super::history::{BranchRecord, History, Told, TxnRecord};
use super::world::{app_call, AppKind};

/// Where the clients send work.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Per application: (participant endpoint, work API address).
    pub apps: Vec<(AppKind, String, String)>,
    /// Accounts per application.
    pub accounts: i64,
}

impl Targets {
    fn get(&self, kind: AppKind) -> Option<&(AppKind, String, String)> {
        self.apps.iter().find(|(k, _, _)| *k == kind)
    }
}

/// Longest a branch's work may take (a row held by a transaction in doubt makes
/// Postgres wait until its `lock_timeout`).
const WORK_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs client `n` until `stop` is set.
pub async fn client_loop(
    n: usize,
    seed: u64,
    client: CoordinatorClient,
    targets: Targets,
    history: History,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n as u64 * 7919));
    while !*stop.borrow_and_update() {
        let with_kafka = targets.get(AppKind::Kafka).is_some() && rng.gen_bool(0.5);
        let amount: i64 = rng.gen_range(1..=50);
        let sign = if rng.gen_bool(0.5) { 1 } else { -1 };
        let work: Vec<(AppKind, i64, i64)> = [
            Some((
                AppKind::Pg,
                rng.gen_range(0..targets.accounts),
                sign * amount,
            )),
            Some((
                AppKind::Store,
                rng.gen_range(0..targets.accounts),
                -sign * amount,
            )),
            with_kafka.then_some((AppKind::Kafka, 0, amount)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let rollback_on_purpose = rng.gen_bool(0.05);
        let record = transfer(n, &client, &targets, &history, &work, rollback_on_purpose).await;
        // No leader, or an application down: do not spin on failures.
        let pause = match (record.told, record.asked.as_str()) {
            (Told::BeginFailed, _) => Some(Duration::from_millis(100)),
            (_, "rollback") if !rollback_on_purpose => Some(Duration::from_millis(20)),
            _ => None,
        };
        history.txn(record);
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
}

async fn transfer(
    n: usize,
    client: &CoordinatorClient,
    targets: &Targets,
    history: &History,
    work: &[(AppKind, i64, i64)],
    rollback_on_purpose: bool,
) -> TxnRecord {
    let mut record = TxnRecord {
        client: n,
        gtrid: String::new(),
        branches: Vec::new(),
        asked: "commit".into(),
        amount: work.first().map_or(0, |w| w.2.abs()),
        told: Told::BeginFailed,
        detail: String::new(),
        start_ms: history.now_ms(),
        end_ms: 0,
    };
    let mut branches = Vec::new();
    for (kind, _, _) in work {
        if let Some((_, endpoint, _)) = targets.get(*kind) {
            branches.push((endpoint.clone(), kind.resource().to_string()));
        }
    }
    let begun = match client
        .begin(BeginOptions {
            timeout: Duration::from_secs(20),
            branches,
            ..Default::default()
        })
        .await
    {
        Ok(b) => b,
        Err(e) => {
            record.detail = e.to_string();
            record.end_ms = history.now_ms();
            return record;
        }
    };
    record.gtrid = begun.gtrid.clone();
    record.branches = work
        .iter()
        .zip(&begun.branches)
        .map(|((kind, _, _), b)| BranchRecord {
            app: kind.name().into(),
            xid: b.xid.render(),
        })
        .collect();
    let calls = work
        .iter()
        .zip(&begun.branches)
        .map(|((kind, account, delta), b)| {
            let addr = targets.get(*kind).map(|t| t.2.clone()).unwrap_or_default();
            let request =
                json!({"op": "work", "xid": b.xid.render(), "account": account, "delta": delta});
            async move { app_call(&addr, &request, WORK_TIMEOUT).await }
        });
    let failures: Vec<String> = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    let answer = if failures.is_empty() && !rollback_on_purpose {
        client.commit(&begun.gtrid).await
    } else {
        record.asked = "rollback".into();
        record.detail = failures.join("; ");
        client.rollback(&begun.gtrid).await
    };
    record.end_ms = history.now_ms();
    match answer {
        Ok(d) => {
            record.told = match d.outcome {
                Outcome::Committed => Told::Committed,
                Outcome::Aborted => Told::Aborted,
            };
            if record.detail.is_empty() {
                record.detail = format!("{:?} {}", d.reason, d.detail);
            }
        }
        // No answer (or a refusal): the outcome is whatever the coordinator recorded,
        // and the checker reads it there.
        Err(e) => {
            record.told = Told::Unknown;
            record.detail = format!("{}; {e}", record.detail);
        }
    }
    record
}

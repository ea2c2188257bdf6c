//! A transfer workload against a [`TestCluster`] and the checks run after it (the
//! failover and membership tests).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratify_participant_sdk::client::{CoordinatorClient, Outcome};
use ratify_proto::pb;

use crate::{Bank, TestCluster, ACCOUNTS, INITIAL};

/// One transfer as a workload client saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The transaction.
    pub gtrid: String,
    /// `Some(true)` committed, `Some(false)` aborted, `None` unknown (deadline).
    pub outcome: Option<bool>,
    /// When its Begin was sent.
    pub begun_at: Instant,
    /// When the client got its answer.
    pub done_at: Instant,
}

/// Runs transfers from `clients` tasks until `stop` is set; returns every outcome.
pub async fn workload(
    client: CoordinatorClient,
    bank: Arc<Bank>,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<Seen> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..clients {
        let (client, bank, stop, seen) = (client.clone(), bank.clone(), stop.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let begun_at = Instant::now();
                let Ok(t) = bank
                    .transfer(&client, (w + i) % ACCOUNTS, (w * 7 + i) % ACCOUNTS, 1)
                    .await
                else {
                    continue;
                };
                let outcome = match client.commit(&t.gtrid).await {
                    Ok(d) => Some(d.outcome == Outcome::Committed),
                    Err(_) => None,
                };
                if let Ok(mut s) = seen.lock() {
                    s.push(Seen {
                        gtrid: t.gtrid,
                        outcome,
                        begun_at,
                        done_at: Instant::now(),
                    });
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let out = seen.lock().map(|s| s.clone()).unwrap_or_default();
    out
}

/// After the cluster settles: the bank total is conserved, nothing is left prepared,
/// nothing is left live, and every outcome a client was told is the recorded one.
///
/// # Errors
/// When the cluster does not settle or a call fails (a broken rule panics).
pub async fn check_atomicity(c: &TestCluster, bank: &Bank, seen: &[Seen]) -> anyhow::Result<()> {
    bank.wait_settled(Duration::from_secs(30)).await?;
    c.wait_all_completed(Duration::from_secs(30)).await?;
    assert_eq!(
        bank.total()?,
        2 * ACCOUNTS as i64 * INITIAL,
        "a transfer committed on one bank only"
    );
    for s in seen {
        let Some(told) = s.outcome else { continue };
        let t = c.client.get(&s.gtrid).await?;
        let recorded = t.outcome == pb::Outcome::Committed as i32;
        assert_eq!(
            told, recorded,
            "client was told {told} but the log says {t:?}"
        );
    }
    Ok(())
}

/// The longest time between two successive commit answers in `[from, to]` (the
/// window's ends count as commits, so a stall at either end shows).
pub fn longest_gap(seen: &[Seen], from: Instant, to: Instant) -> Duration {
    let mut at: Vec<Instant> = seen
        .iter()
        .filter(|s| s.outcome == Some(true) && s.done_at >= from && s.done_at <= to)
        .map(|s| s.done_at)
        .collect();
    at.push(from);
    at.push(to);
    at.sort();
    at.windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

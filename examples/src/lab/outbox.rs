//! Transactional outbox: the row and an outbox row in one local transaction; a relay
//! publishes the outbox with an idempotent producer. Two relays:
//!
//! - **polling**: reads the oldest outbox rows every [`POLL_INTERVAL`], publishes
//!   them, waits for the acknowledgements, deletes them;
//! - **change data capture**: reads the outbox inserts from a logical replication
//!   slot (`test_decoding` plugin, `pg_logical_slot_peek_changes`), publishes them,
//!   waits for the acknowledgements, then consumes the slot up to the last change
//!   published (`pg_logical_slot_get_changes` with an upto LSN).
//!
//! Either relay is at least once: killed between the acknowledgements and the delete
//! (or the slot advance), it publishes those rows again when it restarts. The
//! idempotent producer removes only the duplicates of its own retries within one
//! producer session. So consumers dedupe: **B** records order ids in `processed` in
//! the same local transaction as its `shipments` rows and its own outbox rows (and
//! commits its offsets afterwards), and C is expected to dedupe the same way.
//!
//! A's relay runs in the lab process; B's relay runs inside B's process, so killing
//! B kills its relay too.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};

use super::workload;
use crate::order_pipeline::{OrderPlaced, PipelineConfig};
use crate::pg_bank::connect;

/// Longest wait for a logical slot to be created.
const SLOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an idle polling relay looks at the outbox again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Most outbox rows a polling relay handles per round.
const RELAY_BATCH: i64 = 1000;
/// Most slot changes a CDC relay decodes per round. Large: each peek (and each
/// consuming get) decodes the WAL again from the slot's restart point, so small
/// rounds cap the relay (1000 changes per round: about 500 orders/s here).
const CDC_BATCH: i32 = 20_000;

/// How a relay reads the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// Polls the table and deletes what it published.
    Poll,
    /// Reads the logical replication slot of that name.
    Cdc(String),
}

/// The slot name of the CDC relay of `db` (`a` or `b` side).
pub fn slot_name(cfg: &PipelineConfig, side: &str) -> String {
    format!("{}_{side}", cfg.name)
}

/// Creates the outbox tables (emptied: rows left by an earlier run must not reach
/// this run's topics) and, for CDC, a fresh slot per database.
///
/// # Errors
/// Connection or SQL failures (e.g. `wal_level` is not `logical`).
pub async fn setup(cfg: &PipelineConfig, cdc: bool) -> anyhow::Result<()> {
    workload::create_processed_table(cfg).await?;
    for (url, side) in [(cfg.orders_url(), "a"), (cfg.shipping_url(), "b")] {
        let db = connect(&url).await?;
        db.batch_execute(
            "CREATE TABLE IF NOT EXISTS outbox (\
                 id bigserial PRIMARY KEY, order_id text NOT NULL, amount bigint NOT NULL); \
             TRUNCATE outbox",
        )
        .await?;
        let slot = slot_name(cfg, side);
        drop_slot(&db, &slot).await?;
        if cdc {
            create_slot(&url, &db, &slot).await?;
        }
    }
    Ok(())
}

/// Creates logical slot `slot` (`test_decoding`). Creation waits until every
/// transaction running at that moment has finished, prepared ones of any database
/// included, so it gives up after [`SLOT_TIMEOUT`] naming what it waited for.
async fn create_slot(url: &str, db: &tokio_postgres::Client, slot: &str) -> anyhow::Result<()> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&slot];
    let create = db.query_one(
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'test_decoding')",
        &params,
    );
    match tokio::time::timeout(SLOT_TIMEOUT, create).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "cannot create logical slot {slot} (the server needs wal_level=logical, \
             see tests/infra/postgres.sh): {e}"
        )),
        Err(_) => {
            // The creating connection is still waiting: ask on another one.
            let prepared: Vec<String> = match crate::pg_bank::connect(url).await {
                Ok(c) => c
                    .query("SELECT database || ': ' || gid FROM pg_prepared_xacts", &[])
                    .await
                    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
                    .unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            anyhow::bail!(
                "creating logical slot {slot} waited {SLOT_TIMEOUT:?} for running transactions \
                 to finish (a prepared transaction in any database of the server blocks it); \
                 prepared now: {prepared:?}"
            )
        }
    }
}

/// Drops slot `slot` if it exists; waits up to 10 s for its reader to go away.
async fn drop_slot(db: &tokio_postgres::Client, slot: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        let row = db
            .query_opt(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?;
        match row {
            None => return Ok(()),
            Some(r) if !r.get::<_, bool>(0) => {
                db.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await?;
                return Ok(());
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    anyhow::bail!("replication slot {slot} stayed active for 10 s")
}

/// Drops both CDC slots of `cfg` (a slot keeps WAL for as long as it exists).
///
/// # Errors
/// Connection or SQL failures.
pub async fn teardown(cfg: &PipelineConfig) -> anyhow::Result<()> {
    for (url, side) in [(cfg.orders_url(), "a"), (cfg.shipping_url(), "b")] {
        drop_slot(&connect(&url).await?, &slot_name(cfg, side)).await?;
    }
    Ok(())
}

/// Service A of this implementation: the row and the outbox row in one local
/// transaction.
#[derive(Debug)]
pub struct ServiceA {
    /// A's database.
    dbs: workload::OrderDbs,
}

impl ServiceA {
    /// Opens `clients` connections.
    ///
    /// # Errors
    /// Postgres failures.
    pub async fn start(cfg: &PipelineConfig, clients: usize) -> anyhow::Result<Self> {
        Ok(Self {
            dbs: workload::OrderDbs::open(cfg, clients).await?,
        })
    }

    /// Places `order` from client `client`.
    ///
    /// # Errors
    /// Postgres failures.
    pub async fn place(&self, client: usize, order: OrderPlaced) -> anyhow::Result<()> {
        let mut db = self.dbs.get(client).await;
        let txn = db.transaction().await?;
        workload::insert_order(&txn, &order).await?;
        insert_outbox(&txn, &[&order]).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// Adds the events of `orders` to the outbox, in the caller's transaction.
async fn insert_outbox(
    txn: &tokio_postgres::Transaction<'_>,
    orders: &[&OrderPlaced],
) -> anyhow::Result<()> {
    let ids: Vec<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();
    let amounts: Vec<i64> = orders.iter().map(|o| o.amount).collect();
    txn.execute(
        "INSERT INTO outbox (order_id, amount) SELECT * FROM unnest($1::text[], $2::int8[])",
        &[&ids, &amounts],
    )
    .await?;
    Ok(())
}

/// Publishes the outbox of the database at `url` to `topic`, reading it as `relay`
/// says, until `stop` is set.
///
/// # Errors
/// Kafka or Postgres failures.
pub async fn run_relay(
    url: &str,
    bootstrap: &str,
    topic: &str,
    relay: Relay,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let db = connect(url).await?;
    let producer = workload::idempotent_producer(bootstrap)?;
    while !*stop.borrow() {
        let published = match &relay {
            Relay::Poll => {
                let rows = db
                    .query(
                        "SELECT id, order_id, amount FROM outbox ORDER BY id LIMIT $1",
                        &[&RELAY_BATCH],
                    )
                    .await?;
                let orders: Vec<OrderPlaced> = rows
                    .iter()
                    .map(|r| OrderPlaced {
                        order_id: r.get(1),
                        amount: r.get(2),
                    })
                    .collect();
                workload::publish_acked(&producer, topic, &orders).await?;
                let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
                db.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids])
                    .await?;
                rows.len()
            }
            Relay::Cdc(slot) => {
                let changes = db
                    .query(
                        "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2::int4)",
                        &[slot, &CDC_BATCH],
                    )
                    .await?;
                let orders: Vec<OrderPlaced> = changes
                    .iter()
                    .filter_map(|r| parse_outbox_insert(r.get(1)))
                    .collect();
                workload::publish_acked(&producer, topic, &orders).await?;
                if let Some(last) = changes.last() {
                    let lsn: &str = last.get(0);
                    db.query(
                        "SELECT 1 FROM pg_logical_slot_get_changes($1, $2::text::pg_lsn, NULL)",
                        &[slot, &lsn],
                    )
                    .await?;
                }
                changes.len()
            }
        };
        if published == 0 {
            tokio::select! {
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                r = stop.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// The order of a `test_decoding` line for an insert into `outbox`, e.g.
/// `table public.outbox: INSERT: id[bigint]:7 order_id[text]:'r-0000001' amount[bigint]:42`;
/// `None` for any other change (BEGIN, COMMIT, other tables, deletes).
fn parse_outbox_insert(line: &str) -> Option<OrderPlaced> {
    let rest = line.strip_prefix("table public.outbox: INSERT: ")?;
    let after_id = rest.split_once("order_id[text]:'")?.1;
    // Order ids never contain a quote (they are `<prefix>-<n>` of [a-z0-9.-]).
    let (order_id, after) = after_id.split_once('\'')?;
    let amount = after
        .split_once("amount[bigint]:")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(OrderPlaced {
        order_id: order_id.to_owned(),
        amount,
    })
}

/// Service B of this implementation (and its relay), until the process is killed or
/// `shutdown`.
///
/// # Errors
/// Kafka or Postgres failures (B then exits; the lab reports it).
pub async fn run_b(
    cfg: &PipelineConfig,
    relay: Relay,
    ready: impl FnOnce(),
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (consumer, mut db) = workload::open_b(cfg, false).await?;
    let (_stop_relay, stopped) = tokio::sync::watch::channel(false);
    let mut relay_task = {
        let (url, bootstrap, topic) = (
            cfg.shipping_url(),
            cfg.bootstrap.clone(),
            cfg.shipments_topic.clone(),
        );
        tokio::spawn(async move { run_relay(&url, &bootstrap, &topic, relay, stopped).await })
    };
    ready();
    {
        // B stops consuming when told to, or when its relay stops (an error).
        let stop = async {
            tokio::select! {
                () = shutdown => {}
                _ = &mut relay_task => {}
            }
        };
        tokio::pin!(stop);
        while let Some(batch) = workload::batch_until(&consumer, stop.as_mut()).await? {
            let txn = db.transaction().await?;
            let new = workload::first_time(&txn, &batch).await?;
            workload::insert_shipments(&txn, &new).await?;
            let orders: Vec<&OrderPlaced> = new.iter().map(|e| &e.order).collect();
            insert_outbox(&txn, &orders).await?;
            txn.commit().await?;
            consumer.commit(
                &workload::offsets_after(&cfg.orders_topic, &batch)?,
                CommitMode::Async,
            )?;
        }
    }
    if relay_task.is_finished() {
        relay_task.await??;
        anyhow::bail!("B's relay stopped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_test_decoding_inserts_only() {
        let o = parse_outbox_insert(
            "table public.outbox: INSERT: id[bigint]:7 order_id[text]:'ab.c-0000001' amount[bigint]:42",
        );
        assert_eq!(
            o,
            Some(OrderPlaced {
                order_id: "ab.c-0000001".into(),
                amount: 42
            })
        );
        assert_eq!(parse_outbox_insert("BEGIN 1234"), None);
        assert_eq!(
            parse_outbox_insert("table public.outbox: DELETE: id[bigint]:7"),
            None
        );
        assert_eq!(
            parse_outbox_insert("table public.orders: INSERT: order_id[text]:'x' amount[bigint]:1"),
            None
        );
    }
}

//! README's first example: an order row in Postgres and an `order-placed` event on
//! Kafka, committed together or not at all, with the high-level SDK ([`App`]).
//!
//! Usage: `atomic_order PG_URL KAFKA_BOOTSTRAP COORDINATOR ORDER_ID` (the database
//! has a table `orders (id text primary key)`, the topic `orders` exists, and a
//! Ratify cluster serves clients at COORDINATOR). `tests/tests/readme_example.rs`
//! runs it against the real Postgres, Kafka and a 3-node cluster, and checks that
//! README shows this code.

use ratify_participant_sdk::{App, KafkaConfig, KafkaRecord, KafkaResource, PgConfig, PgResource};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = ratify_examples::init_tracing_with_default("warn")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pg_url, bootstrap, coordinator, order]: [String; 4] = args.try_into().map_err(|_| {
        anyhow::anyhow!("usage: atomic_order PG_URL KAFKA_BOOTSTRAP COORDINATOR ORDER_ID")
    })?;
    let stage = std::env::temp_dir().join(format!("atomic-order-{}", std::process::id()));
    // README example: begin
    let db = PgResource::connect(PgConfig::new(pg_url, "shop")).await?;
    let events = KafkaResource::open(&stage, KafkaConfig::new(bootstrap, "shop-1")).await?;
    let app = App::builder()
        .coordinators([coordinator])
        .resource("db", db.clone())
        .resource("events", events.clone())
        .start()
        .await?;
    let id = order.clone();
    app.transaction(|tx| async move {
        let row = db.begin_branch(tx.xid("db")?).await?;
        row.execute("INSERT INTO orders (id) VALUES ($1)", &[&id])
            .await?;
        let event = KafkaRecord::new("orders", id.as_bytes(), "order-placed");
        events.branch(tx.xid("events")?)?.send(event)?;
        anyhow::Ok(())
    })
    .await?;
    app.shutdown().await;
    // README example: end
    println!("order {order} placed: row and event committed together");
    Ok(())
}

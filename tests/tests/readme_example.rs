//! README's example (`examples/src/bin/atomic_order.rs`, the high-level SDK) runs
//! against the Postgres of `tests/infra/postgres.sh`, the Apache Kafka of
//! `tests/infra/kafka.sh` and a 3-node cluster: the order row and the event are both
//! there afterwards, exactly once. And README shows the example's code as it is.
//! Needs `RATIFY_TEST_PG_URL` and `RATIFY_TEST_KAFKA`; without them the test fails.

use std::process::Command;

use anyhow::Context;
use ratify_tests::pg::PgEnv;
use ratify_tests::{kafka, TestCluster};

/// The lines of `text` between the example's markers, without their indentation.
fn example_lines(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.contains("README example: begin"))
        .skip(1)
        .take_while(|l| !l.contains("README example: end"))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn readme_shows_the_example_as_it_is() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = std::fs::read_to_string(root.join("examples/src/bin/atomic_order.rs"))?;
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let code = example_lines(&source);
    assert!(
        (10..30).contains(&code.len()),
        "the example is {} lines (under 30 wanted)",
        code.len()
    );
    let shown: Vec<String> = readme.lines().map(|l| l.trim().to_string()).collect();
    let start = shown
        .iter()
        .position(|l| *l == code[0])
        .context("README does not show the example")?;
    assert_eq!(
        &shown[start..start + code.len()],
        &code[..],
        "README's example differs from examples/src/bin/atomic_order.rs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_commits_a_row_and_an_event_together() -> anyhow::Result<()> {
    let pg = PgEnv::from_env()?;
    kafka::bootstrap()?;
    let _shared = ratify_tests::pg::server_lock().read().await;
    let c = TestCluster::start(&[]).await?;
    // A database of its own with the example's table, and the topic.
    let db = format!("readme_{}", std::process::id());
    let (admin, conn) = tokio_postgres::connect(&pg.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    drop_leftovers(&admin, &pg.url).await?;
    admin.execute(&format!("CREATE DATABASE {db}"), &[]).await?;
    let db_url = with_database(&pg.url, &db)?;
    let (client, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .execute("CREATE TABLE orders (id text PRIMARY KEY)", &[])
        .await?;
    kafka::create_topic("orders", 1).await?;

    let order = format!("order-{:08x}", rand::random::<u32>());
    let binary = ratify_tests::example_binary("atomic_order", "ATOMIC_ORDER_BIN")?;
    let coordinator = c.nodes.api_endpoints()[0].clone();
    let out = tokio::task::spawn_blocking({
        let (db_url, bootstrap, order) = (db_url.clone(), kafka::bootstrap()?, order.clone());
        move || {
            Command::new(binary)
                .args([&db_url, &bootstrap, &coordinator, &order])
                .output()
        }
    })
    .await??;
    anyhow::ensure!(
        out.status.success(),
        "atomic_order failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: i64 = client
        .query_one("SELECT count(*) FROM orders WHERE id = $1", &[&order])
        .await?
        .get(0);
    assert_eq!(rows, 1, "the order row");
    let events = kafka::read_committed("orders")
        .await?
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(order.as_str()))
        .count();
    assert_eq!(events, 1, "the order-placed event, once");
    let prepared: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(prepared, 0, "nothing left prepared");
    c.wait_all_completed(std::time::Duration::from_secs(30))
        .await?;
    drop(client);
    admin
        .execute(&format!("DROP DATABASE {db} WITH (FORCE)"), &[])
        .await?;
    Ok(())
}

/// Drops the databases of earlier runs, rolling back what they left prepared (a run
/// that failed half-way): a prepared transaction anywhere on the server blocks other
/// tests' logical replication slots.
async fn drop_leftovers(admin: &tokio_postgres::Client, url: &str) -> anyhow::Result<()> {
    let leftovers = admin
        .query(
            r"SELECT gid, database FROM pg_prepared_xacts WHERE database LIKE 'readme\_%'",
            &[],
        )
        .await?;
    for row in leftovers {
        let (gid, database): (String, String) = (row.get(0), row.get(1));
        let (c, conn) =
            tokio_postgres::connect(&with_database(url, &database)?, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let quoted = gid.replace('\'', "''");
        c.execute(&format!("ROLLBACK PREPARED '{quoted}'"), &[])
            .await?;
    }
    let dbs = admin
        .query(
            r"SELECT datname FROM pg_database WHERE datname LIKE 'readme\_%'",
            &[],
        )
        .await?;
    for row in dbs {
        let name: String = row.get(0);
        admin
            .execute(
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                &[],
            )
            .await?;
    }
    Ok(())
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let (base, _) = url
        .rsplit_once('/')
        .context("the Postgres URL has no database part")?;
    Ok(format!("{base}/{db}"))
}

/// README's first command, `cargo run -p ratify-devkit -- demo`, as the binary it
/// builds (shortened): the demo's own cluster (its nodes are `ratify-dev node`
/// processes), a leader SIGKILL, the balance conserved, exit 0. README's first line
/// names that command.
#[test]
fn the_readme_demo_runs_and_conserves_the_balance() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    assert!(
        readme
            .lines()
            .take(6)
            .any(|l| l.starts_with("cargo run -p ratify-devkit -- demo")),
        "README's first command is not the devkit demo"
    );
    let bin = ratify_tests::example_binary("ratify-dev", "RATIFY_DEV_BIN")?;
    let out = Command::new(bin)
        .args([
            "demo",
            "--duration",
            "4",
            "--kill-after",
            "1",
            "--clients",
            "4",
        ])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("SIGKILLed the leader"), "{stdout}");
    assert!(stdout.contains("conserved"), "{stdout}");
    Ok(())
}

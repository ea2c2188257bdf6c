//! The trade-off lab (`examples/src/bin/tradeoff_lab.rs`) in smoke mode: every
//! implementation runs a few seconds against the Postgres of
//! `tests/infra/postgres.sh` and the Apache Kafka of `tests/infra/kafka.sh`, with
//! service B SIGKILLed and restarted mid-run, so the committed report under
//! `docs/lab/` stays reproducible. Needs `RATIFY_TEST_PG_URL` and `RATIFY_TEST_KAFKA`;
//! without them the test fails. Asserts on correctness only, never on timing.

use std::path::Path;

use ratify_tests::kafka;
use ratify_tests::pg::PgEnv;

/// Files of a report folder.
const REPORT_FILES: [&str; 6] = [
    "README.md",
    "results.json",
    "throughput.svg",
    "commit_latency.svg",
    "e2e_cdf.svg",
    "c_stream.svg",
];

/// Every implementation, as `results.json` names them.
const IMPLS: [&str; 6] = [
    "2pc",
    "kafka-eos",
    "outbox-poll",
    "outbox-cdc",
    "idempotent",
    "baseline",
];

/// `results.json` of `dir`.
fn results(dir: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?)?;
    Ok(v["results"].as_array().cloned().unwrap_or_default())
}

/// The lab in smoke mode writes a complete report with all six implementations
/// (five ways, the outbox with both relays), and the atomic ones — 2PC, Kafka
/// exactly-once, both outboxes, the idempotent consumer — apply every committed
/// order exactly once at C despite the SIGKILL of service B (duplicate deliveries
/// are allowed where every consumer dedupes by order id, which is that pattern's
/// contract), leaving no Postgres transaction prepared. The baseline's losses and
/// duplicates are reported, not asserted: they depend on where the kill lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_report_has_every_implementation_and_atomic_ones_apply_each_order_once(
) -> anyhow::Result<()> {
    let pg = PgEnv::from_env()?;
    let bootstrap = kafka::bootstrap()?;
    let out = tempfile::tempdir()?;
    let status = tokio::process::Command::new(ratify_tests::example_binary(
        "tradeoff_lab",
        "TRADEOFF_LAB_BIN",
    )?)
    .args([
        "--smoke",
        "--clients",
        "4",
        "--pg-url",
        &pg.url,
        "--bootstrap",
        &bootstrap,
    ])
    .arg("--out")
    .arg(out.path())
    .env("RATIFY_BIN", ratify_tests::ratify_binary()?)
    .status()
    .await?;
    assert!(status.success(), "tradeoff_lab --smoke failed: {status}");

    for f in REPORT_FILES {
        let len = std::fs::metadata(out.path().join(f))?.len();
        assert!(len > 0, "{f} is empty");
        assert!(
            len < 50_000,
            "{f} is {len} bytes: report files must stay small"
        );
    }
    let results = results(out.path())?;
    let names: Vec<&str> = results
        .iter()
        .filter_map(|r| r["implementation"].as_str())
        .collect();
    assert_eq!(names, IMPLS, "implementations in results.json");
    for r in &results {
        let name = r["implementation"].as_str().unwrap_or("?");
        assert!(
            r["error"].is_null(),
            "{name} was not measured: {}",
            r["error"]
        );
        assert!(
            r["committed"].as_u64() > Some(0),
            "{name} committed no order"
        );
        assert!(
            r["kill"]["killed_at_s"].is_number(),
            "{name}: service B was not killed"
        );
        if r["atomic"].as_bool() == Some(true) {
            assert_eq!(r["losses"], 0, "{name} lost orders: {}", r["lost_sample"]);
            assert_eq!(r["duplicates_applied"], 0, "{name} applied duplicates");
            assert_eq!(
                r["kill"]["prepared_after_drain"], 0,
                "{name} left prepared transactions"
            );
        }
    }
    let readme = std::fs::read_to_string(out.path().join("README.md"))?;
    for r in &results {
        let title = r["title"].as_str().unwrap_or("?");
        assert!(readme.contains(title), "README.md has no row for {title}");
    }
    Ok(())
}

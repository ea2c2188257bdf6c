//! The Postgres adapter against a real PostgreSQL server (`tests/infra/postgres.sh`)
//! and a real 3-node coordinator cluster: commit and rollback across two databases,
//! crashes of the participant, of the postmaster and of the coordinator leader at
//! exact protocol steps (`RATIFY_FAILPOINTS`), fencing of a late prepare and hostile
//! xids. After every scenario nothing stays prepared and the bank total is unchanged.

use std::time::Duration;

use ratify_devkit::local::free_port;
use ratify_examples::pg_bank::{self, Bank, BankDbs, RESOURCE_A};
use ratify_participant_sdk::client::{ClientConfig, CoordinatorClient};
use ratify_participant_sdk::AppError;
use ratify_proto::pb;
use ratify_tests::pg::{
    bank_total, fence_rows, fresh_bank, opening_total, prepared, server_lock, wait_no_prepared,
    wait_prepared, ParticipantProc, ParticipantSpec, PgEnv, PG_BALANCE,
};
use ratify_tests::TestCluster;

const SETTLE: Duration = Duration::from_secs(30);

/// The coordinator's recorded outcome of `gtrid`.
async fn outcome(c: &TestCluster, gtrid: &str) -> anyhow::Result<pb::Outcome> {
    Ok(pb::Outcome::try_from(c.client.get(gtrid).await?.outcome)?)
}

/// Both banks' balances of the accounts the participant transfers between (A's 1, B's 2).
async fn moved(dbs: &BankDbs) -> anyhow::Result<(i64, i64)> {
    Ok((
        pg_bank::balance(&dbs.a_url, 1).await?,
        pg_bank::balance(&dbs.b_url, 2).await?,
    ))
}

/// Everything settled: nothing prepared, the total unchanged.
async fn must_settle(dbs: &BankDbs) -> anyhow::Result<()> {
    wait_no_prepared(dbs, SETTLE).await?;
    assert_eq!(
        bank_total(dbs).await?,
        opening_total(),
        "money created or lost"
    );
    Ok(())
}

/// How to run a `pg_bank participant` for the banks `dbs` and cluster `c`.
fn spec(env: &PgEnv, c: &TestCluster, dbs: &BankDbs) -> anyhow::Result<ParticipantSpec> {
    let db_prefix = dbs
        .a_name
        .strip_suffix("_a")
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("unexpected bank name {}", dbs.a_name))?;
    Ok(ParticipantSpec {
        pg_url: env.url.clone(),
        db_prefix,
        coordinators: c.nodes.api_endpoints(),
        listen: format!("127.0.0.1:{}", free_port()?),
        dir: c.dir.path().to_path_buf(),
    })
}

/// A transfer commits on both databases; one rolled back by the client changes
/// nothing; one that fails its CHECK constraint votes NO and aborts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_rollback_across_two_databases() -> anyhow::Result<()> {
    let _shared = server_lock().read().await;
    let env = PgEnv::from_env()?;
    let dbs = fresh_bank(&env, "pg_commit").await?;
    let c = TestCluster::start(&[]).await?;
    let bank = Bank::open(&dbs, 8).await?;
    let app = bank
        .host(
            c.client.clone(),
            "127.0.0.1:0",
            Some(Duration::from_millis(500)),
        )
        .await?;

    bank.transfer(&app, 1, 2, 300, |_| {}).await?;
    wait_no_prepared(&dbs, SETTLE).await?;
    assert_eq!(moved(&dbs).await?, (PG_BALANCE - 300, PG_BALANCE + 300));

    // The work changes its mind after its SQL: the scope rolls the transaction back.
    let rolled_back = std::sync::Mutex::new(String::new());
    let (bank_a, seen) = (&bank.a, &rolled_back);
    let scope = app
        .transaction(|tx| async move {
            let branch = bank_a.begin_branch(tx.xid(RESOURCE_A)?).await?;
            branch
                .execute(
                    "UPDATE accounts SET balance = balance - 50 WHERE id = 3",
                    &[],
                )
                .await?;
            if let Ok(mut g) = seen.lock() {
                *g = tx.gtrid().to_owned();
            }
            Err::<(), _>(anyhow::anyhow!("changed my mind"))
        })
        .await;
    assert!(matches!(scope, Err(AppError::Work(_))), "{scope:?}");
    let gtrid = rolled_back.lock().map(|g| g.clone()).unwrap_or_default();
    let t = c.client.get(&gtrid).await?;
    assert_eq!(t.outcome(), pb::Outcome::Aborted, "{t:?}");
    assert_eq!(t.reason(), pb::Reason::ClientRollback, "{t:?}");
    assert_eq!(pg_bank::balance(&dbs.a_url, 3).await?, PG_BALANCE);

    // Overdraft: the CHECK constraint fails the debit, so the work itself errors and
    // the transaction is rolled back; nothing moves.
    let overdraft = bank.transfer(&app, 5, 6, PG_BALANCE + 1, |_| {}).await;
    assert!(matches!(overdraft, Err(AppError::Work(_))), "{overdraft:?}");
    assert_eq!(pg_bank::balance(&dbs.b_url, 6).await?, PG_BALANCE);

    c.wait_all_completed(SETTLE).await?;
    must_settle(&dbs).await
}

/// The participant process is SIGKILLed right after PREPARE (before answering): the
/// coordinator aborts; restarted, its recovery loop rolls the prepared branch back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_after_prepare_rolls_back_after_restart() -> anyhow::Result<()> {
    let _shared = server_lock().read().await;
    let env = PgEnv::from_env()?;
    let dbs = fresh_bank(&env, "pg_kill_prep").await?;
    let c = TestCluster::start(&["--prepare-timeout-ms", "2000"]).await?;
    let s = spec(&env, &c, &dbs)?;
    let mut p = ParticipantProc::start(&s, 1, "pg.after_prepare=kill", 500).await?;
    let gtrid = p.wait_line("begun", Duration::from_secs(20)).await?;
    p.wait_exit(Duration::from_secs(20)).await?;
    assert!(
        !prepared(&dbs).await?.is_empty(),
        "the kill came after PREPARE"
    );
    let _p = ParticipantProc::start(&s, 0, "", 300).await?;
    must_settle(&dbs).await?;
    assert_eq!(outcome(&c, &gtrid).await?, pb::Outcome::Aborted);
    assert_eq!(moved(&dbs).await?, (PG_BALANCE, PG_BALANCE));
    c.wait_all_completed(SETTLE).await
}

/// The participant process is SIGKILLed after the COMMIT decision, just before
/// COMMIT PREPARED: restarted, the branch commits on both databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_killed_before_commit_prepared_commits_after_restart() -> anyhow::Result<()> {
    let _shared = server_lock().read().await;
    let env = PgEnv::from_env()?;
    let dbs = fresh_bank(&env, "pg_kill_commit").await?;
    let c = TestCluster::start(&[]).await?;
    let s = spec(&env, &c, &dbs)?;
    let mut p = ParticipantProc::start(&s, 1, "pg.before_commit_prepared=kill", 500).await?;
    let gtrid = p.wait_line("begun", Duration::from_secs(20)).await?;
    p.wait_exit(Duration::from_secs(20)).await?;
    assert_eq!(prepared(&dbs).await?.len(), 2, "both branches in doubt");
    assert_eq!(outcome(&c, &gtrid).await?, pb::Outcome::Committed);
    let _p = ParticipantProc::start(&s, 0, "", 300).await?;
    must_settle(&dbs).await?;
    assert_eq!(moved(&dbs).await?, (PG_BALANCE - 10, PG_BALANCE + 10));
    c.wait_all_completed(SETTLE).await
}

/// The postmaster is SIGKILLed while both branches are prepared and phase 2 is
/// stalled (after the COMMIT decision): after a restart the prepared branches are
/// still there, and they commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_killed_after_prepare_keeps_and_resolves_branches() -> anyhow::Result<()> {
    let _exclusive = server_lock().write().await;
    let env = PgEnv::from_env()?;
    let dbs = fresh_bank(&env, "pg_kill_pm").await?;
    let c = TestCluster::start(&[]).await?;
    let s = spec(&env, &c, &dbs)?;
    let mut p = ParticipantProc::start(&s, 1, "pg.before_commit_prepared=sleep:8000", 500).await?;
    let gtrid = p.wait_line("begun", Duration::from_secs(20)).await?;
    let before = wait_prepared(&dbs, 2, Duration::from_secs(20)).await?;
    env.kill_postmaster()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restart = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || env.start_postmaster())
    };
    restart.await??;
    let mut after = prepared(&dbs).await?;
    let mut expected = before.clone();
    after.sort();
    expected.sort();
    assert_eq!(
        after, expected,
        "prepared branches survive kill -9 of the postmaster"
    );
    assert_eq!(outcome(&c, &gtrid).await?, pb::Outcome::Committed);
    // The fail point stalls every phase-2 attempt past the coordinator's phase-2
    // timeout; swap the participant for one without it (same address).
    p.kill();
    let _p = ParticipantProc::start(&s, 0, "", 300).await?;
    must_settle(&dbs).await?;
    assert_eq!(moved(&dbs).await?, (PG_BALANCE - 10, PG_BALANCE + 10));
    c.wait_all_completed(SETTLE).await
}

/// The coordinator leader is SIGKILLed between the COMMIT decision and phase 2 (the
/// participant dies at COMMIT PREPARED and comes back without a recovery loop): only
/// the new leader can finish the branches, and it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_between_decision_and_phase2_new_leader_finishes() -> anyhow::Result<()> {
    let _shared = server_lock().read().await;
    let env = PgEnv::from_env()?;
    let dbs = fresh_bank(&env, "pg_kill_leader").await?;
    let mut c = TestCluster::start(&[]).await?;
    let s = spec(&env, &c, &dbs)?;
    let mut p = ParticipantProc::start(&s, 1, "pg.before_commit_prepared=kill", 0).await?;
    let gtrid = p.wait_line("begun", Duration::from_secs(20)).await?;
    p.wait_exit(Duration::from_secs(20)).await?;
    let old = c.leader().await?;
    c.nodes.kill(old)?;
    assert_eq!(prepared(&dbs).await?.len(), 2);
    let _p = ParticipantProc::start(&s, 0, "", 0).await?;
    must_settle(&dbs).await?;
    let new = c.leader().await?;
    assert_ne!(new, old);
    assert_eq!(outcome(&c, &gtrid).await?, pb::Outcome::Committed);
    assert_eq!(moved(&dbs).await?, (PG_BALANCE - 10, PG_BALANCE + 10));
    c.wait_all_completed(SETTLE).await
}

/// Fencing: the prepare is held back (fail point) past the coordinator's prepare
/// timeout, the coordinator aborts and rolls back, and when the delayed prepare
/// finally reaches Postgres it hits the tombstone: NO vote, nothing prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_prepare_after_rollback_is_fenced() -> anyhow::Result<()> {
    let _shared = server_lock().read().await;
    let env = PgEnv::from_env()?;
    let dbs = fresh_bank(&env, "pg_fence").await?;
    let c = TestCluster::start(&["--prepare-timeout-ms", "1000"]).await?;
    let s = spec(&env, &c, &dbs)?;
    // No recovery loop: only the fence may keep the late prepare out.
    let mut p = ParticipantProc::start(&s, 1, "pg.before_prepare=sleep:3000", 0).await?;
    let gtrid = p.wait_line("begun", Duration::from_secs(20)).await?;
    let line = p.wait_line("outcome", Duration::from_secs(20)).await?;
    assert!(line.contains("aborted"), "{line}");
    // Past the delayed prepares (3 s after they started).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        prepared(&dbs).await?.is_empty(),
        "a late prepare left a branch prepared"
    );
    let fences = fence_rows(&dbs, &gtrid).await?;
    assert_eq!(fences.len(), 2, "{fences:?}");
    assert!(
        fences.iter().all(|(_, s)| s == "r"),
        "tombstones expected: {fences:?}"
    );
    assert_eq!(outcome(&c, &gtrid).await?, pb::Outcome::Aborted);
    assert_eq!(moved(&dbs).await?, (PG_BALANCE, PG_BALANCE));
    must_settle(&dbs).await
}

/// Hostile xid text sent to a Postgres participant is refused before any SQL runs:
/// INVALID_ARGUMENT, nothing prepared, no fence row, tables intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_xids_never_reach_postgres() -> anyhow::Result<()> {
    let _shared = server_lock().read().await;
    let env = PgEnv::from_env()?;
    let dbs = fresh_bank(&env, "pg_hostile").await?;
    let bank = Bank::open(&dbs, 4).await?;
    // No coordinator is needed: the test speaks the participant protocol itself.
    let nobody = CoordinatorClient::new(vec!["127.0.0.1:1".into()], ClientConfig::default())?;
    let app = bank.host(nobody, "127.0.0.1:0", None).await?;
    let addr = app.endpoint().to_owned();
    let mut client =
        pb::participant_client::ParticipantClient::connect(format!("http://{addr}")).await?;
    let good = pb::Xid {
        format_id: ratify_proto::XID_FORMAT_ID,
        gtrid: "0123456789abcdef0123456789abcdef".into(),
        bqual: "1".into(),
    };
    let hostile = [
        pb::Xid {
            gtrid: "'; DROP TABLE accounts; --".into(),
            ..good.clone()
        },
        pb::Xid {
            gtrid: "0123456789abcdef0123456789abcde'".into(),
            ..good.clone()
        },
        pb::Xid {
            bqual: "1'; COMMIT PREPARED 'x".into(),
            ..good.clone()
        },
        pb::Xid {
            bqual: "1; DROP TABLE accounts".into(),
            ..good.clone()
        },
        pb::Xid {
            gtrid: "x".repeat(300),
            ..good.clone()
        },
        pb::Xid {
            format_id: 0,
            ..good.clone()
        },
    ];
    for xid in hostile {
        let prep = client
            .prepare(pb::PrepareRequest {
                resource: RESOURCE_A.into(),
                xid: Some(xid.clone()),
            })
            .await;
        let commit = client
            .commit(pb::BranchCommitRequest {
                resource: RESOURCE_A.into(),
                xid: Some(xid.clone()),
                one_phase: false,
            })
            .await;
        let rollback = client
            .rollback(pb::BranchRollbackRequest {
                resource: RESOURCE_A.into(),
                xid: Some(xid.clone()),
            })
            .await;
        for code in [
            prep.err().map(|s| s.code()),
            commit.err().map(|s| s.code()),
            rollback.err().map(|s| s.code()),
        ] {
            assert_eq!(code, Some(tonic::Code::InvalidArgument), "{xid:?}");
        }
    }
    let a = pg_bank::connect(&dbs.a_url).await?;
    let fences: i64 = a
        .query_one("SELECT count(*) FROM ratify_fence", &[])
        .await?
        .get(0);
    assert_eq!(fences, 0, "a hostile call reached the database");
    assert!(prepared(&dbs).await?.is_empty());
    assert_eq!(bank_total(&dbs).await?, opening_total(), "tables intact");
    Ok(())
}

/// The adapter over TLS to the server (tokio-postgres with rustls, `sslmode=require`,
/// the server's certificate checked against the test server's CA): a transfer commits
/// across both banks and every connection the adapter opened is TLS; a CA that did
/// not issue the server's certificate is refused at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_speaks_tls_to_postgres() -> anyhow::Result<()> {
    use ratify_participant_sdk::adapters::postgres::PgTls;
    let _shared = server_lock().read().await;
    let env = PgEnv::from_env()?;
    let ca = std::env::var("RATIFY_TEST_PG_TLS_CA").map_err(|_| {
        anyhow::anyhow!("RATIFY_TEST_PG_TLS_CA is not set: start tests/infra/postgres.sh")
    })?;
    let dbs = fresh_bank(&env, "pg_tls").await?;
    let over_tls = |url: &str| format!("{url}?sslmode=require&application_name=ratify-tls-test");
    let tls_dbs = BankDbs {
        a_url: over_tls(&dbs.a_url),
        b_url: over_tls(&dbs.b_url),
        ..dbs.clone()
    };
    let c = TestCluster::start(&[]).await?;
    let tls = PgTls {
        ca: ca.into(),
        client: None,
    };
    let bank = Bank::open_tls(&tls_dbs, 4, Some(tls)).await?;
    let app = bank
        .host(
            c.client.clone(),
            "127.0.0.1:0",
            Some(Duration::from_millis(500)),
        )
        .await?;
    bank.transfer(&app, 1, 2, 300, |_| {}).await?;
    wait_no_prepared(&dbs, SETTLE).await?;
    assert_eq!(moved(&dbs).await?, (PG_BALANCE - 300, PG_BALANCE + 300));

    let (client, conn) = tokio_postgres::connect(&env.url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'ratify-tls-test'",
            &[],
        )
        .await?;
    let (over, all): (i64, i64) = (row.get(0), row.get(1));
    assert!(all >= 2, "the adapter holds connections: {all}");
    assert_eq!(over, all, "every connection of the adapter is TLS");

    let stranger = ratify_devkit::certs::Ca::new(&c.dir.path().join("other-ca"), "other")?;
    let refused = Bank::open_tls(
        &tls_dbs,
        1,
        Some(PgTls {
            ca: stranger.ca_file(),
            client: None,
        }),
    )
    .await;
    assert!(
        refused.is_err(),
        "a server certificate of another CA was taken"
    );
    c.wait_all_completed(SETTLE).await?;
    must_settle(&dbs).await
}

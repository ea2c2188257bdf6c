//! The high-level SDK (`ratify_participant_sdk::App`) against a real 3-node cluster,
//! with two durable account stores hosted by one app.

use std::sync::Arc;
use std::time::Duration;

use ratify_devkit::accounts::AccountStore;
use ratify_participant_sdk::{App, AppError};
use ratify_proto::pb;
use ratify_tests::TestCluster;

async fn stores(c: &TestCluster) -> anyhow::Result<(Arc<AccountStore>, Arc<AccountStore>)> {
    let a = AccountStore::open(c.dir.path().join("a"))?;
    a.open_accounts(["alice"], 100).await?;
    let b = AccountStore::open(c.dir.path().join("b"))?;
    b.open_accounts(["bob"], 100).await?;
    Ok((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_scope_commits_rolls_back_and_reports_aborts() -> anyhow::Result<()> {
    let c = TestCluster::start(&[]).await?;
    let (a, b) = stores(&c).await?;
    let app = App::builder()
        .client(c.client.clone())
        .resource("a", a.clone())
        .resource("b", b.clone())
        .start()
        .await?;

    // Work that succeeds commits, and the closure's value comes back.
    let (ta, tb) = (a.clone(), b.clone());
    let moved = app
        .transaction(|tx| async move {
            ta.branch(tx.xid("a")?)?.debit("alice", 30)?;
            tb.branch(tx.xid("b")?)?.credit("bob", 30)?;
            anyhow::Ok(30)
        })
        .await?;
    assert_eq!(moved, 30);

    // Work that fails is rolled back: nothing moves.
    let (ta, tb) = (a.clone(), b.clone());
    let failed = app
        .transaction(|tx| async move {
            ta.branch(tx.xid("a")?)?.debit("alice", 10)?;
            tb.branch(tx.xid("b")?)?.credit("bob", 10)?;
            Err::<(), _>(anyhow::anyhow!("the payment provider said no"))
        })
        .await;
    assert!(
        matches!(&failed, Err(AppError::Work(e)) if e.to_string().contains("provider said no")),
        "{failed:?}"
    );

    // A branch that cannot prepare (not enough money) votes NO: aborted, said why.
    let (ta, tb) = (a.clone(), b.clone());
    let aborted = app
        .transaction(|tx| async move {
            ta.branch(tx.xid("a")?)?.debit("alice", 1_000)?;
            tb.branch(tx.xid("b")?)?.credit("bob", 1_000)?;
            anyhow::Ok(())
        })
        .await;
    assert!(
        matches!(
            &aborted,
            Err(AppError::Aborted {
                reason: pb::Reason::VotedNo,
                ..
            })
        ),
        "{aborted:?}"
    );

    // A subset of the resources, and a name the app does not host.
    let ta = a.clone();
    app.transaction_on(&["a"], |tx| async move {
        assert!(matches!(tx.xid("b"), Err(AppError::NoSuchResource(_))));
        ta.branch(tx.xid("a")?)?.debit("alice", 5)?;
        anyhow::Ok(())
    })
    .await?;
    let unknown = app
        .transaction_on(&["c"], |_tx| async { anyhow::Ok(()) })
        .await;
    assert!(matches!(unknown, Err(AppError::NoSuchResource(n)) if n == "c"));

    // Shutdown waits for phase 2 of the last commit: nothing stays prepared.
    app.shutdown().await;
    assert_eq!(a.prepared_count() + b.prepared_count(), 0);
    assert_eq!(a.balance("alice")?, 100 - 30 - 5);
    assert_eq!(b.balance("bob")?, 100 + 30);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_without_what_it_needs_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = AccountStore::open(dir.path())?;
    let none = App::builder().resource("a", store.clone()).start().await;
    assert!(matches!(none, Err(AppError::NoCoordinator)), "{none:?}");
    let empty = App::builder().coordinators(["127.0.0.1:1"]).start().await;
    assert!(matches!(empty, Err(AppError::NoResource)), "{empty:?}");
    let bad_name = App::builder()
        .coordinators(["127.0.0.1:1"])
        .resource("not a name", store.clone())
        .start()
        .await;
    assert!(matches!(bad_name, Err(AppError::Server(_))), "{bad_name:?}");
    let twice = App::builder()
        .coordinators(["127.0.0.1:1"])
        .resource("a", store.clone())
        .resource("a", store.clone())
        .start()
        .await;
    assert!(matches!(twice, Err(AppError::Server(_))), "{twice:?}");
    Ok(())
}

/// With an outcome timeout and no coordinator answering, the scope says the outcome
/// is unknown instead of waiting for ever (its Begin fails first here: no leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_coordinator_is_an_error_not_a_hang() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = AccountStore::open(dir.path())?;
    let app = App::builder()
        .coordinators(["127.0.0.1:1"])
        .client_config(ratify_participant_sdk::ClientConfig {
            deadline: Duration::from_secs(1),
            attempt_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .outcome_timeout(Duration::from_secs(2))
        .resource("a", store)
        .start()
        .await?;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        app.transaction(|_tx| async { anyhow::Ok(()) }),
    )
    .await?;
    assert!(matches!(r, Err(AppError::Client(_))), "{r:?}");
    app.shutdown().await;
    Ok(())
}

//! Tests of the adapter against a real server: `RATIFY_TEST_PG_URL` (set by
//! `tests/infra/postgres.sh`, which the README's test command runs).

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Where the test server is; fails (never skips) without it.
fn pg_url() -> String {
    std::env::var("RATIFY_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "RATIFY_TEST_PG_URL is not set: start Postgres with `tests/infra/postgres.sh start .tmp/infra/postgres` \
             and eval its output (./tests/run.sh does this; see tests/infra/README.md)"
        )
    })
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => format!("{url}/{db}"),
    }
}

async fn admin(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// A fresh database with `accounts(id int, balance bigint)` holding ids 1 and 2 at 100.
async fn fresh_db(name: &str) -> anyhow::Result<String> {
    let url = pg_url();
    let a = admin(&url).await?;
    let db = format!("sdk_{name}_{}", std::process::id());
    a.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await?;
    a.batch_execute(&format!("CREATE DATABASE {db}")).await?;
    let url = with_db(&url, &db);
    admin(&url)
        .await?
        .batch_execute(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
             INSERT INTO accounts VALUES (1, 100), (2, 100);",
        )
        .await?;
    Ok(url)
}

fn xid() -> anyhow::Result<Xid> {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Ok(Xid::new(
        format!("{:016x}{n:016x}", std::process::id()),
        "1",
    )?)
}

async fn balance(url: &str, id: i32) -> anyhow::Result<i64> {
    Ok(admin(url)
        .await?
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&id])
        .await?
        .try_get(0)?)
}

async fn prepared_gids(url: &str) -> anyhow::Result<Vec<String>> {
    Ok(admin(url)
        .await?
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn debit(r: &Arc<PgResource>, x: &Xid, id: i32, amount: i64) -> anyhow::Result<PgBranch> {
    let b = r.begin_branch(x).await?;
    let n = b
        .execute(
            "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
            &[&amount, &id],
        )
        .await?;
    anyhow::ensure!(n == 1, "account {id} missing");
    Ok(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_commit_recover_and_idempotent_phase2() -> anyhow::Result<()> {
    let url = fresh_db("commit").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t1")).await?;
    assert!(r.server().version.starts_with("15") || r.server().max_prepared_transactions > 0);
    let x = xid()?;
    let b = debit(&r, &x, 1, 30).await?;
    assert_eq!(r.prepare(&x).await?, Vote::Yes);
    // Closed to further work once prepared.
    assert!(matches!(
        b.execute("SELECT 1", &[]).await,
        Err(PgError::BranchClosed(_))
    ));
    assert_eq!(
        r.prepare(&x).await?,
        Vote::Yes,
        "a retried prepare stays YES"
    );
    assert_eq!(r.recover().await?, vec![x.clone()]);
    let stats = r.prepared_stats().await?;
    assert_eq!(stats.ratify_prepared, 1);
    assert!(stats.oldest_ratify_age.is_some());
    assert_eq!(prepared_gids(&url).await?, vec![r.gid(&x).to_string()]);
    assert_eq!(r.commit(&x, false).await?, CommitResult::Committed);
    assert_eq!(
        r.commit(&x, false).await?,
        CommitResult::Committed,
        "idempotent"
    );
    assert_eq!(balance(&url, 1).await?, 70);
    assert!(r.recover().await?.is_empty());
    assert_eq!(r.prepared_stats().await?.ratify_prepared, 0);
    // A rollback after commit is a heuristic mismatch, reported as such.
    assert_eq!(r.rollback(&x).await?, RollbackResult::AlreadyCommitted);
    assert_eq!(balance(&url, 1).await?, 70);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_of_prepared_and_unknown_branches() -> anyhow::Result<()> {
    let url = fresh_db("rollback").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t1")).await?;
    let x = xid()?;
    debit(&r, &x, 1, 30).await?;
    assert_eq!(r.prepare(&x).await?, Vote::Yes);
    assert_eq!(r.rollback(&x).await?, RollbackResult::RolledBack);
    assert_eq!(
        r.rollback(&x).await?,
        RollbackResult::RolledBack,
        "idempotent"
    );
    assert!(prepared_gids(&url).await?.is_empty());
    assert_eq!(balance(&url, 1).await?, 100);
    // Committing a rolled-back branch is a heuristic answer, not a commit.
    assert_eq!(r.commit(&x, false).await?, CommitResult::RolledBack);
    // Rolling back a branch never seen leaves a tombstone that fences it.
    let y = xid()?;
    assert_eq!(r.rollback(&y).await?, RollbackResult::RolledBack);
    assert!(matches!(r.prepare(&y).await?, Vote::No(_)));
    Ok(())
}

/// A rollback that arrives while the branch is open, even mid-statement, rolls it back
/// at once (no deadlock with the branch) and a later prepare votes NO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_while_open_cancels_and_fences() -> anyhow::Result<()> {
    let url = fresh_db("open").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t1")).await?;
    let x = xid()?;
    let b = Arc::new(debit(&r, &x, 1, 30).await?);
    let b2 = Arc::clone(&b);
    let slow =
        tokio::spawn(async move { b2.execute("SELECT pg_sleep(30)", &[]).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = std::time::Instant::now();
    assert_eq!(r.rollback(&x).await?, RollbackResult::RolledBack);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "rollback waited for the branch"
    );
    assert!(
        slow.await?.is_err(),
        "the statement in flight was cancelled"
    );
    assert!(matches!(r.prepare(&x).await?, Vote::No(_)));
    assert!(prepared_gids(&url).await?.is_empty());
    assert_eq!(balance(&url, 1).await?, 100);
    Ok(())
}

/// The database-level fence: a prepare that arrives after the rollback, from a process
/// that still had the branch open (here a second resource instance with the same tag,
/// as after a restart, or a delayed prepare), votes NO and leaves nothing prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_prepare_after_rollback_is_fenced() -> anyhow::Result<()> {
    let url = fresh_db("fence").await?;
    let old = PgResource::connect(PgConfig::new(&url, "t1")).await?;
    let new = PgResource::connect(PgConfig::new(&url, "t1")).await?;
    let x = xid()?;
    debit(&old, &x, 1, 30).await?;
    assert_eq!(new.rollback(&x).await?, RollbackResult::RolledBack);
    match old.prepare(&x).await? {
        Vote::No(why) => assert!(why.contains("fenced"), "{why}"),
        v => panic!("late prepare voted {v:?}"),
    }
    assert!(prepared_gids(&url).await?.is_empty());
    assert_eq!(balance(&url, 1).await?, 100);

    // The other order: prepared first, then the rollback (from anywhere) undoes it.
    let y = xid()?;
    debit(&old, &y, 1, 30).await?;
    assert_eq!(old.prepare(&y).await?, Vote::Yes);
    assert_eq!(new.rollback(&y).await?, RollbackResult::RolledBack);
    assert!(prepared_gids(&url).await?.is_empty());
    assert_eq!(balance(&url, 1).await?, 100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_statement_votes_no_and_empty_branch_is_read_only() -> anyhow::Result<()> {
    let url = fresh_db("votes").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t1")).await?;
    let x = xid()?;
    let b = r.begin_branch(&x).await?;
    // Violates the CHECK constraint: the transaction is aborted.
    assert!(b
        .execute(
            "UPDATE accounts SET balance = balance - $1 WHERE id = 1",
            &[&1000i64]
        )
        .await
        .is_err());
    assert!(
        b.execute("SELECT 1", &[]).await.is_err(),
        "branch is doomed"
    );
    assert!(matches!(r.prepare(&x).await?, Vote::No(_)));
    let y = xid()?;
    let _b = r.begin_branch(&y).await?;
    assert!(matches!(
        r.begin_branch(&y).await,
        Err(PgError::BranchExists(_))
    ));
    assert_eq!(r.prepare(&y).await?, Vote::ReadOnly);
    assert!(prepared_gids(&url).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_commit_and_its_retry() -> anyhow::Result<()> {
    let url = fresh_db("onephase").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t1")).await?;
    let x = xid()?;
    debit(&r, &x, 2, 5).await?;
    assert_eq!(r.commit(&x, true).await?, CommitResult::Committed);
    assert_eq!(r.commit(&x, true).await?, CommitResult::Committed, "retry");
    assert_eq!(balance(&url, 2).await?, 95);
    let y = xid()?;
    assert_eq!(
        r.commit(&y, true).await?,
        CommitResult::RolledBack,
        "unknown"
    );
    Ok(())
}

/// Other applications' prepared transactions (and other tags') are not recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_lists_only_this_resources_gids() -> anyhow::Result<()> {
    let url = fresh_db("recover").await?;
    let r1 = PgResource::connect(PgConfig::new(&url, "t1")).await?;
    let r2 = PgResource::connect(PgConfig::new(&url, "t2")).await?;
    let (x, y) = (xid()?, xid()?);
    debit(&r1, &x, 1, 1).await?;
    debit(&r2, &y, 2, 1).await?;
    assert_eq!(r1.prepare(&x).await?, Vote::Yes);
    assert_eq!(r2.prepare(&y).await?, Vote::Yes);
    let a = admin(&url).await?;
    // Gids are unique server-wide: make these unique per test run.
    let pid = std::process::id();
    let (malformed, foreign) = (
        format!("rtfy.t1.not-an-xid-{pid}"),
        format!("foreign-{pid}"),
    );
    a.batch_execute(&format!(
        "BEGIN; INSERT INTO accounts VALUES (3, 1); PREPARE TRANSACTION '{malformed}'"
    ))
    .await?;
    a.batch_execute(&format!(
        "BEGIN; INSERT INTO accounts VALUES (4, 1); PREPARE TRANSACTION '{foreign}'"
    ))
    .await?;
    assert_eq!(r1.recover().await?, vec![x.clone()]);
    assert_eq!(r2.recover().await?, vec![y.clone()]);
    let s = r1.prepared_stats().await?;
    // The malformed one carries this resource's prefix, so it is counted as ours.
    assert_eq!((s.ratify_prepared, s.other_prepared), (2, 2));
    a.batch_execute(&format!("ROLLBACK PREPARED '{malformed}'"))
        .await?;
    a.batch_execute(&format!("ROLLBACK PREPARED '{foreign}'"))
        .await?;
    r1.rollback(&x).await?;
    r2.rollback(&y).await?;
    assert!(prepared_gids(&url).await?.is_empty());
    Ok(())
}

/// A role that may not create the fence table gets a clear error at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_reports_missing_permissions() -> anyhow::Result<()> {
    let url = fresh_db("perm").await?;
    let a = admin(&url).await?;
    let role = format!("ratify_noperm_{}", std::process::id());
    a.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; REVOKE CREATE ON SCHEMA public FROM PUBLIC"
    ))
    .await?;
    let role_url = url.replacen("postgres@", &format!("{role}@"), 1);
    anyhow::ensure!(
        role_url != url,
        "test URL must name the postgres user: {url}"
    );
    match PgResource::connect(PgConfig::new(&role_url, "t1")).await {
        Err(PgError::PermissionDenied(m)) => assert!(m.contains("ratify_fence"), "{m}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    // Table created by someone else but no privileges on it.
    PgResource::connect(PgConfig::new(&url, "t1")).await?;
    match PgResource::connect(PgConfig::new(&role_url, "t1")).await {
        Err(PgError::PermissionDenied(m)) => assert!(m.contains("SELECT, INSERT"), "{m}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert!(matches!(
        PgResource::connect(PgConfig::new(&url, "Bad Tag")).await,
        Err(PgError::Tag(_))
    ));
    Ok(())
}

/// An application that drops a statement's future before the answer (as `try_join!`
/// does to the other branch when one fails) leaves its connection in an unknown state:
/// the branch votes NO, its rollback works, and the connection never goes back to the
/// pool, so later branches and phase 2 on pooled connections are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_statement_never_poisons_the_pool() -> anyhow::Result<()> {
    let url = fresh_db("abandon").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t_abandon")).await?;
    for round in 0..3 {
        // First statement of the branch (BEGIN pipelined in front of it), abandoned.
        let x = xid()?;
        let b = r.begin_branch(&x).await?;
        let slow = b.execute("SELECT pg_sleep(0.3)", &[]);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), slow)
                .await
                .is_err(),
            "the statement should still be running"
        );
        assert!(matches!(r.prepare(&x).await?, Vote::No(_)), "round {round}");
        assert_eq!(r.rollback(&x).await?, RollbackResult::RolledBack);

        // The same with a branch rolled back while open (no prepare).
        let y = xid()?;
        let b2 = debit(&r, &y, 2, 1).await?;
        let slow = b2.execute("SELECT pg_sleep(0.3)", &[]);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), slow).await;
        assert_eq!(r.rollback(&y).await?, RollbackResult::RolledBack);

        // A one-phase commit of a branch with an abandoned statement rolls back.
        let w = xid()?;
        let b3 = debit(&r, &w, 2, 1).await?;
        let slow = b3.execute("SELECT pg_sleep(0.3)", &[]);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), slow).await;
        assert_eq!(r.commit(&w, true).await?, CommitResult::RolledBack);
        assert_eq!(
            r.commit(&w, true).await?,
            CommitResult::RolledBack,
            "and a retry says so too"
        );

        // Pooled connections are clean: a full branch and its phase 2 work.
        let z = xid()?;
        debit(&r, &z, 1, 1).await?;
        assert_eq!(r.prepare(&z).await?, Vote::Yes, "round {round}");
        assert_eq!(r.commit(&z, false).await?, CommitResult::Committed);
        assert!(r.recover().await?.is_empty());
    }
    assert_eq!(balance(&url, 1).await?, 97);
    assert_eq!(balance(&url, 2).await?, 100);
    assert!(prepared_gids(&url).await?.is_empty());
    Ok(())
}

/// A branch the application opens only after its rollback arrived (the coordinator
/// timed the transaction out first) is refused: nobody would ever end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_opened_after_its_rollback_is_refused() -> anyhow::Result<()> {
    let url = fresh_db("late_open").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t_late_open")).await?;
    let x = xid()?;
    assert_eq!(r.rollback(&x).await?, RollbackResult::RolledBack);
    assert!(matches!(
        r.begin_branch(&x).await,
        Err(PgError::BranchClosed(_))
    ));
    assert_eq!(r.open_branches(), 0);
    Ok(())
}

/// Phase 2 has connections of its own: with every branch connection waiting on a row
/// lock that a prepared branch holds, the COMMIT PREPARED that releases it still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase_two_is_not_starved_by_blocked_branches() -> anyhow::Result<()> {
    let url = fresh_db("starve").await?;
    let mut config = PgConfig::new(&url, "t_starve");
    config.pool_size = 2;
    let r = PgResource::connect(config).await?;
    let held = xid()?;
    debit(&r, &held, 1, 1).await?;
    assert_eq!(r.prepare(&held).await?, Vote::Yes);
    // Two branches take every branch connection and wait on account 1's row lock.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let r = Arc::clone(&r);
        let x = xid()?;
        waiting.push(tokio::spawn(
            async move { debit(&r, &x, 1, 1).await.map(|_| x) },
        ));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let commit = tokio::time::timeout(std::time::Duration::from_secs(5), r.commit(&held, false));
    assert_eq!(commit.await??, CommitResult::Committed);
    // The first waiter to get the row holds it until its branch ends, so the other can
    // only finish after that rollback: take them in the order they finish.
    while !waiting.is_empty() {
        let (done, _, rest) = futures::future::select_all(waiting).await;
        let x = done??;
        assert_eq!(r.rollback(&x).await?, RollbackResult::RolledBack);
        waiting = rest;
    }
    assert_eq!(balance(&url, 1).await?, 99);
    Ok(())
}

/// After a restart the in-memory record of rolled-back xids is empty: a branch opened
/// for an xid that was rolled back (or committed) before the restart is refused from
/// the fence table, so it never holds a pooled connection, and the row locks its SQL
/// would take, with nobody left to end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_opened_after_a_restart_for_a_finished_xid_is_refused() -> anyhow::Result<()> {
    let url = fresh_db("late_open_restart").await?;
    let before = PgResource::connect(PgConfig::new(&url, "t_late_restart")).await?;
    let rolled_back = xid()?;
    assert_eq!(
        before.rollback(&rolled_back).await?,
        RollbackResult::RolledBack
    );
    let committed = xid()?;
    debit(&before, &committed, 1, 1).await?;
    assert_eq!(before.prepare(&committed).await?, Vote::Yes);
    assert_eq!(
        before.commit(&committed, false).await?,
        CommitResult::Committed
    );
    drop(before);

    // The restarted resource, with a single branch connection: a refused branch that
    // kept it would block the next one.
    let mut config = PgConfig::new(&url, "t_late_restart");
    config.pool_size = 1;
    let after = PgResource::connect(config).await?;
    for (what, x) in [("rolled back", &rolled_back), ("committed", &committed)] {
        match after.begin_branch(x).await {
            Err(PgError::BranchClosed(_)) => {}
            other => panic!("a branch of a {what} xid was not refused: {other:?}"),
        }
        // Refused again, now from the in-memory fast path for the rolled-back one.
        assert!(matches!(
            after.begin_branch(x).await,
            Err(PgError::BranchClosed(_))
        ));
    }
    assert_eq!(after.open_branches(), 0);
    let fresh = xid()?;
    let branch = tokio::time::timeout(Duration::from_secs(5), debit(&after, &fresh, 2, 1))
        .await
        .map_err(|_| anyhow::anyhow!("the refused branches kept the only connection"))??;
    assert_eq!(
        after.commit(branch.xid(), true).await?,
        CommitResult::Committed
    );
    assert_eq!(balance(&url, 1).await?, 99);
    assert_eq!(balance(&url, 2).await?, 99);
    Ok(())
}

/// A one-phase commit of a branch that ran no SQL is a committed (empty) transaction:
/// it leaves a `'b'` fence row, so a retry of the commit (in this process or after a
/// restart) answers COMMITTED, not ROLLED_BACK, and a later rollback reports the
/// heuristic mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_commit_of_an_empty_branch_is_remembered() -> anyhow::Result<()> {
    let url = fresh_db("onephase_empty").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t_empty")).await?;
    let x = xid()?;
    let _branch = r.begin_branch(&x).await?;
    assert_eq!(r.commit(&x, true).await?, CommitResult::Committed);
    assert_eq!(
        r.commit(&x, true).await?,
        CommitResult::Committed,
        "a retried one-phase commit of the empty branch"
    );
    let restarted = PgResource::connect(PgConfig::new(&url, "t_empty")).await?;
    assert_eq!(
        restarted.commit(&x, true).await?,
        CommitResult::Committed,
        "the retry after a restart"
    );
    assert_eq!(
        restarted.rollback(&x).await?,
        RollbackResult::AlreadyCommitted
    );
    // Rolled back before its one-phase commit (from another instance, as after a
    // restart): the commit finds the tombstone and answers what happened.
    let y = xid()?;
    let _branch = r.begin_branch(&y).await?;
    assert_eq!(restarted.rollback(&y).await?, RollbackResult::RolledBack);
    assert_eq!(r.commit(&y, true).await?, CommitResult::RolledBack);
    assert_eq!(r.commit(&y, true).await?, CommitResult::RolledBack, "retry");
    assert!(prepared_gids(&url).await?.is_empty());
    Ok(())
}

/// A leader without one phase prepared the single branch (its `'b'` fence row sits
/// inside the prepared transaction) and died; the next leader, with one phase on,
/// sends a one-phase commit. There is no open branch any more, and the retry path's
/// fence insert would wait on the prepared transaction's key for good: the commit
/// must see the branch is prepared and commit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_phase_commit_of_a_prepared_branch_commits_it() -> anyhow::Result<()> {
    let url = fresh_db("onephase_prepared").await?;
    let config = PgConfig::new(&url, "t_op_prepared");
    let wait = config.fence_lock_wait;
    let r = PgResource::connect(config).await?;
    let x = xid()?;
    debit(&r, &x, 1, 7).await?;
    assert_eq!(r.prepare(&x).await?, Vote::Yes);
    let commit = tokio::time::timeout(wait, r.commit(&x, true)).await;
    assert!(
        matches!(commit, Ok(Ok(CommitResult::Committed))),
        "a one-phase commit of a prepared branch answered {commit:?}"
    );
    assert_eq!(balance(&url, 1).await?, 93);
    assert!(prepared_gids(&url).await?.is_empty());
    assert_eq!(r.commit(&x, true).await?, CommitResult::Committed, "retry");
    assert_eq!(r.rollback(&x).await?, RollbackResult::AlreadyCommitted);
    Ok(())
}

/// A two-phase commit of a branch that was rolled back (by a person, or a tombstone
/// that got there first) is a heuristic answer the coordinator records, not an error
/// it would retry for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_phase_commit_of_a_rolled_back_branch_answers_rolled_back() -> anyhow::Result<()> {
    let url = fresh_db("commit_rolled_back").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t_commit_rb")).await?;
    let x = xid()?;
    debit(&r, &x, 1, 3).await?;
    assert_eq!(r.prepare(&x).await?, Vote::Yes);
    assert_eq!(r.rollback(&x).await?, RollbackResult::RolledBack);
    assert_eq!(r.commit(&x, false).await?, CommitResult::RolledBack);
    assert_eq!(
        r.commit(&x, false).await?,
        CommitResult::RolledBack,
        "retry"
    );
    assert_eq!(balance(&url, 1).await?, 100);
    assert!(prepared_gids(&url).await?.is_empty());
    Ok(())
}

/// A branch that ran no SQL votes READ_ONLY and keeps a fence row saying so: a retried
/// prepare (a new leader re-running the prepare round) answers READ_ONLY again, not NO
/// (which would abort a transaction that can commit); a late branch for the xid is
/// refused; a rollback (the transaction aborted for another branch's NO) answers
/// ROLLED_BACK, not a heuristic ALREADY_COMMITTED; a commit answers COMMITTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_prepare_of_a_read_only_branch_answers_read_only() -> anyhow::Result<()> {
    let url = fresh_db("read_only_retry").await?;
    let r = PgResource::connect(PgConfig::new(&url, "t_ro_retry")).await?;
    let x = xid()?;
    let _branch = r.begin_branch(&x).await?;
    assert_eq!(r.prepare(&x).await?, Vote::ReadOnly);
    assert_eq!(r.prepare(&x).await?, Vote::ReadOnly, "the retried prepare");
    let restarted = PgResource::connect(PgConfig::new(&url, "t_ro_retry")).await?;
    assert_eq!(
        restarted.prepare(&x).await?,
        Vote::ReadOnly,
        "the retried prepare after a restart"
    );
    assert!(matches!(
        restarted.begin_branch(&x).await,
        Err(PgError::BranchClosed(_))
    ));
    assert_eq!(restarted.commit(&x, false).await?, CommitResult::Committed);
    assert_eq!(restarted.commit(&x, true).await?, CommitResult::Committed);
    assert_eq!(restarted.rollback(&x).await?, RollbackResult::RolledBack);

    // Aborted (another branch voted NO): the rollback is not a heuristic.
    let y = xid()?;
    let _branch = r.begin_branch(&y).await?;
    assert_eq!(r.prepare(&y).await?, Vote::ReadOnly);
    assert_eq!(r.rollback(&y).await?, RollbackResult::RolledBack);
    assert!(prepared_gids(&url).await?.is_empty());
    Ok(())
}

/// A fence table made before the `'o'` state (`CHECK (state IN ('b', 'r'))`) is
/// upgraded at connect. While a prepared transaction holds a lock on it the upgrade
/// cannot run: the resource starts anyway, working as before, and the next connect
/// upgrades it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_fence_table_is_upgraded_at_connect() -> anyhow::Result<()> {
    let url = fresh_db("fence_upgrade").await?;
    let a = admin(&url).await?;
    a.batch_execute(
        "CREATE TABLE ratify_fence (gid text PRIMARY KEY, \
         state \"char\" NOT NULL CHECK (state IN ('b', 'r')), \
         at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let hold = format!("sdk_fence_hold_{}", std::process::id());
    a.batch_execute(&format!(
        "BEGIN; INSERT INTO ratify_fence (gid, state) VALUES ('{hold}', 'b'); PREPARE TRANSACTION '{hold}'"
    ))
    .await?;
    let started = std::time::Instant::now();
    let held = PgResource::connect(PgConfig::new(&url, "t_upgrade")).await;
    a.batch_execute(&format!("ROLLBACK PREPARED '{hold}'"))
        .await?;
    let held = held?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connect waited for the prepared transaction"
    );
    assert!(
        !held.read_only_fence,
        "upgraded under a prepared transaction"
    );
    let x = xid()?;
    let _branch = held.begin_branch(&x).await?;
    assert_eq!(
        held.prepare(&x).await?,
        Vote::ReadOnly,
        "as before the upgrade"
    );

    let upgraded = PgResource::connect(PgConfig::new(&url, "t_upgrade")).await?;
    assert!(upgraded.read_only_fence);
    let y = xid()?;
    let _branch = upgraded.begin_branch(&y).await?;
    assert_eq!(upgraded.prepare(&y).await?, Vote::ReadOnly);
    assert_eq!(
        upgraded.prepare(&y).await?,
        Vote::ReadOnly,
        "the retried prepare"
    );
    assert!(prepared_gids(&url).await?.is_empty());
    Ok(())
}

/// A NO vote for an xid this resource never opened (lost in a restart, or a prepare
/// that overtook its branch) leaves a tombstone (rule 5): the branch opened late for
/// that xid is refused, instead of preparing work of a transaction already aborted.
#[tokio::test]
async fn a_no_vote_for_an_unknown_xid_fences_a_late_branch() -> anyhow::Result<()> {
    let url = fresh_db("no_vote_fence").await?;
    let pg = PgResource::connect(PgConfig::new(&url, "t_no_fence")).await?;
    let x = xid()?;
    assert!(matches!(pg.prepare(&x).await?, Vote::No(_)));
    assert!(
        matches!(pg.prepare(&x).await?, Vote::No(_)),
        "a retry answers NO too"
    );
    match pg.begin_branch(&x).await {
        Err(PgError::BranchClosed(_)) => {}
        other => panic!("a branch of an xid that voted NO was opened: {other:?}"),
    }
    assert_eq!(pg.rollback(&x).await?, RollbackResult::RolledBack);
    Ok(())
}

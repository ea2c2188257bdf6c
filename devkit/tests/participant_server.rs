//! The participant gRPC server over a real resource (the demo account store and the
//! no-op resource): the wire contract of prepare, commit, rollback and recover, as the
//! coordinator sees it. (Moved here from the SDK's unit tests when the demo resources
//! left the SDK.)

use std::sync::Arc;

use pb::participant_client::ParticipantClient;
use ratify_devkit::accounts::AccountStore;
use ratify_participant_sdk::resource::Resource;
use ratify_participant_sdk::server::{ParticipantServer, ServerError};
use ratify_participant_sdk::xid::Xid;
use ratify_proto::pb;
use tonic::transport::Channel;

struct Fixture {
    client: ParticipantClient<Channel>,
    store: Arc<AccountStore>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start() -> anyhow::Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let store = AccountStore::open(dir.path())?;
    store.open_accounts(["a", "b"], 100).await?;
    let server = ParticipantServer::new().with_resource("accounts", store.clone())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    let client = ParticipantClient::connect(format!("http://{addr}")).await?;
    Ok(Fixture {
        client,
        store,
        _stop: stop,
        _dir: dir,
    })
}

fn xid(n: u32) -> anyhow::Result<Xid> {
    Ok(Xid::new(format!("{n:032x}"), "1")?)
}

fn prepare_req(resource: &str, xid: pb::Xid) -> pb::PrepareRequest {
    pb::PrepareRequest {
        resource: resource.into(),
        xid: Some(xid),
    }
}

#[tokio::test]
async fn prepare_commit_rollback_recover_over_grpc() -> anyhow::Result<()> {
    let mut f = start().await?;
    let (x, y) = (xid(1)?, xid(2)?);
    for x in [&x, &y] {
        let b = f.store.branch(x)?;
        b.debit("a", 10)?;
        b.credit("b", 10)?;
    }
    let vote = f
        .client
        .prepare(prepare_req("accounts", x.to_pb()))
        .await?
        .into_inner();
    assert_eq!(vote.vote(), pb::Vote::Yes);
    let recovered = f
        .client
        .recover(pb::RecoverRequest {
            resource: "accounts".into(),
        })
        .await?
        .into_inner();
    assert_eq!(recovered.xids, vec![x.to_pb()]);
    let committed = f
        .client
        .commit(pb::BranchCommitRequest {
            resource: "accounts".into(),
            xid: Some(x.to_pb()),
            one_phase: false,
        })
        .await?
        .into_inner();
    assert_eq!(committed.result(), pb::BranchCommitResult::Committed);
    assert_eq!(f.store.balance("a")?, 90);

    // y conflicts with nothing but is rolled back instead; a late prepare is refused.
    let rolled = f
        .client
        .rollback(pb::BranchRollbackRequest {
            resource: "accounts".into(),
            xid: Some(y.to_pb()),
        })
        .await?
        .into_inner();
    assert_eq!(rolled.result(), pb::BranchRollbackResult::RolledBack);
    let late = f
        .client
        .prepare(prepare_req("accounts", y.to_pb()))
        .await?
        .into_inner();
    assert_eq!(late.vote(), pb::Vote::No);
    assert!(!late.detail.is_empty(), "a NO vote should say why");
    assert_eq!(f.store.total()?, 200);
    Ok(())
}

/// A two-phase commit of a rolled-back branch reaches the coordinator as
/// ROLLED_BACK, the heuristic answer it records, not as an error status it would
/// retry for ever.
#[tokio::test]
async fn a_two_phase_commit_of_a_rolled_back_branch_answers_rolled_back() -> anyhow::Result<()> {
    let mut f = start().await?;
    let x = xid(1)?;
    f.store.branch(&x)?.debit("a", 10)?;
    let vote = f
        .client
        .prepare(prepare_req("accounts", x.to_pb()))
        .await?
        .into_inner();
    assert_eq!(vote.vote(), pb::Vote::Yes);
    f.client
        .rollback(pb::BranchRollbackRequest {
            resource: "accounts".into(),
            xid: Some(x.to_pb()),
        })
        .await?;
    let answer = f
        .client
        .commit(pb::BranchCommitRequest {
            resource: "accounts".into(),
            xid: Some(x.to_pb()),
            one_phase: false,
        })
        .await?
        .into_inner();
    assert_eq!(answer.result(), pb::BranchCommitResult::RolledBack);
    assert_eq!(f.store.balance("a")?, 100);
    Ok(())
}

#[tokio::test]
async fn unknown_resource_is_not_found() -> anyhow::Result<()> {
    let mut f = start().await?;
    let err = f
        .client
        .prepare(prepare_req("ledger", xid(1)?.to_pb()))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(err, Some(tonic::Code::NotFound));
    Ok(())
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() -> anyhow::Result<()> {
    let mut f = start().await?;
    let good = xid(1)?.to_pb();
    let bad_xids = [
        pb::Xid {
            gtrid: "'; DROP TABLE t; --".into(),
            ..good.clone()
        },
        pb::Xid {
            bqual: "01".into(),
            ..good.clone()
        },
        pb::Xid {
            format_id: 7,
            ..good.clone()
        },
    ];
    for bad in bad_xids {
        let code = f
            .client
            .prepare(prepare_req("accounts", bad))
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(code, Some(tonic::Code::InvalidArgument));
    }
    let missing = f
        .client
        .prepare(pb::PrepareRequest {
            resource: "accounts".into(),
            xid: None,
        })
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(missing, Some(tonic::Code::InvalidArgument));
    let bad_name = f
        .client
        .prepare(prepare_req("accounts/../x", good))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(bad_name, Some(tonic::Code::InvalidArgument));
    assert_eq!(f.store.prepared_count(), 0);
    Ok(())
}

#[test]
fn resource_names_are_validated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r: Arc<dyn Resource> = Arc::new(ratify_devkit::noop::NoopResource::open(dir.path())?);
    assert!(matches!(
        ParticipantServer::new().with_resource("bad name", r.clone()),
        Err(ServerError::InvalidResourceName(_))
    ));
    assert!(matches!(
        ParticipantServer::new()
            .with_resource("a", r.clone())?
            .with_resource("a", r),
        Err(ServerError::DuplicateResource(_))
    ));
    Ok(())
}

//! Mutual TLS and authorization on every port, with real certificates of a
//! throwaway CA (docs/design.md, "Security"; README, "Security"). Each test runs a
//! 3-node cluster of real processes started with `--tls-ca/--tls-cert/--tls-key`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_common::tls::{Role, Tls, TlsFiles, Transport};
use ratify_devkit::certs::Ca;
use ratify_participant_sdk::client::{BeginOptions, ClientConfig, ClientError, CoordinatorClient};
use ratify_participant_sdk::App;
use ratify_proto::pb;
use ratify_proto::raft_pb::raft_client::RaftClient;
use ratify_proto::raft_pb::{IdentifyRequest, RaftPayload};
use ratify_tests::TestCluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// A tonic channel to `addr` over TLS trusting `ca`, presenting `identity` if any
/// (tonic's own TLS client, not Ratify's: an outsider's tool).
fn outsider(
    addr: &str,
    ca: &Path,
    identity: Option<&TlsFiles>,
) -> anyhow::Result<tonic::transport::Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca)?))
        .domain_name("localhost");
    if let Some(f) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&f.cert)?,
            std::fs::read(&f.key)?,
        ));
    }
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .tls_config(tls)?
        .connect_lazy())
}

/// A plaintext channel to `addr`.
fn plaintext(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .connect_lazy())
}

/// Ratify's own transport with `files`.
fn transport(files: TlsFiles) -> anyhow::Result<Transport> {
    Ok(Transport::Tls(Tls::load(files)?))
}

fn channel(t: &Transport, addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(t.channel(
        Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(3)),
        ratify_common::tls::Expect::Anyone,
    ))
}

/// The status of one `ClusterStatus` call (`Ok` when answered).
async fn status_call(ch: tonic::transport::Channel) -> Result<(), tonic::Status> {
    pb::admin_client::AdminClient::new(ch)
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .map(drop)
}

async fn identify(ch: tonic::transport::Channel) -> Result<u64, tonic::Status> {
    RaftClient::new(ch)
        .identify(IdentifyRequest {})
        .await
        .map(|r| r.into_inner().node_id)
}

/// One raw HTTP/1.1 GET of /metrics over TLS (rustls directly), presenting
/// `identity` if any: the response's first line, or the error.
async fn https_get(addr: &str, ca: &Path, identity: Option<&TlsFiles>) -> anyhow::Result<String> {
    https_get_path(addr, "/metrics", ca, identity).await
}

/// [`https_get`] of `path`.
async fn https_get_path(
    addr: &str,
    path: &str,
    ca: &Path,
    identity: Option<&TlsFiles>,
) -> anyhow::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(f) => builder.with_client_auth_cert(
            CertificateDer::pem_file_iter(&f.cert)?.collect::<Result<_, _>>()?,
            PrivateKeyDer::from_pem_file(&f.key)?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut body)).await??;
    let text = String::from_utf8_lossy(&body).to_string();
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// A second, unrelated CA in `dir`, and a certificate from it that claims every role.
fn impostor(dir: &Path) -> anyhow::Result<TlsFiles> {
    let other = Ca::new(&dir.join("other-ca"), "not the cluster's CA")?;
    Ok(other.issue(
        "impostor",
        &[
            (Role::Peer, "1"),
            (Role::Client, "x"),
            (Role::Operator, "x"),
            (Role::Participant, "x"),
        ],
    )?)
}

fn ca(c: &TestCluster) -> anyhow::Result<&Ca> {
    c.nodes.ca().context("a TLS cluster has a CA")
}

/// A client, an outsider without a certificate, one with another CA's certificate
/// and a plaintext one reach no port: the client API, the Raft port and the metrics
/// port (console) each refuse them, and answer the cluster's own certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_of_the_ca_is_refused_on_every_port() -> anyhow::Result<()> {
    let c = TestCluster::start_tls(&[]).await?;
    let ca = ca(&c)?;
    let ca_file = ca.ca_file();
    let bad = impostor(c.dir.path())?;
    let admin = c.nodes.transport();
    for id in c.nodes.ids() {
        let info = c.nodes.node_info(id)?;
        let metrics = c.nodes.metrics_addr(id)?;
        // The client API.
        assert!(status_call(outsider(&info.api_addr, &ca_file, None)?)
            .await
            .is_err());
        assert!(status_call(outsider(&info.api_addr, &ca_file, Some(&bad))?)
            .await
            .is_err());
        assert!(status_call(plaintext(&info.api_addr)?).await.is_err());
        status_call(channel(&admin, &info.api_addr)?)
            .await
            .with_context(|| format!("node {id}'s API answers the cluster's certificate"))?;
        // The Raft port.
        assert!(identify(outsider(&info.raft_addr, &ca_file, None)?)
            .await
            .is_err());
        assert!(identify(outsider(&info.raft_addr, &ca_file, Some(&bad))?)
            .await
            .is_err());
        assert!(identify(plaintext(&info.raft_addr)?).await.is_err());
        // The metrics port and console.
        assert!(
            !https_get(&metrics, &ca_file, None)
                .await
                .unwrap_or_default()
                .contains("200"),
            "node {id}'s metrics answered a client without a certificate"
        );
        assert!(
            !https_get(&metrics, &ca_file, Some(&bad))
                .await
                .unwrap_or_default()
                .contains("200"),
            "node {id}'s metrics answered another CA's certificate"
        );
        // Metrics (counts only) for any certificate of the CA; the console (every
        // transaction, its owner and branches) for operators only.
        let prometheus = ca.issue("prom", &[])?;
        let line = https_get(&metrics, &ca_file, Some(&prometheus)).await?;
        assert!(line.contains("200"), "node {id}'s metrics: {line}");
        let line = https_get_path(&metrics, "/api/v1/console", &ca_file, Some(&prometheus)).await?;
        assert!(
            line.contains("403"),
            "node {id}'s console to a role-less certificate: {line}"
        );
        let client = ca.issue("app", &[(Role::Client, "app")])?;
        let line = https_get_path(&metrics, "/api/v1/console", &ca_file, Some(&client)).await?;
        assert!(
            line.contains("403"),
            "node {id}'s console to a client: {line}"
        );
        let operator = ca.issue("ops", &[(Role::Operator, "ops")])?;
        let line = https_get_path(&metrics, "/api/v1/console", &ca_file, Some(&operator)).await?;
        assert!(
            line.contains("200"),
            "node {id}'s console to an operator: {line}"
        );
    }
    Ok(())
}

/// Only cluster members speak Raft: a client certificate cannot call the Raft
/// service at all, and a peer certificate of a node that is not a member cannot ask
/// for votes or append entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_speak_raft() -> anyhow::Result<()> {
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    use ratify_coordinator::raft::codec::encode;
    use ratify_coordinator::types::TypeConfig;

    let c = TestCluster::start_tls(&[]).await?;
    let ca = ca(&c)?;
    let leader = c.nodes.wait_for_leader(Duration::from_secs(10)).await?;
    let raft_addr = c.nodes.node_info(leader)?.raft_addr;
    // A client (the cluster's admin certificate has every role but peer).
    let admin = channel(&c.nodes.transport(), &raft_addr)?;
    let e = identify(admin)
        .await
        .expect_err("a client called the Raft service");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A peer that is not a member.
    let stranger = transport(ca.issue("node9", &[(Role::Peer, "9")])?)?;
    let raft = RaftClient::new(channel(&stranger, &raft_addr)?);
    let vote = VoteRequest::<u64>::new(Vote::new(1_000, 9), None);
    let e = raft
        .clone()
        .vote(RaftPayload {
            data: encode(&vote)?,
            target: leader,
        })
        .await
        .expect_err("a non-member asked for a vote");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("not a member"), "{e:?}");
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1_000, 9),
        prev_log_id: None,
        entries: vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(1_000, 9), 1),
            payload: EntryPayload::Blank,
        }],
        leader_commit: None,
    };
    let e = raft
        .clone()
        .append_entries(RaftPayload {
            data: encode(&append)?,
            target: leader,
        })
        .await
        .expect_err("a non-member appended entries");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Nor by an empty AppendEntries (it would still set the vote and may truncate
    // the log), nor by a snapshot whose membership names it (helper-18, finding 1).
    let probe = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1_000, 9),
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(1_000, 9), 1)),
        entries: vec![],
        leader_commit: None,
    };
    let e = raft
        .clone()
        .append_entries(RaftPayload {
            data: encode(&probe)?,
            target: leader,
        })
        .await
        .expect_err("a non-member sent an empty AppendEntries");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let forged_at = LogId::new(CommittedLeaderId::new(1_000, 9), 1_000_000);
    let membership = openraft::Membership::new(
        vec![[9u64].into_iter().collect()],
        [(9u64, ratify_coordinator::types::NodeInfo::default())]
            .into_iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
    );
    let snapshot = openraft::raft::InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(1_000, 9),
        meta: openraft::SnapshotMeta {
            last_log_id: Some(forged_at),
            last_membership: openraft::StoredMembership::new(Some(forged_at), membership),
            snapshot_id: "forged".into(),
        },
        offset: 0,
        data: vec![],
        done: true,
    };
    let e = raft
        .clone()
        .install_snapshot(RaftPayload {
            data: encode(&snapshot)?,
            target: leader,
        })
        .await
        .expect_err("a non-member installed a snapshot naming itself");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A member's certificate cannot speak for another node either.
    let member = transport(ca.issue("node2-copy", &[(Role::Peer, "2")])?)?;
    let e = RaftClient::new(channel(&member, &raft_addr)?)
        .vote(RaftPayload {
            data: encode(&VoteRequest::<u64>::new(Vote::new(1_000, 3), None))?,
            target: leader,
        })
        .await
        .expect_err("node 2 asked votes for node 3");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // Nothing changed: the same leader, in a term below the one claimed.
    let s = c.nodes.status(leader).await?;
    assert_eq!(s.leader_id, leader);
    assert!(s.term < 1_000, "term {}", s.term);
    Ok(())
}

/// An app over mTLS: its transactions commit (the nodes' certificates are the
/// coordinator's identity its participant server accepts), and its participant
/// server refuses Prepare, Commit, Rollback and Recover from any other identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_takes_calls_only_from_the_coordinator() -> anyhow::Result<()> {
    let c = TestCluster::start_tls(&[]).await?;
    let ca = ca(&c)?;
    let files = ca.issue(
        "shop",
        &[(Role::Client, "shop"), (Role::Participant, "shop")],
    )?;
    let store = Arc::new(ratify_devkit::noop::NoopResource::open(
        c.dir.path().join("noop"),
    )?);
    let app = App::builder()
        .coordinators(c.nodes.api_endpoints())
        .tls(Tls::load(files.clone())?)
        .resource("orders", store)
        .start()
        .await?;
    app.transaction(|_tx| async { Ok::<_, std::io::Error>(()) })
        .await
        .context("a transaction over mTLS commits")?;

    let xid = pb::Xid {
        format_id: ratify_proto::XID_FORMAT_ID,
        gtrid: "0000000000000001-0000000000000001".into(),
        bqual: "1".into(),
    };
    // The cluster's admin certificate (operator, client, participant: not peer) and
    // the app's own certificate are refused; the app's own transactions went
    // through, so the nodes' certificates are not.
    for who in [c.nodes.transport(), transport(files)?] {
        let mut p = pb::participant_client::ParticipantClient::new(channel(&who, app.endpoint())?);
        let e = p
            .commit(pb::BranchCommitRequest {
                xid: Some(xid.clone()),
                resource: "orders".into(),
                one_phase: true,
            })
            .await
            .expect_err("a non-coordinator committed a branch");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = p
            .prepare(pb::PrepareRequest {
                xid: Some(xid.clone()),
                resource: "orders".into(),
            })
            .await
            .expect_err("a non-coordinator prepared a branch");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = p
            .rollback(pb::BranchRollbackRequest {
                xid: Some(xid.clone()),
                resource: "orders".into(),
            })
            .await
            .expect_err("a non-coordinator rolled back a branch");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        let e = p
            .recover(pb::RecoverRequest {
                resource: "orders".into(),
            })
            .await
            .expect_err("a non-coordinator listed prepared branches");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    }
    // Another CA's node certificate does not get past the handshake.
    let bad = transport(impostor(c.dir.path())?)?;
    let e = pb::participant_client::ParticipantClient::new(channel(&bad, app.endpoint())?)
        .recover(pb::RecoverRequest {
            resource: "orders".into(),
        })
        .await
        .expect_err("another CA's certificate was served");
    assert_ne!(e.code(), Code::Ok);
    // The other way round: a client that dials the app's port as if it were a
    // coordinator node hangs up, since the certificate there is a participant's.
    let fooled = CoordinatorClient::new(
        vec![app.endpoint().to_string()],
        ClientConfig {
            transport: c.nodes.transport(),
            deadline: Duration::from_secs(2),
            ..ClientConfig::default()
        },
    )?;
    let answer = fooled.cluster_status(Some(app.endpoint())).await;
    match &answer {
        Err(ClientError::Unreachable { message, .. }) => {
            assert!(message.contains("not ratify://peer"), "{message}")
        }
        other => panic!("a participant was taken for a node: {other:?}"),
    }
    app.shutdown().await;
    Ok(())
}

fn client_as(c: &TestCluster, name: &str) -> anyhow::Result<CoordinatorClient> {
    let files = ca(c)?.issue(name, &[(Role::Client, name)])?;
    Ok(CoordinatorClient::new(
        c.nodes.api_endpoints(),
        ClientConfig {
            transport: transport(files)?,
            ..ClientConfig::default()
        },
    )?)
}

/// A transaction belongs to the client that began it: another client can neither
/// commit, roll back, enlist in nor read it (PERMISSION_DENIED), and nothing
/// changes; its owner then commits it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_transaction_is_not_yours() -> anyhow::Result<()> {
    let c = TestCluster::start_tls(&[]).await?;
    let alice = client_as(&c, "alice")?;
    let bob = client_as(&c, "bob")?;
    let begun = alice.begin(BeginOptions::default()).await?;
    let denied = |r: Result<(), ClientError>, what: &str| match r {
        Err(ClientError::Rejected { code, message }) => {
            assert_eq!(code, Code::PermissionDenied, "{what}: {message}");
            assert!(message.contains("alice"), "{what}: {message}");
        }
        other => panic!("{what}: {other:?}"),
    };
    denied(bob.commit(&begun.gtrid).await.map(drop), "commit");
    denied(bob.rollback(&begun.gtrid).await.map(drop), "rollback");
    denied(bob.get(&begun.gtrid).await.map(drop), "get");
    denied(
        bob.enlist(&begun.gtrid, "127.0.0.1:1", "r").await.map(drop),
        "enlist",
    );
    let t = alice.get(&begun.gtrid).await?;
    assert_eq!(t.state, pb::TxnState::Active as i32, "{t:?}");
    assert!(t.branches.is_empty(), "bob's enlist changed nothing: {t:?}");
    // A client cannot list everyone's transactions, nor act as an operator.
    assert!(matches!(
        bob.list(None, 10, "").await,
        Err(ClientError::Rejected {
            code: Code::PermissionDenied,
            ..
        })
    ));
    assert!(matches!(
        bob.cluster_status(None).await,
        Err(ClientError::Rejected {
            code: Code::PermissionDenied,
            ..
        })
    ));
    // Nor plant an owner of its own.
    let planted = bob
        .begin(BeginOptions {
            labels: [("ratify.owner".to_string(), "alice".to_string())].into(),
            ..BeginOptions::default()
        })
        .await;
    assert!(
        matches!(
            planted,
            Err(ClientError::Rejected {
                code: Code::InvalidArgument,
                ..
            })
        ),
        "{planted:?}"
    );
    let d = alice.commit(&begun.gtrid).await?;
    assert_eq!(
        d.outcome,
        ratify_participant_sdk::client::Outcome::Committed
    );
    Ok(())
}

/// A certificate rotated on disk is used for new connections within seconds, with
/// no restart, and transactions keep committing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_picked_up_without_a_restart() -> anyhow::Result<()> {
    let c = TestCluster::start_tls(&[]).await?;
    let ca = ca(&c)?;
    let leader = c.nodes.wait_for_leader(Duration::from_secs(10)).await?;
    let api = c.nodes.node_info(leader)?.api_addr;
    let admin = c.dir.path().join("cluster/tls");
    let me = TlsFiles {
        ca: ca.ca_file(),
        cert: admin.join(format!("{}.pem", ratify_devkit::local::ADMIN_NAME)),
        key: admin.join(format!("{}.key", ratify_devkit::local::ADMIN_NAME)),
    };
    let served = || async {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&me.ca)? {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&me.cert)?.collect::<Result<_, _>>()?,
                PrivateKeyDer::from_pem_file(&me.key)?,
            )?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&api).await?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .context("the node presented no certificate")?
            .to_vec();
        anyhow::Ok(leaf)
    };
    let before = served().await?;
    let pid = c.nodes.pid(leader);
    let commit_one = || async {
        let b = c.client.begin(BeginOptions::default()).await?;
        let d = c.client.commit(&b.gtrid).await?;
        anyhow::ensure!(d.outcome == ratify_participant_sdk::client::Outcome::Committed);
        anyhow::Ok(())
    };
    commit_one().await?;
    // Re-issue the leader's certificate (a new key) in place.
    let files = ca.issue(
        &format!("node{leader}"),
        &[(Role::Peer, &leader.to_string())],
    )?;
    let rotated = CertificateDer::pem_file_iter(&files.cert)?
        .next()
        .context("a certificate")??
        .to_vec();
    assert_ne!(before, rotated);
    let start = Instant::now();
    loop {
        commit_one().await.context("transactions keep flowing")?;
        if served().await? == rotated {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "node {leader} still serves its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The node did not restart, and the cluster still commits.
    assert_eq!(c.nodes.pid(leader), pid);
    for _ in 0..5 {
        commit_one().await?;
    }
    Ok(())
}

fn client_with(c: &TestCluster, name: &str, roles: &[Role]) -> anyhow::Result<CoordinatorClient> {
    let names: Vec<(Role, &str)> = roles.iter().map(|r| (*r, name)).collect();
    let files = ca(c)?.issue(name, &names)?;
    Ok(CoordinatorClient::new(
        c.nodes.api_endpoints(),
        ClientConfig {
            transport: transport(files)?,
            ..ClientConfig::default()
        },
    )?)
}

fn code_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Code {
    match r {
        Err(ClientError::Rejected { code, .. }) => code,
        other => panic!("not a refusal: {other:?}"),
    }
}

/// The coordinator dials registered participants only: a Begin or Enlist naming
/// another endpoint is refused and nothing changes; a participant registers its own
/// name only, an operator any; one endpoint has one name; a participant asks the
/// outcome of its own branches only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_name_registered_participants_only() -> anyhow::Result<()> {
    let c = TestCluster::start_tls(&[]).await?;
    let alice = client_with(&c, "alice", &[Role::Client])?;
    let shop = client_with(&c, "shop", &[Role::Participant])?;
    let mall = client_with(&c, "mall", &[Role::Participant])?;
    let branch = |ep: &str| BeginOptions {
        branches: vec![(ep.to_string(), "r".to_string())],
        ..BeginOptions::default()
    };
    // Nobody is registered at 127.0.0.1:7777 yet.
    let refused = alice.begin(branch("127.0.0.1:7777")).await;
    match &refused {
        Err(ClientError::Rejected { code, message }) => {
            assert_eq!(*code, Code::FailedPrecondition, "{message}");
            assert!(message.contains("registered"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let live = c.client.list(None, 100, "").await?;
    assert!(live.transactions.is_empty(), "nothing was begun: {live:?}");
    let empty = alice.begin(BeginOptions::default()).await?;
    let e = alice.enlist(&empty.gtrid, "127.0.0.1:7777", "r").await;
    assert_eq!(code_of(e), Code::FailedPrecondition);
    assert!(alice.get(&empty.gtrid).await?.branches.is_empty());

    // Who may register what.
    assert!(
        shop.register_participant("", "127.0.0.1:7777")
            .await?
            .changed
    );
    assert!(
        !shop
            .register_participant("shop", "127.0.0.1:7777")
            .await?
            .changed
    );
    assert_eq!(
        code_of(shop.register_participant("mall", "127.0.0.1:7778").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(alice.register_participant("alice", "127.0.0.1:7779").await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(
            c.client
                .register_participant("evil", "127.0.0.1:7777")
                .await
        ),
        Code::FailedPrecondition,
        "an endpoint belongs to one name"
    );
    // A participant registers only at a host its certificate names.
    assert_eq!(
        code_of(shop.register_participant("", "10.0.0.7:5432").await),
        Code::PermissionDenied
    );
    assert!(
        mall.register_participant("", "127.0.0.1:7778")
            .await?
            .changed
    );
    let names: Vec<String> = c
        .client
        .list_participants()
        .await?
        .participants
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["mall", "shop"]);
    assert_eq!(
        code_of(alice.list_participants().await),
        Code::PermissionDenied
    );

    // Now a branch may name shop's endpoint; only shop asks about it.
    let begun = alice.begin(branch("127.0.0.1:7777")).await?;
    let xid = begun.branches[0].xid.clone();
    assert_eq!(
        code_of(mall.query_outcome(&xid).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(alice.query_outcome(&xid).await),
        Code::PermissionDenied
    );
    let answer = shop.query_outcome(&xid).await?;
    assert_eq!(answer.outcome, pb::Outcome::InProgress as i32, "{answer:?}");
    alice.rollback(&begun.gtrid).await?;

    // A transaction ended by a branch of a participant that moved: shop's recorded
    // branch stays shop's (it may ask its outcome), and its old endpoint cannot be
    // taken by another name while it is remembered.
    let kept = alice.begin(branch("127.0.0.1:7777")).await?;
    let kept_xid = kept.branches[0].xid.clone();
    assert!(
        shop.register_participant("", "127.0.0.1:7779")
            .await?
            .changed
    );
    shop.query_outcome(&kept_xid).await?;
    assert_eq!(
        code_of(mall.query_outcome(&kept_xid).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(mall.register_participant("", "127.0.0.1:7777").await),
        Code::FailedPrecondition
    );
    assert_eq!(
        code_of(alice.begin(branch("127.0.0.1:7777")).await),
        Code::FailedPrecondition,
        "a new branch names a current endpoint"
    );
    // A branch the transaction does not have is nobody's to ask about.
    let mut missing = kept_xid.clone();
    missing = ratify_participant_sdk::xid::Xid::from_pb(&pb::Xid {
        bqual: "9".into(),
        ..missing.to_pb()
    })?;
    assert_eq!(
        code_of(shop.query_outcome(&missing).await),
        Code::PermissionDenied
    );
    alice.rollback(&kept.gtrid).await?;

    // Unregistered, it is refused again.
    // Shop cannot be unregistered while its branches' rollbacks are pending (no
    // process listens at its endpoints); mall, with none, can.
    assert_eq!(
        code_of(c.client.unregister_participant("shop").await),
        Code::FailedPrecondition
    );
    assert!(c.client.unregister_participant("mall").await?.changed);
    assert!(!c.client.unregister_participant("mall").await?.changed);
    assert_eq!(
        code_of(alice.begin(branch("127.0.0.1:7778")).await),
        Code::FailedPrecondition
    );
    Ok(())
}

/// A new leader that never heard of a transaction drives it from the branch list
/// sent with its Commit: under TLS that list is used only if it names registered
/// participants, or a client could make the coordinator dial anywhere by naming an
/// unknown gtrid. Otherwise the transaction is aborted as lost (LEADER_LOST), an
/// answer the owner's retry gets too, and nothing is dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_list_cannot_name_an_unregistered_endpoint() -> anyhow::Result<()> {
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let trap_addr = trap.local_addr()?.to_string();
    let mut c = TestCluster::start_tls(&[]).await?;
    let leader = c.nodes.wait_for_leader(Duration::from_secs(10)).await?;
    let begun = c.client.begin(BeginOptions::default()).await?;
    // Held in the old leader's memory only: the next leader has no record of it.
    c.nodes.kill(leader)?;
    let next = c.nodes.wait_for_leader(Duration::from_secs(10)).await?;
    let api = c.nodes.node_info(next)?.api_addr;
    let forged = pb::BranchList {
        branches: vec![pb::Branch {
            xid: Some(pb::Xid {
                format_id: ratify_proto::XID_FORMAT_ID,
                gtrid: begun.gtrid.clone(),
                bqual: "1".into(),
            }),
            endpoint: trap_addr.clone(),
            resource: "r".into(),
            ..Default::default()
        }],
        owner_token: String::new(),
    };
    let mut rpc =
        pb::coordinator_client::CoordinatorClient::new(channel(&c.nodes.transport(), &api)?);
    for _ in 0..2 {
        let answer = rpc
            .commit(pb::CommitRequest {
                gtrid: begun.gtrid.clone(),
                branches: Some(forged.clone()),
            })
            .await?
            .into_inner();
        assert_eq!(answer.outcome, pb::Outcome::Aborted as i32, "{answer:?}");
        assert_eq!(answer.reason, pb::Reason::LeaderLost as i32, "{answer:?}");
    }
    let dialled = tokio::time::timeout(Duration::from_millis(500), trap.accept()).await;
    assert!(
        dialled.is_err(),
        "the coordinator dialled the unregistered endpoint"
    );
    Ok(())
}

/// Membership changes under TLS: a dead voter is replaced by a new node with its
/// own certificate, which then counts (the leader is killed and the two left elect
/// one and commit); the replaced node's certificate is refused by the Raft port from
/// then on (it is no longer a member).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_replaced_under_tls_counts_and_the_old_one_is_refused() -> anyhow::Result<()> {
    use openraft::raft::VoteRequest;
    use openraft::Vote;
    use ratify_coordinator::raft::codec::encode;

    let mut c = TestCluster::start_tls(&[]).await?;
    let leader = c.nodes.wait_for_leader(Duration::from_secs(10)).await?;
    let mut others = c.nodes.ids().into_iter().filter(|&id| id != leader);
    let (dead, other) = (
        others.next().context("a follower")?,
        others.next().context("another")?,
    );
    c.nodes.kill(dead)?;
    let new = c.nodes.spawn_joining(4)?;
    // Started, not yet listening: wait until it answers (over TLS, as the leader will).
    let up = Instant::now();
    while c.nodes.status(4).await.is_err() {
        anyhow::ensure!(
            up.elapsed() < Duration::from_secs(20),
            "node 4 never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin = CoordinatorClient::new(
        c.nodes.api_endpoints(),
        ClientConfig {
            transport: c.nodes.transport(),
            attempt_timeout: Duration::from_secs(150),
            deadline: Duration::from_secs(180),
            ..ClientConfig::default()
        },
    )?;
    let r = admin
        .replace_member(dead, 4, &new.raft_addr, &new.api_addr)
        .await?;
    assert!(r.changed, "{r:?}");
    let target = c.nodes.status(leader).await?.last_applied;
    c.wait_applied(4, target, Duration::from_secs(15)).await?;

    // The replaced node's own identity is no member any more.
    let old = transport(ca(&c)?.issue(
        &format!("node{dead}-again"),
        &[(Role::Peer, &dead.to_string())],
    )?)?;
    let raft_addr = c.nodes.node_info(leader)?.raft_addr;
    let e = RaftClient::new(channel(&old, &raft_addr)?)
        .vote(RaftPayload {
            data: encode(&VoteRequest::<u64>::new(Vote::new(1_000, dead), None))?,
            target: leader,
        })
        .await
        .expect_err("a replaced node asked for a vote");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // Node 4 counts: without the leader, {other, 4} elect one of them and commit.
    c.nodes.kill(leader)?;
    let next = c.nodes.wait_for_leader(Duration::from_secs(15)).await?;
    assert!(next == other || next == 4, "leader {next}");
    let b = c.client.begin(BeginOptions::default()).await?;
    let d = c.client.commit(&b.gtrid).await?;
    assert_eq!(
        d.outcome,
        ratify_participant_sdk::client::Outcome::Committed
    );
    Ok(())
}

/// A participant that comes back on another port (and registers there) is called
/// there for the branches recorded at its old endpoint: a branch enlisted before the
/// move commits after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_moved_is_called_where_it_is_now() -> anyhow::Result<()> {
    let c = TestCluster::start_tls(&[]).await?;
    let files = ca(&c)?.issue(
        "mover",
        &[(Role::Client, "mover"), (Role::Participant, "mover")],
    )?;
    let start = |store: &str| {
        let (files, endpoints, path) = (
            files.clone(),
            c.nodes.api_endpoints(),
            c.dir.path().join(store),
        );
        async move {
            let resource = Arc::new(ratify_devkit::noop::NoopResource::open(path)?);
            anyhow::Ok(
                App::builder()
                    .coordinators(endpoints)
                    .tls(Tls::load(files)?)
                    .resource("r", resource)
                    .without_recovery()
                    .start()
                    .await?,
            )
        }
    };
    let first = start("noop-1").await?;
    let old = first.endpoint().to_string();
    let alice = client_with(&c, "alice", &[Role::Client])?;
    let begun = alice
        .begin(BeginOptions {
            branches: vec![(old.clone(), "r".to_string())],
            ..BeginOptions::default()
        })
        .await?;
    first.shutdown().await;
    let second = start("noop-2").await?;
    assert_ne!(second.endpoint(), old);
    let d = alice.commit(&begun.gtrid).await?;
    assert_eq!(
        d.outcome,
        ratify_participant_sdk::client::Outcome::Committed
    );
    second.shutdown().await;
    Ok(())
}

/// After a failover, only the client that began a transaction can have the new
/// leader drive it from a branch list (its owner token binds it and the branches):
/// another client's list, a subset of the branches, is not used and the transaction
/// is aborted as lost; the owner's own retried Commit of another transaction, with
/// its list and token, commits both branches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_cannot_drive_a_lost_transaction() -> anyhow::Result<()> {
    let mut c = TestCluster::start_tls(&[]).await?;
    let mut apps = Vec::new();
    for name in ["x", "y"] {
        let files = ca(&c)?.issue(name, &[(Role::Client, name), (Role::Participant, name)])?;
        let store = Arc::new(ratify_devkit::noop::NoopResource::open(
            c.dir.path().join(format!("noop-{name}")),
        )?);
        apps.push(
            App::builder()
                .coordinators(c.nodes.api_endpoints())
                .tls(Tls::load(files)?)
                .resource("r", store)
                .start()
                .await?,
        );
    }
    let both = BeginOptions {
        branches: apps
            .iter()
            .map(|a| (a.endpoint().to_string(), "r".to_string()))
            .collect(),
        ..BeginOptions::default()
    };
    let alice = client_with(&c, "alice", &[Role::Client])?;
    let stolen = alice.begin(both.clone()).await?;
    let kept = alice.begin(both).await?;
    let leader = c.nodes.wait_for_leader(Duration::from_secs(10)).await?;
    c.nodes.kill(leader)?;
    let next = c.nodes.wait_for_leader(Duration::from_secs(15)).await?;

    // Bob names the first branch only (no token of his could cover alice's).
    let bob = transport(ca(&c)?.issue("bob", &[(Role::Client, "bob")])?)?;
    let subset = pb::BranchList {
        branches: vec![pb::Branch {
            xid: Some(stolen.branches[0].xid.to_pb()),
            endpoint: stolen.branches[0].endpoint.clone(),
            resource: "r".into(),
            ..Default::default()
        }],
        owner_token: String::new(),
    };
    let api = c.nodes.node_info(next)?.api_addr;
    let answer = pb::coordinator_client::CoordinatorClient::new(channel(&bob, &api)?)
        .commit(pb::CommitRequest {
            gtrid: stolen.gtrid.clone(),
            branches: Some(subset),
        })
        .await?
        .into_inner();
    assert_eq!(answer.outcome, pb::Outcome::Aborted as i32, "{answer:?}");
    assert_eq!(answer.reason, pb::Reason::LeaderLost as i32, "{answer:?}");
    // Alice's retry learns the same: never COMMITTED with a branch unprepared.
    let d = alice.commit(&stolen.gtrid).await?;
    assert_eq!(d.outcome, ratify_participant_sdk::client::Outcome::Aborted);
    // Her other transaction, with her list and token, the new leader drives.
    let d = alice.commit(&kept.gtrid).await?;
    assert_eq!(
        d.outcome,
        ratify_participant_sdk::client::Outcome::Committed,
        "{d:?}"
    );
    for a in apps {
        a.shutdown().await;
    }
    Ok(())
}

/// Under TLS a node added while the leader is a node that joined after the cluster
/// began still catches up (helper-19, finding 1): replaying the log from the start,
/// it first adopts the founding membership, which does not name that leader, and a
/// node that is no voter takes the leader's entries anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_added_under_a_leader_that_joined_later_catches_up() -> anyhow::Result<()> {
    let mut c = TestCluster::start_tls(&[]).await?;
    // More entries than one AppendEntries carries (1,000), so the new node's first
    // batch ends before the membership change that admitted the later leader.
    for _ in 0..1_100 {
        let b = c.client.begin(BeginOptions::default()).await?;
        c.client.commit(&b.gtrid).await?;
    }
    let admin = CoordinatorClient::new(
        c.nodes.api_endpoints(),
        ClientConfig {
            transport: c.nodes.transport(),
            attempt_timeout: Duration::from_secs(150),
            deadline: Duration::from_secs(180),
            ..ClientConfig::default()
        },
    )?;
    // Replace a follower by node 4.
    let leader = c.nodes.wait_for_leader(Duration::from_secs(10)).await?;
    let replaced = c
        .nodes
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .context("a follower")?;
    c.nodes.kill(replaced)?;
    let n4 = c.nodes.spawn_joining(4)?;
    answers(&c, 4).await?;
    admin
        .replace_member(replaced, 4, &n4.raft_addr, &n4.api_addr)
        .await?;
    c.nodes.forget(replaced)?;
    let target = c.nodes.status(leader).await?.last_applied;
    c.wait_applied(4, target, Duration::from_secs(30)).await?;
    // Make node 4 the leader: kill whoever leads, restart it, until 4 is elected.
    let mut tries = 0;
    loop {
        let l = c.nodes.wait_for_leader(Duration::from_secs(15)).await?;
        if l == 4 {
            break;
        }
        tries += 1;
        anyhow::ensure!(tries < 12, "node 4 never led");
        c.nodes.kill(l)?;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        c.nodes.restart(l)?;
        answers(&c, l).await?;
    }
    // Now add node 5: it must catch up from node 4.
    let n5 = c.nodes.spawn_joining(5)?;
    answers(&c, 5).await?;
    let r = admin.add_member(5, &n5.raft_addr, &n5.api_addr).await?;
    assert!(r.changed, "{r:?}");
    let target = c.nodes.status(4).await?.last_applied;
    c.wait_applied(5, target, Duration::from_secs(30)).await?;
    Ok(())
}

/// Waits until node `id` answers a status call (over the cluster's transport).
async fn answers(c: &TestCluster, id: u64) -> anyhow::Result<()> {
    let up = Instant::now();
    while let Err(e) = c.nodes.status(id).await {
        anyhow::ensure!(
            up.elapsed() < Duration::from_secs(20),
            "node {id} never answered: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

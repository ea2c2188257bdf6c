//! The standard gRPC services on the client port: `grpc.health.v1.Health` follows the
//! node's role (README, "Health and reflection"), and server reflection lists the
//! public services (and not the internal Raft one).

use std::time::{Duration, Instant};

use anyhow::Context;
use ratify_tests::TestCluster;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const COORDINATOR: &str = "ratify.v1.Coordinator";

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

/// The status node `addr` reports for `service`.
async fn health(addr: &str, service: &str) -> anyhow::Result<ServingStatus> {
    let r = HealthClient::new(channel(addr).await?)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(r.status)?)
}

/// Waits until node `addr` reports `want` for `service`.
async fn wait_health(
    addr: &str,
    service: &str,
    want: ServingStatus,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let got = health(addr, service).await;
        if matches!(&got, Ok(s) if *s == want) {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "{addr} reports {got:?} for {service:?}, not {want:?}, after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One reflection request on a fresh stream; its answer.
async fn reflect(addr: &str, request: MessageRequest) -> anyhow::Result<MessageResponse> {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = ServerReflectionClient::new(channel(addr).await?)
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    answers
        .message()
        .await?
        .and_then(|a| a.message_response)
        .context("no reflection answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_leader_and_reflection_lists_the_public_services() -> anyhow::Result<()>
{
    let mut c = TestCluster::start(&[]).await?;
    let leader = c.leader().await?;
    let follower = c.follower(leader)?;
    let (lead_addr, follow_addr) = (c.nodes.api_addr(leader)?, c.nodes.api_addr(follower)?);

    // The ready leader serves both; a follower that knows the leader redirects (the
    // whole node is SERVING) but does not serve the Coordinator itself.
    let t = Duration::from_secs(5);
    wait_health(&lead_addr, "", ServingStatus::Serving, t).await?;
    wait_health(&lead_addr, COORDINATOR, ServingStatus::Serving, t).await?;
    wait_health(&follow_addr, "", ServingStatus::Serving, t).await?;
    assert_eq!(
        health(&follow_addr, COORDINATOR).await?,
        ServingStatus::NotServing
    );
    let unknown = health(&lead_addr, "no.such.Service").await;
    assert!(
        matches!(&unknown, Err(e) if e.downcast_ref::<tonic::Status>().map(tonic::Status::code) == Some(tonic::Code::NotFound)),
        "an unknown service name is NOT_FOUND: {unknown:?}"
    );

    // `ratify probe` (the image's own health check) says the same.
    let probe = |addr: &str, service: &str, alive: bool| -> anyhow::Result<bool> {
        let mut cmd = std::process::Command::new(ratify_tests::ratify_binary()?);
        cmd.args(["probe", "--insecure", "--addr", addr, "--service", service]);
        if alive {
            cmd.arg("--alive");
        }
        Ok(cmd.output()?.status.success())
    };
    assert!(probe(&lead_addr, COORDINATOR, false)?);
    assert!(probe(&follow_addr, "", false)?);
    assert!(!probe(&follow_addr, COORDINATOR, false)?);
    assert!(
        probe(&follow_addr, COORDINATOR, true)?,
        "--alive: any answer"
    );

    // Reflection: the public services and the standard ones, not the Raft service.
    let MessageResponse::ListServicesResponse(list) =
        reflect(&follow_addr, MessageRequest::ListServices(String::new())).await?
    else {
        anyhow::bail!("ListServices answered with something else");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        COORDINATOR,
        "ratify.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.contains("raft")),
        "the internal Raft service is listed: {names:?}"
    );
    let described = reflect(
        &lead_addr,
        MessageRequest::FileContainingSymbol(COORDINATOR.into()),
    )
    .await?;
    assert!(
        matches!(&described, MessageResponse::FileDescriptorResponse(f) if !f.file_descriptor_proto.is_empty()),
        "no descriptor for {COORDINATOR}: {described:?}"
    );
    let raft = reflect(
        &lead_addr,
        MessageRequest::FileContainingSymbol("ratify.v1.raft.Raft".into()),
    )
    .await;
    let not_found = match &raft {
        Ok(MessageResponse::ErrorResponse(_)) => true,
        Err(e) => {
            e.downcast_ref::<tonic::Status>().map(tonic::Status::code)
                == Some(tonic::Code::NotFound)
        }
        Ok(_) => false,
    };
    assert!(
        not_found,
        "the Raft service's descriptor is served: {raft:?}"
    );

    // SIGKILL the leader: a new one becomes SERVING for the Coordinator within
    // seconds, and the old follower-turned-leader or -follower says so.
    c.nodes.kill(leader)?;
    let start = Instant::now();
    let new_leader = loop {
        let mut found = None;
        for id in c.nodes.ids().into_iter().filter(|&id| id != leader) {
            let addr = c.nodes.api_addr(id)?;
            if matches!(health(&addr, COORDINATOR).await, Ok(ServingStatus::Serving)) {
                found = Some(id);
            }
        }
        if let Some(id) = found {
            break id;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(10),
            "no surviving node is SERVING {COORDINATOR} 10 s after the leader was killed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = start.elapsed();
    eprintln!("node {new_leader} SERVING {COORDINATOR} {took:?} after the leader was killed");
    assert_eq!(
        c.leader().await?,
        new_leader,
        "the node serving the Coordinator is the leader"
    );
    let other = c
        .nodes
        .ids()
        .into_iter()
        .find(|&id| id != leader && id != new_leader)
        .context("a third node")?;
    let other_addr = c.nodes.api_addr(other)?;
    wait_health(&other_addr, "", ServingStatus::Serving, t).await?;
    assert_eq!(
        health(&other_addr, COORDINATOR).await?,
        ServingStatus::NotServing
    );
    Ok(())
}

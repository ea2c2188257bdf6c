//! The standard gRPC services on the client port, so grpcurl, grpc-health-probe and
//! Kubernetes gRPC probes work without Ratify-specific tooling: the health service
//! (`grpc.health.v1.Health`), whose statuses follow this node's Raft role, and server
//! reflection (`grpc.reflection.v1` and `v1alpha`) of the public services. The Raft
//! port serves neither.
//!
//! # What the health service says
//! - `""` (the whole node): SERVING when the node is the *ready* leader (leader, its
//!   log applied: it serves calls), or a follower that knows the current leader (it
//!   answers every call UNAVAILABLE with the leader's address in `ratify-leader`, so
//!   a client that follows the hint gets served). NOT_SERVING otherwise: a candidate,
//!   a follower that knows no leader, a learner, a leader still catching up on its
//!   term, a node shutting down.
//! - `ratify.v1.Coordinator`: SERVING only on the ready leader, so a load balancer
//!   or a probe that wants the node that answers calls itself asks for it.
//! - Any other name: NOT_FOUND, as the health protocol says.

use openraft::ServerState;
use ratify_proto::pb::admin_server::AdminServer;
use ratify_proto::pb::coordinator_server::CoordinatorServer;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::driver::Driver;
use crate::service::coordinator::CoordinatorService;
use crate::types::NodeId;

/// The health service name of the Coordinator service, `ratify.v1.Coordinator`.
pub const COORDINATOR: &str = <CoordinatorServer<CoordinatorService> as NamedService>::NAME;

/// What the health service reports for one state of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// The whole node (service name `""`).
    pub node: ServingStatus,
    /// `ratify.v1.Coordinator`.
    pub coordinator: ServingStatus,
}

impl Health {
    /// Neither serving: before the node knows its role, and while it stops.
    pub const DOWN: Self = Self {
        node: ServingStatus::NotServing,
        coordinator: ServingStatus::NotServing,
    };
}

/// What the node knows of its role, as the health service needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// Its Raft state.
    pub state: ServerState,
    /// Whether it is the leader (per its metrics) and ready: every entry of earlier
    /// terms applied, so it serves calls (`Driver::ensure_leader` says yes).
    pub ready_leader: bool,
    /// Whether it knows another node as the current leader and that node's address
    /// (so its UNAVAILABLE answers carry the `ratify-leader` hint).
    pub knows_leader: bool,
}

/// The health statuses for `role` (see the module documentation).
pub fn assess(role: Role) -> Health {
    let serving = |yes: bool| {
        if yes {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let redirects = role.state == ServerState::Follower && role.knows_leader;
    let ready = role.state == ServerState::Leader && role.ready_leader;
    Health {
        node: serving(ready || redirects),
        coordinator: serving(ready),
    }
}

/// Sets both statuses on `reporter`.
async fn report(reporter: &HealthReporter, h: Health) {
    reporter.set_service_status("", h.node).await;
    reporter
        .set_service_status(COORDINATOR, h.coordinator)
        .await;
}

/// Creates the health service with both statuses NOT_SERVING (the reporter's
/// default for `""` is SERVING, which a node that has not found its role yet is
/// not), and its reporter for [`track`].
pub async fn health_service() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    report(&reporter, Health::DOWN).await;
    (reporter, service)
}

/// Keeps `reporter` in step with node `id`'s role until `stop` turns true (then
/// both statuses go NOT_SERVING). Wakes on every change of the Raft metrics; while
/// the node leads but is not ready yet, it waits (up to 2 s at a time, in
/// `Driver::ensure_leader`) for the driver to become ready.
pub async fn track(
    id: NodeId,
    driver: Driver,
    reporter: HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut metrics = driver.raft().metrics();
    let mut last: Option<Health> = None;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let (state, leading) = {
            let m = metrics.borrow_and_update();
            (m.state, m.state.is_leader() && m.current_leader == Some(id))
        };
        let ready_leader = if leading {
            tokio::select! {
                r = driver.ensure_leader() => r.is_ok(),
                r = metrics.changed() => {
                    if r.is_err() { break }
                    continue;
                }
                _ = stop.changed() => continue,
            }
        } else {
            false
        };
        let knows_leader = {
            let m = metrics.borrow();
            m.current_leader
                .is_some_and(|l| l != id && m.membership_config.membership().get_node(&l).is_some())
        };
        let h = assess(Role {
            state,
            ready_leader,
            knows_leader,
        });
        if last != Some(h) {
            tracing::debug!(node = ?h.node, coordinator = ?h.coordinator, "health status");
            report(&reporter, h).await;
            last = Some(h);
        }
        if leading && !ready_leader {
            // Still catching up: ask the driver again.
            continue;
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { break },
            _ = stop.changed() => {}
        }
    }
    report(&reporter, Health::DOWN).await;
}

/// The names the reflection service lists: the public services the client port
/// serves, and the two standard ones. (The `Participant` service's descriptor is
/// there too, for `grpcurl describe`, but a coordinator does not serve it.)
fn listed_services() -> [&'static str; 5] {
    [
        COORDINATOR,
        <AdminServer<CoordinatorService> as NamedService>::NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    let mut b = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ratify_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for name in listed_services() {
        b = b.with_service_name(name);
    }
    b
}

/// The reflection service, `grpc.reflection.v1` (grpcurl, Postman, grpcui).
///
/// # Errors
/// When a descriptor set does not decode (a build problem).
pub fn reflection_v1() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    reflection_builder().build_v1()
}

/// The reflection service, `grpc.reflection.v1alpha` (older clients ask for it).
///
/// # Errors
/// When a descriptor set does not decode (a build problem).
pub fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    reflection_builder().build_v1alpha()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(state: ServerState, ready_leader: bool, knows_leader: bool) -> Role {
        Role {
            state,
            ready_leader,
            knows_leader,
        }
    }

    const UP: ServingStatus = ServingStatus::Serving;
    const NO: ServingStatus = ServingStatus::NotServing;

    #[test]
    fn only_the_ready_leader_serves_the_coordinator_and_a_redirecting_follower_is_up() {
        let h = |r| {
            let h = assess(r);
            (h.node, h.coordinator)
        };
        assert_eq!(h(role(ServerState::Leader, true, false)), (UP, UP));
        assert_eq!(
            h(role(ServerState::Leader, false, false)),
            (NO, NO),
            "catching up"
        );
        assert_eq!(h(role(ServerState::Follower, false, true)), (UP, NO));
        assert_eq!(
            h(role(ServerState::Follower, false, false)),
            (NO, NO),
            "no leader known"
        );
        assert_eq!(h(role(ServerState::Candidate, false, true)), (NO, NO));
        assert_eq!(h(role(ServerState::Learner, false, true)), (NO, NO));
        assert_eq!(h(role(ServerState::Shutdown, false, true)), (NO, NO));
    }

    #[test]
    fn the_names_are_the_generated_ones() {
        assert_eq!(COORDINATOR, "ratify.v1.Coordinator");
        assert!(listed_services().contains(&"ratify.v1.Admin"));
        assert!(reflection_v1().is_ok() && reflection_v1alpha().is_ok());
    }
}

//! The gRPC services. This folder is the only place errors become `tonic::Status`.
//!
//! # Layout
//! - this file: [`to_status`], the single mapping from driver errors to status codes.
//! - [`coordinator`]: the public `Coordinator` and `Admin` services.
//! - [`attention`]: when a live transaction needs a person (console and admin).
//! - [`convert`]: every conversion between the coordinator's types and protobuf.
//! - [`raft`]: the internal `Raft` service (served on its own port).
//! - [`metrics`]: the Prometheus `/metrics` endpoint (plain HTTP, its own port).
//! - [`console`]: the web console and its JSON document, on the metrics port.
//! - [`health`]: the standard `grpc.health.v1.Health` (following the node's role) and
//!   server reflection, on the client port.

pub mod attention;
pub mod console;
pub mod convert;
pub mod coordinator;
pub mod health;
pub mod metrics;
pub mod owner_token;
pub mod raft;

use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::driver::DriveError;

/// Maps a driver error to a gRPC status; a not-the-leader answer carries the
/// leader's client address in the `ratify-leader` metadata key.
pub fn to_status(e: DriveError) -> Status {
    match e {
        DriveError::NotLeader(leader) => {
            let mut status = Status::unavailable(match &leader {
                Some(l) => format!("not the leader; the leader is at {}", l.api_addr),
                None => "not the leader, and no leader is known yet; retry".to_string(),
            });
            if let Some(value) =
                leader.and_then(|l| MetadataValue::try_from(l.api_addr.as_str()).ok())
            {
                status
                    .metadata_mut()
                    .insert(ratify_proto::LEADER_METADATA_KEY, value);
            }
            status
        }
        DriveError::Invalid(m) => Status::invalid_argument(m),
        DriveError::NotFound(m) | DriveError::Forgotten(m) => Status::not_found(m),
        DriveError::HandedOver => Status::unavailable(DriveError::HandedOver.to_string()),
        DriveError::Exhausted(m) => Status::resource_exhausted(m),
        DriveError::Precondition(m) => Status::failed_precondition(m),
        DriveError::Unavailable(m) => Status::unavailable(m),
    }
}

/// Maps a refused or unfinished membership change to a gRPC status (a
/// not-the-leader answer carries the hint, as [`to_status`] does).
pub fn membership_status(e: crate::membership::MembershipError) -> Status {
    use crate::membership::MembershipError as E;
    match e {
        E::NotLeader(leader) => to_status(DriveError::NotLeader(leader)),
        E::Invalid(m) => Status::invalid_argument(m),
        E::AlreadyExists(m) => Status::already_exists(m),
        E::Precondition(m) => Status::failed_precondition(m),
        E::Unavailable(m) => Status::unavailable(m),
    }
}

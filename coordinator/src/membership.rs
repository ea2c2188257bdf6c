//! Membership changes (docs/design.md, "Membership changes"): add a voter, remove a
//! member, replace a voter by a new node with a new id. The leader runs them one at
//! a time, with openraft's joint consensus; the members' addresses ([`NodeInfo`])
//! travel in the membership entries, so every node (and the Raft network, which
//! dials by them) learns them from the log.
//!
//! # Steps
//! A node is added as a learner first (a learner does not count for the quorum), and
//! promoted only once it has caught up: a voter that still has to fetch the whole log
//! would otherwise hold up every commit that needs it. A replacement is one joint
//! change from the old voter set to the new one, so a dead voter never sits in a
//! larger configuration where it counts against the majority.
//!
//! # The quorum rule
//! Before each voter change the leader writes an empty entry and counts the voters
//! whose replication matched it within [`PROBE_WINDOW`]: the *reachable* voters
//! (the leader counts itself). The change is refused, FAILED_PRECONDITION
//! "would lose the quorum: ...", unless the reachable voters are a majority of the
//! current voter set *and* of the new one (the joint phase needs both). A node being
//! added counts as reachable once it has caught up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError};
use openraft::ChangeMembers;

use crate::driver::{DriveError, Driver};
use crate::txn::Proposal;
use crate::types::typ::RaftError;
use crate::types::{NodeId, NodeInfo};

/// How long voters have to acknowledge the leader's probe entry to count as reachable.
pub const PROBE_WINDOW: Duration = Duration::from_secs(2);
/// How long a new learner has to catch up before the change gives up (it stays a
/// learner: adding it again resumes, removing it drops it).
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// A learner is caught up when it is at most this many entries behind the leader.
pub const CATCH_UP_LAG: u64 = 100;
/// Longest wait for one membership entry (or the probe entry) to commit.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest member address accepted.
pub const MAX_ADDR_BYTES: usize = 256;

/// Most members (voters and learners) a cluster takes.
pub const MAX_MEMBERS: usize = 9;

/// Why a membership change was refused or did not finish. Refusals change nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// This node is not the leader; the leader, if known, is attached.
    #[error("not the leader")]
    NotLeader(Option<NodeInfo>),
    /// Malformed request.
    #[error("{0}")]
    Invalid(String),
    /// The id or an address is taken by another member.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not allowed now: the quorum would be lost, the last voter, a learner that did
    /// not catch up, a new node that cannot be reached.
    #[error("{0}")]
    Precondition(String),
    /// No quorum, a change in progress, a stopped Raft core: retry.
    #[error("{0}")]
    Unavailable(String),
}

impl From<DriveError> for MembershipError {
    fn from(e: DriveError) -> Self {
        match e {
            DriveError::NotLeader(l) => Self::NotLeader(l),
            DriveError::Invalid(m) => Self::Invalid(m),
            DriveError::Precondition(m) => Self::Precondition(m),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// What [`check_new`] found of the node to add.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Present {
    /// Not a member.
    No,
    /// A learner with the same addresses (an earlier add did not finish).
    Learner,
    /// A voter with the same addresses.
    Voter,
}

/// The membership changes of one node; only the leader makes them. Cheap to clone;
/// clones share the lock that runs changes one at a time.
#[derive(Clone)]
pub struct Membership {
    /// The node's driver (leadership, the Raft handle, the cluster id).
    driver: Driver,
    /// Held for the whole of a change.
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership").finish_non_exhaustive()
    }
}

/// The membership in force on this node (the latest one in its log).
fn current(driver: &Driver) -> openraft::Membership<NodeId, NodeInfo> {
    driver
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .clone()
}

fn voters(m: &openraft::Membership<NodeId, NodeInfo>) -> BTreeSet<NodeId> {
    m.voter_ids().collect()
}

/// `host:port`, printable, bounded.
fn validate_addr(what: &str, addr: &str) -> Result<(), MembershipError> {
    let bad = |why: &str| {
        MembershipError::Invalid(format!(
            "{what} {:?} {why}",
            addr.chars().take(80).collect::<String>()
        ))
    };
    if addr.is_empty() || addr.len() > MAX_ADDR_BYTES {
        return Err(bad(&format!("must be 1 to {MAX_ADDR_BYTES} bytes")));
    }
    if addr.contains("://") || addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must be host:port (no scheme, no spaces)"));
    }
    match addr.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && matches!(port.parse::<u16>(), Ok(p) if p != 0) => {}
        _ => return Err(bad("is not host:port with a port from 1 to 65535")),
    }
    if tonic::transport::Endpoint::from_shared(format!("http://{addr}")).is_err() {
        return Err(bad("is not a valid address"));
    }
    Ok(())
}

fn validate_node(id: NodeId, node: &NodeInfo) -> Result<(), MembershipError> {
    if id == 0 {
        return Err(MembershipError::Invalid("node id must be non-zero".into()));
    }
    validate_addr("raft_addr", &node.raft_addr)?;
    validate_addr("api_addr", &node.api_addr)
}

/// Is `id` with `node` already a member, and are its id and addresses free
/// otherwise? Members in `replacing` may share the new node's addresses (a dead
/// node's machine taken over).
fn check_new(
    m: &openraft::Membership<NodeId, NodeInfo>,
    id: NodeId,
    node: &NodeInfo,
    replacing: Option<NodeId>,
) -> Result<Present, MembershipError> {
    if let Some(have) = m.get_node(&id) {
        if have != node {
            return Err(MembershipError::AlreadyExists(format!(
                "node {id} is already a member with other addresses ({have}); a new node \
                 takes a new id"
            )));
        }
        return Ok(if m.voter_ids().any(|v| v == id) {
            Present::Voter
        } else {
            Present::Learner
        });
    }
    for (other, have) in m.nodes() {
        if Some(*other) == replacing {
            continue;
        }
        for (mine, theirs) in [
            (&node.raft_addr, &have.raft_addr),
            (&node.api_addr, &have.api_addr),
            (&node.raft_addr, &have.api_addr),
            (&node.api_addr, &have.raft_addr),
        ] {
            if mine == theirs {
                return Err(MembershipError::AlreadyExists(format!(
                    "address {mine} is already used by node {other}"
                )));
            }
        }
    }
    // Every member costs the leader a replication stream for ever (rule 12): a
    // cluster takes a handful, and a learner that never caught up counts too.
    let members =
        m.nodes().count() - usize::from(replacing.is_some_and(|r| m.get_node(&r).is_some()));
    if members >= MAX_MEMBERS {
        return Err(MembershipError::Precondition(format!(
            "the cluster has {members} members (voters and learners), the most it takes is \
             {MAX_MEMBERS}; remove one first (a learner that never caught up, too)"
        )));
    }
    Ok(Present::No)
}

/// Refuses unless `reachable` holds a majority of `old` and of `new`.
fn check_quorum(
    old: &BTreeSet<NodeId>,
    new: &BTreeSet<NodeId>,
    reachable: &BTreeSet<NodeId>,
) -> Result<(), MembershipError> {
    for (name, set) in [("current", old), ("new", new)] {
        let up: BTreeSet<NodeId> = set.intersection(reachable).copied().collect();
        if 2 * up.len() <= set.len() {
            return Err(MembershipError::Precondition(format!(
                "would lose the quorum: of the {name} voters {set:?} only {up:?} are reachable \
                 (acknowledged the leader within {PROBE_WINDOW:?}), and {} are needed; \
                 nothing changed",
                set.len() / 2 + 1
            )));
        }
    }
    Ok(())
}

fn write_error(e: RaftError<ClientWriteError<NodeId, NodeInfo>>) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            MembershipError::NotLeader(f.leader_node)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(p),
        )) => MembershipError::Unavailable(format!(
            "another membership change is not committed yet ({p}); retry"
        )),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            MembershipError::Precondition(e.to_string())
        }
        RaftError::Fatal(f) => MembershipError::Unavailable(format!("the Raft core stopped: {f}")),
    }
}

impl Membership {
    /// The membership changes of the node `driver` drives.
    pub fn new(driver: Driver) -> Self {
        Self {
            driver,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The membership in force on this node.
    pub fn current(&self) -> openraft::Membership<NodeId, NodeInfo> {
        current(&self.driver)
    }

    fn my_id(&self) -> NodeId {
        self.driver.raft().metrics().borrow().id
    }

    /// Errs unless this node is the ready leader; then takes the change lock and
    /// finishes a change a previous leader left half-done (a joint configuration).
    async fn begin(&self) -> Result<tokio::sync::OwnedMutexGuard<()>, MembershipError> {
        self.driver.ensure_leader().await?;
        let guard = Arc::clone(&self.lock).lock_owned().await;
        self.driver.ensure_leader().await?;
        let m = self.current();
        if let Some(goal) = m
            .get_joint_config()
            .last()
            .filter(|_| m.get_joint_config().len() > 1)
        {
            tracing::info!(
                voters = ?goal,
                "finishing an interrupted membership change (joint configuration)"
            );
            self.change(ChangeMembers::ReplaceAllVoters(goal.clone()))
                .await?;
        }
        Ok(guard)
    }

    /// Proposes `changes` (voters removed are dropped, not kept as learners) and
    /// waits until openraft has committed the final configuration.
    async fn change(
        &self,
        changes: ChangeMembers<NodeId, NodeInfo>,
    ) -> Result<u64, MembershipError> {
        match tokio::time::timeout(
            COMMIT_TIMEOUT,
            self.driver.raft().change_membership(changes, false),
        )
        .await
        {
            Ok(Ok(resp)) => Ok(resp.log_id.index),
            Ok(Err(e)) => Err(write_error(e)),
            Err(_) => Err(MembershipError::Unavailable(format!(
                "the membership change was not committed within {COMMIT_TIMEOUT:?}; it may \
                 still be: ClusterStatus shows the membership"
            ))),
        }
    }

    /// The voters among `nodes` (plus this leader) whose replication matched an
    /// entry written now within [`PROBE_WINDOW`].
    async fn reachable(
        &self,
        nodes: &BTreeSet<NodeId>,
    ) -> Result<BTreeSet<NodeId>, MembershipError> {
        let raft = self.driver.raft();
        let index = match tokio::time::timeout(
            COMMIT_TIMEOUT.min(Duration::from_secs(5)),
            raft.client_write(Proposal::default()),
        )
        .await
        {
            Ok(Ok(resp)) => resp.log_id.index,
            Ok(Err(e)) => return Err(write_error(e)),
            Err(_) => {
                return Err(MembershipError::Unavailable(
                    "the leader cannot commit an entry (no quorum?); retry".into(),
                ))
            }
        };
        let me = self.my_id();
        let matched = |m: &crate::types::typ::RaftMetrics| -> BTreeSet<NodeId> {
            let mut up: BTreeSet<NodeId> = m
                .replication
                .iter()
                .flatten()
                .filter(|(id, log)| nodes.contains(id) && log.is_some_and(|l| l.index >= index))
                .map(|(id, _)| *id)
                .collect();
            up.insert(me);
            up
        };
        let mut rx = raft.metrics();
        let deadline = tokio::time::Instant::now() + PROBE_WINDOW;
        loop {
            let up = matched(&rx.borrow_and_update());
            if nodes.iter().all(|n| up.contains(n))
                || tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
            {
                return Ok(up);
            }
        }
    }

    /// Asks the node at `node.api_addr` who it is: it must be node `id`, running, and
    /// not part of another cluster.
    async fn preflight(&self, id: NodeId, node: &NodeInfo) -> Result<(), MembershipError> {
        let status = crate::ask::node_status_of(&node.api_addr, self.driver.transport(), Some(id))
            .await
            .map_err(|s| {
                MembershipError::Precondition(format!(
                    "cannot reach node {id} at {}: {}; start it first (ratify node --id {id} \
                 --raft-addr {} --api-addr {} --data-dir ..., without --init)",
                    node.api_addr,
                    s.message(),
                    node.raft_addr,
                    node.api_addr
                ))
            })?;
        if status.node_id != id {
            return Err(MembershipError::Invalid(format!(
                "the node at {} is node {}, not node {id}",
                node.api_addr, status.node_id
            )));
        }
        // The Raft address must reach that very node: one that reaches another
        // member would let it answer for the new one (docs/design.md, "Membership
        // changes"; the Raft port refuses requests meant for another id, so the
        // learner would never catch up either).
        match crate::ask::raft_identity_of(&node.raft_addr, self.driver.transport(), Some(id)).await
        {
            Ok(served) if served == id => {}
            Ok(served) => {
                return Err(MembershipError::Invalid(format!(
                    "the Raft address {} is node {served}'s, not node {id}'s",
                    node.raft_addr
                )))
            }
            Err(s) => {
                return Err(MembershipError::Precondition(format!(
                    "cannot reach node {id}'s Raft port at {}: {}",
                    node.raft_addr,
                    s.message()
                )))
            }
        }
        let ours = format!("{:016x}", self.driver.sm().read().table.cluster_id);
        if status.cluster_id != "0000000000000000" && status.cluster_id != ours {
            return Err(MembershipError::Precondition(format!(
                "node {id} at {} belongs to another cluster ({}); start it on an empty data \
                 folder",
                node.api_addr, status.cluster_id
            )));
        }
        Ok(())
    }

    /// Waits until learner `id` has replicated at least up to `since` and is at most
    /// [`CATCH_UP_LAG`] entries behind.
    async fn catch_up(&self, id: NodeId, since: u64) -> Result<(), MembershipError> {
        let mut rx = self.driver.raft().metrics();
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let (matched, last) = {
                let m = rx.borrow_and_update();
                if !m.state.is_leader() {
                    return Err(MembershipError::Unavailable(
                        "this node lost the leadership while the new node caught up; retry on \
                         the new leader"
                            .into(),
                    ));
                }
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|l| l.index);
                (matched, m.last_log_index.unwrap_or(0))
            };
            if let Some(at) = matched {
                if at >= since && last.saturating_sub(at) <= CATCH_UP_LAG {
                    return Ok(());
                }
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(MembershipError::Precondition(format!(
                    "node {id} has not caught up after {CATCH_UP_TIMEOUT:?} (it has the log up \
                     to {} of {last}); it stays a learner: check its raft_addr, then add it \
                     again to resume or remove it",
                    matched.map_or_else(|| "nothing".to_string(), |i| i.to_string())
                )));
            }
        }
    }

    /// Adds `id` as a learner unless it is one, and waits until it has caught up.
    async fn add_learner(
        &self,
        id: NodeId,
        node: &NodeInfo,
        present: Present,
    ) -> Result<(), MembershipError> {
        let since = match present {
            Present::No => {
                tracing::info!(node = id, %node, "membership: adding node as a learner");
                let resp = tokio::time::timeout(
                    COMMIT_TIMEOUT,
                    self.driver.raft().add_learner(id, node.clone(), false),
                )
                .await
                .map_err(|_| {
                    MembershipError::Unavailable(format!(
                        "adding node {id} as a learner was not committed within \
                         {COMMIT_TIMEOUT:?}; retry"
                    ))
                })?
                .map_err(write_error)?;
                resp.log_id.index
            }
            _ => self
                .driver
                .raft()
                .metrics()
                .borrow()
                .membership_config
                .log_id()
                .map_or(0, |l| l.index),
        };
        self.catch_up(id, since).await?;
        tracing::info!(node = id, "membership: the learner has caught up");
        Ok(())
    }

    /// Adds node `id` at `node` as a voter: a learner first, promoted once caught up.
    /// `Ok(false)` when it already was a voter with these addresses.
    ///
    /// # Errors
    /// See [`MembershipError`]; a refusal changes nothing. A learner that does not
    /// catch up stays a learner.
    pub async fn add(&self, id: NodeId, node: NodeInfo) -> Result<bool, MembershipError> {
        validate_node(id, &node)?;
        let _guard = self.begin().await?;
        let m = self.current();
        let present = check_new(&m, id, &node, None)?;
        if present == Present::Voter {
            return Ok(false);
        }
        let old = voters(&m);
        let mut new = old.clone();
        new.insert(id);
        if present == Present::No {
            self.preflight(id, &node).await?;
            let mut up = self.reachable(&old).await?;
            up.insert(id);
            check_quorum(&old, &new, &up)?;
        }
        self.add_learner(id, &node, present).await?;
        let up = self.reachable(&new).await?;
        check_quorum(&old, &new, &up)?;
        tracing::info!(node = id, "membership: promoting the learner to voter");
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await?;
        tracing::info!(node = id, voters = ?voters(&self.current()), "membership: node added");
        Ok(true)
    }

    /// Removes member `id` (voter or learner). Removing the leader is allowed: it
    /// commits the change, then steps down. `Ok(false)` when it was not a member.
    ///
    /// # Errors
    /// See [`MembershipError`]; a refusal changes nothing.
    pub async fn remove(&self, id: NodeId) -> Result<bool, MembershipError> {
        if id == 0 {
            return Err(MembershipError::Invalid("node id must be non-zero".into()));
        }
        let _guard = self.begin().await?;
        let m = self.current();
        if m.get_node(&id).is_none() {
            return Ok(false);
        }
        let old = voters(&m);
        if !old.contains(&id) {
            tracing::info!(node = id, "membership: removing learner");
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await?;
            return Ok(true);
        }
        if old.len() == 1 {
            return Err(MembershipError::Precondition(format!(
                "node {id} is the last voter; add another before removing it"
            )));
        }
        let mut new = old.clone();
        new.remove(&id);
        let up = self.reachable(&old).await?;
        check_quorum(&old, &new, &up)?;
        if id == self.my_id() {
            tracing::info!(
                node = id,
                "membership: removing this node, the leader; it steps down once the change \
                 is committed and the others elect a leader"
            );
        } else {
            tracing::info!(node = id, "membership: removing voter");
        }
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
            .await?;
        tracing::info!(node = id, voters = ?new, "membership: node removed");
        Ok(true)
    }

    /// Replaces voter `old_id` by the new node `new_id` at `node`: adds it as a learner,
    /// waits until it has caught up, then one joint change swaps the voters.
    /// `Ok(false)` when that was done already.
    ///
    /// # Errors
    /// See [`MembershipError`]; a refusal changes nothing (a new learner that does
    /// not catch up stays a learner).
    pub async fn replace(
        &self,
        old_id: NodeId,
        new_id: NodeId,
        node: NodeInfo,
    ) -> Result<bool, MembershipError> {
        validate_node(new_id, &node)?;
        if old_id == 0 {
            return Err(MembershipError::Invalid(
                "old node id must be non-zero".into(),
            ));
        }
        if old_id == new_id {
            return Err(MembershipError::Invalid(format!(
                "old and new id are both {old_id}: the new node takes a new id"
            )));
        }
        let _guard = self.begin().await?;
        let m = self.current();
        let present = check_new(&m, new_id, &node, Some(old_id))?;
        let old = voters(&m);
        if m.get_node(&old_id).is_none() {
            if present == Present::Voter {
                return Ok(false);
            }
            return Err(MembershipError::Precondition(format!(
                "node {old_id} is not a member; add node {new_id} with AddMember instead"
            )));
        }
        if !old.contains(&old_id) {
            return Err(MembershipError::Precondition(format!(
                "node {old_id} is a learner, not a voter: remove it and add node {new_id} instead"
            )));
        }
        let mut new: BTreeSet<NodeId> = old.clone();
        new.remove(&old_id);
        new.insert(new_id);
        if present == Present::No {
            self.preflight(new_id, &node).await?;
            let mut up = self.reachable(&old).await?;
            up.insert(new_id);
            check_quorum(&old, &new, &up)?;
        }
        if present != Present::Voter {
            self.add_learner(new_id, &node, present).await?;
        }
        let up = self.reachable(&old.union(&new).copied().collect()).await?;
        check_quorum(&old, &new, &up)?;
        tracing::info!(
            old = old_id,
            new = new_id,
            voters = ?new,
            "membership: replacing voter (one joint change)"
        );
        self.change(ChangeMembers::ReplaceAllVoters(new.clone()))
            .await?;
        tracing::info!(old = old_id, new = new_id, voters = ?new, "membership: node replaced");
        Ok(true)
    }
}

/// The members of `m` as (id, addresses, voter), in id order.
pub fn members(m: &openraft::Membership<NodeId, NodeInfo>) -> Vec<(NodeId, NodeInfo, bool)> {
    let voters = voters(m);
    let mut all: Vec<_> = m
        .nodes()
        .map(|(id, n)| (*id, n.clone(), voters.contains(id)))
        .collect();
    all.sort_by_key(|(id, _, _)| *id);
    all
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn the_quorum_rule_counts_reachable_voters_in_both_configurations() {
        // 3 voters, one down: replacing the dead one keeps 2 of 3 in both.
        assert!(check_quorum(&set(&[1, 2, 3]), &set(&[1, 2, 4]), &set(&[1, 2, 4])).is_ok());
        // Removing a live one while another is down leaves 1 of 2.
        let e = check_quorum(&set(&[1, 2, 3]), &set(&[1, 3]), &set(&[1, 2]));
        assert!(
            matches!(&e, Err(MembershipError::Precondition(m)) if m.starts_with("would lose the quorum")),
            "{e:?}"
        );
        // Removing two of three while one is down.
        assert!(check_quorum(&set(&[1, 2, 3]), &set(&[1]), &set(&[1, 3])).is_ok());
        assert!(check_quorum(&set(&[1, 2, 3]), &set(&[2]), &set(&[1, 3])).is_err());
        // 3 → 4 with one down: 3 of 4 reachable once the new one caught up.
        assert!(check_quorum(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]), &set(&[1, 2, 4])).is_ok());
        // 3 → 4 with the new one not caught up and one down: 2 of 4 is not a majority.
        assert!(check_quorum(&set(&[1, 2, 3]), &set(&[1, 2, 3, 4]), &set(&[1, 2])).is_err());
    }

    #[test]
    fn addresses_must_be_host_and_port() {
        for ok in ["127.0.0.1:7001", "node-4.internal:7001", "[::1]:7001"] {
            assert!(validate_addr("raft_addr", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "http://127.0.0.1:7001",
            "a b:1",
            "h:0",
            "h:70000",
            ":7",
        ] {
            assert!(validate_addr("raft_addr", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_taken_id_or_address_is_refused_and_the_same_node_is_recognised() {
        let node = |r: &str, a: &str| NodeInfo {
            raft_addr: r.into(),
            api_addr: a.into(),
        };
        let mut nodes = BTreeMap::new();
        nodes.insert(1, node("h:1", "h:101"));
        nodes.insert(2, node("h:2", "h:102"));
        nodes.insert(4, node("h:4", "h:104"));
        let m = openraft::Membership::new(vec![set(&[1, 2])], nodes);
        assert_eq!(
            check_new(&m, 2, &node("h:2", "h:102"), None),
            Ok(Present::Voter)
        );
        assert_eq!(
            check_new(&m, 4, &node("h:4", "h:104"), None),
            Ok(Present::Learner)
        );
        assert_eq!(
            check_new(&m, 3, &node("h:3", "h:103"), None),
            Ok(Present::No)
        );
        assert!(matches!(
            check_new(&m, 2, &node("h:9", "h:102"), None),
            Err(MembershipError::AlreadyExists(_))
        ));
        assert!(matches!(
            check_new(&m, 3, &node("h:2", "h:103"), None),
            Err(MembershipError::AlreadyExists(_))
        ));
        // A replacement may take over the old node's addresses.
        assert_eq!(
            check_new(&m, 3, &node("h:2", "h:102"), Some(2)),
            Ok(Present::No)
        );
    }
}

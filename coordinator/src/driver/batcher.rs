//! Group commit at the Raft layer: concurrent proposals share log entries.
//!
//! openraft 0.9 appends and flushes one client write at a time on the leader, and
//! keeps one AppendEntries in flight per follower, so one command per entry caps the
//! cluster at one fsync round trip per transaction step. The batcher keeps at most
//! `pipeline` entries in flight; while they are being replicated, new commands queue,
//! and the next entry takes everything queued (up to `max_batch` commands, and about
//! [`MAX_ENTRY_BYTES`], so one entry stays small enough to replicate within a
//! heartbeat interval). A lone client still gets a one-command entry at once; under
//! load, one fsync on each node serves many transactions.
//!
//! # Every proposal resolves
//! openraft 0.9 answers a pending `client_write` only when its entry is applied or
//! truncated by a conflict. A leader cut off with entries in flight, while the
//! majority snapshots and purges past them, installs that snapshot on return without
//! a conflict: those writes never resolve. A pipeline slot held by such a write would
//! be lost for good, and once every slot was lost the node, leader again, could
//! commit nothing while it kept heartbeating. So each write is bounded by
//! `propose_timeout`: when it passes, the slot is released and the callers are told
//! to retry (the entry may still commit later; every command is safe to re-propose
//! or to be answered from the table).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::DriveError;
use crate::metrics::Counters;
use crate::txn::{Command, CommandResult, Proposal};
use crate::types::typ::{ClientWriteError, Raft, RaftError};
use ratify_common::{failpoint, group};

/// Commands waiting for their entry (always the same one), and where their answers go.
struct Pending {
    /// The commands, applied in this order in one entry.
    cmds: Vec<Command>,
    /// The state machine's answer to the last of them, or why the entry failed.
    reply: oneshot::Sender<Result<CommandResult, DriveError>>,
}

/// The handle proposals go through. Cheap to clone; the batching task ends when the
/// last handle is dropped.
#[derive(Clone)]
pub(super) struct Batcher {
    /// Queue into the batching task.
    queue: mpsc::UnboundedSender<Pending>,
}

impl Batcher {
    /// Starts the batching task for `raft`.
    pub(super) fn start(
        raft: Raft,
        pipeline: usize,
        max_batch: usize,
        write_timeout: Duration,
        counters: Arc<Counters>,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let limits = Limits {
            pipeline: pipeline.max(1),
            max_batch: max_batch.max(1),
            write_timeout,
        };
        tokio::spawn(run(raft, rx, limits, counters));
        Self { queue }
    }

    /// Queues `cmds` now (so they are ordered before anything proposed later) and
    /// returns the answer as a future, which may be dropped if it is not needed. The
    /// commands share one entry (a transaction's `Open` and the step that needs its
    /// record): applied together, in order, or not at all. The answer is the last
    /// command's.
    pub(super) fn submit_group(
        &self,
        cmds: Vec<Command>,
    ) -> impl std::future::Future<Output = Result<CommandResult, DriveError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.queue.send(Pending { cmds, reply });
        async move {
            sent.map_err(|_| DriveError::Unavailable("the node is shutting down".into()))?;
            answer.await.unwrap_or_else(|_| {
                Err(DriveError::Unavailable(
                    "the proposal was dropped (node shutting down?); retry".into(),
                ))
            })
        }
    }
}

/// Roughly the most bytes of commands one entry carries (one command may exceed it).
pub(super) const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// The batcher's bounds.
#[derive(Clone, Copy)]
struct Limits {
    /// Entries in flight at once.
    pipeline: usize,
    /// Most commands per entry.
    max_batch: usize,
    /// Longest wait for one entry before its slot is released.
    write_timeout: Duration,
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    limits: Limits,
    counters: Arc<Counters>,
) {
    let Limits {
        pipeline,
        max_batch,
        write_timeout,
    } = limits;
    let slots = Arc::new(Semaphore::new(pipeline));
    loop {
        // Take a pipeline slot first: while every slot is busy, commands queue up and
        // the next entry carries all of them.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        // Whatever queued meanwhile rides in this entry, up to its command and byte
        // bounds.
        let (mut bytes, mut count) = (0usize, 0usize);
        let batch = group::round(first, &mut rx, |p: &Pending| {
            bytes += p.cmds.iter().map(Command::approx_bytes).sum::<usize>();
            count += p.cmds.len();
            count < max_batch && bytes < MAX_ENTRY_BYTES
        });
        let counters = counters.clone();
        // Each caller's answer is the one to its group's last command.
        let mut commands = Vec::with_capacity(count);
        let mut replies = Vec::with_capacity(batch.len());
        for p in batch {
            commands.extend(p.cmds);
            replies.push((commands.len() - 1, p.reply));
        }
        let n = commands.len();
        Counters::inc(&counters.proposals);
        Counters::add(&counters.proposed_commands, n as u64);
        let started = std::time::Instant::now();
        let raft = raft.clone();
        let mut write = Box::pin(async move {
            failpoint::hit("coord.client_write").await;
            raft.client_write(Proposal { commands }).await
        });
        // Hand the entry to openraft here, in queue order: the first poll sends it to
        // the Raft core (then waits for the answer), so entries are appended in the
        // order their commands were queued, whichever of the tasks below runs first.
        // An entry appended out of order could apply a stale abort after a newer
        // round's commit marker (docs/design.md, rule 16).
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let early = match write.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(r) => Some(r),
            std::task::Poll::Pending => None,
        };
        tokio::spawn(async move {
            let result = match early {
                Some(r) => Ok(r),
                None => tokio::time::timeout(write_timeout, write).await,
            };
            drop(slot);
            Counters::add(
                &counters.proposal_micros,
                started.elapsed().as_micros() as u64,
            );
            let answers = match result {
                Ok(Ok(resp)) if resp.data.len() == n => Ok(resp.data),
                Ok(Ok(resp)) => Err(DriveError::Unavailable(format!(
                    "the state machine answered {} results for {n} commands",
                    resp.data.len()
                ))),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    Err(DriveError::NotLeader(f.leader_node))
                }
                Ok(Err(e)) => Err(DriveError::Unavailable(e.to_string())),
                Err(_) => {
                    Counters::inc(&counters.proposal_timeouts);
                    Err(DriveError::Unavailable(format!(
                        "the log did not commit the request within {write_timeout:?}; retry"
                    )))
                }
            };
            match answers {
                Ok(mut answers) => {
                    for (last, reply) in replies {
                        let _ = reply.send(Ok(std::mem::take(&mut answers[last])));
                    }
                }
                Err(e) => {
                    Counters::inc(&counters.proposal_failures);
                    for (_, reply) in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

//! Group commit at the Raft layer: concurrent proposals share log entries.
//!
//! openraft 0.9 appends and flushes one client write at a time on the leader, and
//! keeps one AppendEntries in flight per follower, so one command per entry caps the
//! cluster at one fsync round trip per transaction step. The batcher keeps at most
//! `pipeline` entries in flight; while they are being replicated, new commands queue,
//! and the next entry takes everything queued (up to `max_batch`). A lone client still
//! gets a one-command entry at once; under load, one fsync on each node serves many
//! transactions.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::DriveError;
use crate::metrics::Counters;
use crate::txn::{Command, CommandResult, Proposal};
use crate::types::typ::{ClientWriteError, Raft, RaftError};

/// A command waiting for its entry, and where its answer goes.
struct Pending {
    /// The command.
    cmd: Command,
    /// The state machine's answer, or why the entry failed.
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
        counters: Arc<Counters>,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx, pipeline.max(1), max_batch.max(1), counters));
        Self { queue }
    }

    /// Proposes `cmd` and waits until its entry is committed and applied.
    ///
    /// # Errors
    /// `NotLeader` with the hint, or `Unavailable` when the entry could not commit.
    pub(super) async fn propose(&self, cmd: Command) -> Result<CommandResult, DriveError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { cmd, reply })
            .map_err(|_| DriveError::Unavailable("the node is shutting down".into()))?;
        answer.await.unwrap_or_else(|_| {
            Err(DriveError::Unavailable(
                "the proposal was dropped (node shutting down?); retry".into(),
            ))
        })
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    pipeline: usize,
    max_batch: usize,
    counters: Arc<Counters>,
) {
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
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.cmd, p.reply)).unzip();
            let n = commands.len();
            Counters::inc(&counters.proposals);
            Counters::add(&counters.proposed_commands, n as u64);
            let started = std::time::Instant::now();
            let result = raft.client_write(Proposal { commands }).await;
            drop(slot);
            Counters::add(
                &counters.proposal_micros,
                started.elapsed().as_micros() as u64,
            );
            let answers = match result {
                Ok(resp) if resp.data.len() == n => Ok(resp.data),
                Ok(resp) => Err(DriveError::Unavailable(format!(
                    "the state machine answered {} results for {n} commands",
                    resp.data.len()
                ))),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    Err(DriveError::NotLeader(f.leader_node))
                }
                Err(e) => Err(DriveError::Unavailable(e.to_string())),
            };
            match answers {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    Counters::inc(&counters.proposal_failures);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

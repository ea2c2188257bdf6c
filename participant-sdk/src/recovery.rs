//! The participant-side loop that resolves in-doubt branches (docs/design.md, rule 7).
//!
//! A branch stays prepared until the coordinator tells the participant the outcome.
//! If that message is lost (coordinator failover, participant restart), the
//! participant pulls: every round, [`RecoveryLoop`] lists each resource's prepared
//! branches and asks the coordinator what happened to each. The coordinator never
//! answers ABORTED from memory alone (it logs the presumed abort first), so acting on
//! the answer is safe. Errors are logged and retried next round.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ratify_proto::pb;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::client::CoordinatorClient;
use crate::resource::Resource;
use crate::xid::Xid;

/// Shortest interval between rounds; guards against a zero interval spinning.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// What one recovery round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Branches committed because the coordinator said COMMITTED.
    pub committed: usize,
    /// Branches rolled back because the coordinator said ABORTED.
    pub rolled_back: usize,
    /// Branches left prepared because their transaction is still in progress.
    pub in_doubt: usize,
    /// Branches whose outcome the coordinator has forgotten: an operator must decide.
    pub needs_operator: usize,
    /// Branches or resources that could not be handled this round (retried next).
    pub errors: usize,
}

/// How often, at most, the loop logs what it resolved at INFO (each round is DEBUG).
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Rounds' reports added up between two INFO summaries: a busy participant resolves
/// branches every round, and one line per branch or per round would bury the lines a
/// person reads (docs/design.md, "Logs"). The first round that found anything (what
/// a restart left in doubt) is logged at once.
#[derive(Debug, Default)]
struct Summary {
    /// Added up since the last line.
    total: RecoveryReport,
    /// Rounds added up.
    rounds: usize,
    /// When the last line was written; none before the first.
    logged: Option<std::time::Instant>,
}

impl Summary {
    fn add(&mut self, r: &RecoveryReport) {
        self.total.committed += r.committed;
        self.total.rolled_back += r.rolled_back;
        self.total.needs_operator += r.needs_operator;
        self.total.errors += r.errors;
        // Still-in-doubt branches are a level, not a count of work: keep the latest.
        self.total.in_doubt = r.in_doubt;
        self.rounds += 1;
        let due = self.logged.is_none_or(|at| at.elapsed() >= SUMMARY_EVERY);
        let news = self.total.committed
            + self.total.rolled_back
            + self.total.needs_operator
            + self.total.errors
            > 0;
        if due && news {
            let t = &self.total;
            tracing::info!(
                rounds = self.rounds,
                committed = t.committed,
                rolled_back = t.rolled_back,
                in_doubt = t.in_doubt,
                needs_operator = t.needs_operator,
                errors = t.errors,
                "recovery summary"
            );
            *self = Self {
                logged: Some(std::time::Instant::now()),
                ..Self::default()
            };
        }
    }
}

/// What to do with a prepared branch, given its transaction's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Commit it.
    Commit,
    /// Roll it back.
    Rollback,
    /// Leave it prepared and ask again next round.
    Wait,
    /// Leave it prepared and alert an operator.
    NeedsOperator,
}

fn action_for(outcome: pb::Outcome) -> Action {
    match outcome {
        pb::Outcome::Committed => Action::Commit,
        pb::Outcome::Aborted => Action::Rollback,
        pb::Outcome::InProgress => Action::Wait,
        pb::Outcome::Forgotten => Action::NeedsOperator,
        // Outside the protocol: doing nothing is the only safe choice.
        pb::Outcome::Unspecified => Action::Wait,
    }
}

/// Resolves the in-doubt branches of a set of resources by asking the coordinator.
#[derive(Clone)]
pub struct RecoveryLoop {
    /// The resources to scan, by name (the name is only used in logs).
    resources: Vec<(String, Arc<dyn Resource>)>,
    /// Where outcomes are asked.
    client: CoordinatorClient,
}

impl std::fmt::Debug for RecoveryLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.resources.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("RecoveryLoop")
            .field("resources", &names)
            .finish_non_exhaustive()
    }
}

impl RecoveryLoop {
    /// A loop over `resources`, asking `client` for outcomes.
    pub fn new(resources: Vec<(String, Arc<dyn Resource>)>, client: CoordinatorClient) -> Self {
        Self { resources, client }
    }

    /// Runs a round every `interval` (the first one at once) until `shutdown`
    /// completes. A round in progress is finished first, so shutdown may wait up to
    /// one coordinator call deadline per resource.
    pub fn spawn(
        self,
        interval: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            tokio::pin!(shutdown);
            let mut ticker = tokio::time::interval(interval.max(MIN_INTERVAL));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut summary = Summary::default();
            loop {
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = ticker.tick() => {
                        let report = self.run_once().await;
                        if report != RecoveryReport::default() {
                            tracing::debug!(?report, "recovery round");
                        }
                        summary.add(&report);
                    }
                }
            }
            tracing::debug!("recovery loop stopped");
        })
    }

    /// One round over every resource. Never fails: problems are logged, counted in
    /// [`RecoveryReport::errors`] and retried next round.
    pub async fn run_once(&self) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        for (name, resource) in &self.resources {
            let span = tracing::info_span!("recovery", resource = %name);
            self.recover_resource(resource.as_ref(), &mut report)
                .instrument(span)
                .await;
        }
        report
    }

    async fn recover_resource(&self, resource: &dyn Resource, report: &mut RecoveryReport) {
        let xids = match resource.recover().await {
            Ok(xids) => xids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list prepared branches");
                report.errors += 1;
                return;
            }
        };
        for xid in xids {
            let outcome = match self.client.query_outcome(&xid).await {
                Ok(answer) => answer.outcome(),
                Err(e) if e.is_retryable() => {
                    // The coordinator is unreachable: asking about the other branches
                    // now would only wait out one deadline each.
                    tracing::warn!(%xid, error = %e, "coordinator unreachable; retrying next round");
                    report.errors += 1;
                    return;
                }
                Err(e) => {
                    tracing::error!(%xid, error = %e, "coordinator refused the outcome query");
                    report.errors += 1;
                    continue;
                }
            };
            resolve(resource, &xid, outcome, report)
                .instrument(tracing::info_span!("resolve", %xid))
                .await;
        }
    }
}

/// Applies the coordinator's `outcome` to one prepared branch.
async fn resolve(
    resource: &dyn Resource,
    xid: &Xid,
    outcome: pb::Outcome,
    report: &mut RecoveryReport,
) {
    crate::failpoint::hit("participant.recovery_resolve").await;
    match action_for(outcome) {
        Action::Commit => match resource.commit(xid, false).await {
            Ok(_) => {
                tracing::debug!("in-doubt branch committed");
                report.committed += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "commit of in-doubt branch failed");
                report.errors += 1;
            }
        },
        Action::Rollback => match resource.rollback(xid).await {
            Ok(_) => {
                tracing::debug!("in-doubt branch rolled back");
                report.rolled_back += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "rollback of in-doubt branch failed");
                report.errors += 1;
            }
        },
        Action::Wait => {
            if outcome == pb::Outcome::Unspecified {
                tracing::warn!("coordinator answered no outcome; asking again next round");
            }
            report.in_doubt += 1;
        }
        Action::NeedsOperator => {
            tracing::error!(
                "coordinator has forgotten this transaction's outcome; \
                 the branch stays prepared until an operator resolves it"
            );
            report.needs_operator += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{fake, ClientConfig};
    use crate::testing::Prepared;

    #[test]
    fn outcomes_map_to_actions() {
        assert_eq!(action_for(pb::Outcome::Committed), Action::Commit);
        assert_eq!(action_for(pb::Outcome::Aborted), Action::Rollback);
        assert_eq!(action_for(pb::Outcome::InProgress), Action::Wait);
        assert_eq!(action_for(pb::Outcome::Forgotten), Action::NeedsOperator);
        assert_eq!(action_for(pb::Outcome::Unspecified), Action::Wait);
    }

    #[tokio::test]
    async fn run_once_resolves_by_the_coordinators_answer() -> anyhow::Result<()> {
        let resource = Arc::new(Prepared::default());
        let gtrids: Vec<String> = (1..=5u32).map(|n| format!("{n:032x}")).collect();
        for g in &gtrids {
            resource.prepare(&Xid::new(g.as_str(), "1")?).await?;
        }
        // gtrids[4] is unknown to the coordinator: NOT_FOUND, counted as an error.
        let (leader, _) = fake::start(fake::leader(&[
            (gtrids[0].as_str(), pb::Outcome::Committed),
            (gtrids[1].as_str(), pb::Outcome::Aborted),
            (gtrids[2].as_str(), pb::Outcome::InProgress),
            (gtrids[3].as_str(), pb::Outcome::Forgotten),
        ]))
        .await?;
        let client = CoordinatorClient::new(vec![leader.to_string()], ClientConfig::default())?;
        let recovery = RecoveryLoop::new(vec![("noop".into(), resource.clone())], client);
        let report = recovery.run_once().await;
        assert_eq!(
            report,
            RecoveryReport {
                committed: 1,
                rolled_back: 1,
                in_doubt: 1,
                needs_operator: 1,
                errors: 1,
            }
        );
        let mut left: Vec<String> = resource
            .recover()
            .await?
            .iter()
            .map(|x| x.gtrid().to_owned())
            .collect();
        left.sort();
        assert_eq!(left, gtrids[2..].to_vec());
        Ok(())
    }

    #[tokio::test]
    async fn unreachable_coordinator_leaves_branches_prepared() -> anyhow::Result<()> {
        let resource = Arc::new(Prepared::default());
        resource
            .prepare(&Xid::new(format!("{:032x}", 1), "1")?)
            .await?;
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?;
        let config = ClientConfig {
            deadline: Duration::from_millis(200),
            ..ClientConfig::default()
        };
        let client = CoordinatorClient::new(vec![dead.to_string()], config)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = RecoveryLoop::new(vec![("noop".into(), resource.clone())], client).spawn(
            Duration::from_millis(50),
            async move {
                let _ = stopped.await;
            },
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop.send(());
        handle.await?;
        assert_eq!(resource.recover().await?.len(), 1);
        Ok(())
    }
}

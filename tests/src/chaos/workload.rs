//! The workload: concurrent clients, each running transfers that touch one, two or
//! three participants, recording every attempt in the history.
//!
//! Most transfers move `amount` between a Postgres account and an account-store
//! account (in either direction), and half of them also publish an event about it on
//! Kafka. A share of them ([`Targets::one_phase_share`]) move it between two accounts
//! of one application instead (Postgres or the store): a single branch, which the
//! coordinator commits in one phase. Either way the Postgres and store balances keep
//! their total, and every Postgres change has its ledger row.
//!
//! About one in twenty is rolled back on purpose, so the rollback path runs too. Half of
//! the one-phase commits are asked with a short deadline ([`IMPATIENT_DEADLINE`]);
//! with the participants answering some one-phase commits late, such a client often
//! gets no answer and then calls Rollback, as an application's error path does: what
//! Rollback answers is what it was told. A client that gets no answer at all keeps
//! asking (GetTransaction, then the same call again) for a while.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratify_participant_sdk::client::{BeginOptions, CoordinatorClient, Decision, Outcome};
use ratify_proto::pb;
use serde_json::json;
use tokio::sync::watch;

use super::checker::Recorded;
use super::history::{BranchRecord, History, Told, TxnRecord};
use super::world::{app_call, AppKind};

/// Where the clients send work, and its mix.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Per application: (participant endpoint, work API address).
    pub apps: Vec<(AppKind, String, String)>,
    /// Accounts per application.
    pub accounts: i64,
    /// Share of transfers inside one application (single branch, one phase).
    pub one_phase_share: f64,
}

impl Targets {
    fn get(&self, kind: AppKind) -> Option<&(AppKind, String, String)> {
        self.apps.iter().find(|(k, _, _)| *k == kind)
    }
}

/// The coordinator clients a workload client uses.
#[derive(Clone)]
pub struct Clients {
    /// With the default deadlines: every call but the impatient commits.
    pub patient: CoordinatorClient,
    /// With [`IMPATIENT_DEADLINE`] for a whole call: half of the one-phase commits.
    pub impatient: CoordinatorClient,
}

/// Deadline of an impatient one-phase commit.
pub const IMPATIENT_DEADLINE: Duration = Duration::from_millis(300);

/// [`TxnRecord::asked`] of a commit that got no answer within [`IMPATIENT_DEADLINE`],
/// after which the client called Rollback.
pub const COMMIT_GAVE_UP: &str = "commit_timeout_rollback";

/// Longest a branch's work may take (a row held by a transaction in doubt makes
/// Postgres wait until its `lock_timeout`).
const WORK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client that got no answer keeps asking.
const ASK_AGAIN_FOR: Duration = Duration::from_secs(20);

/// One branch's work: `delta` to `account`, and with `counter`, `-delta` to that other
/// account of the same application (a transfer inside one branch).
#[derive(Debug, Clone, Copy)]
struct Work {
    /// The application.
    kind: AppKind,
    /// The account changed by `delta`.
    account: i64,
    /// The change.
    delta: i64,
    /// The account changed by `-delta`, if any.
    counter: Option<i64>,
}

/// The final call a client makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    /// Commit.
    Commit,
    /// Rollback.
    Rollback,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Commit => "commit",
            Verb::Rollback => "rollback",
        }
    }

    async fn call(self, client: &CoordinatorClient, gtrid: &str) -> anyhow::Result<Decision> {
        Ok(match self {
            Verb::Commit => client.commit(gtrid).await?,
            Verb::Rollback => client.rollback(gtrid).await?,
        })
    }
}

/// Draws the next transfer's branches.
fn draw_work(rng: &mut StdRng, targets: &Targets) -> Vec<Work> {
    let amount: i64 = rng.gen_range(1..=50);
    let sign = if rng.gen_bool(0.5) { 1 } else { -1 };
    let account = rng.gen_range(0..targets.accounts);
    if targets.accounts >= 2 && rng.gen_bool(targets.one_phase_share.clamp(0.0, 1.0)) {
        let kind = if rng.gen_bool(0.5) {
            AppKind::Pg
        } else {
            AppKind::Store
        };
        // Another account of the same application.
        let other = (account + rng.gen_range(1..targets.accounts)) % targets.accounts;
        return vec![Work {
            kind,
            account,
            delta: sign * amount,
            counter: Some(other),
        }];
    }
    let with_kafka = targets.get(AppKind::Kafka).is_some() && rng.gen_bool(0.5);
    [
        Some(Work {
            kind: AppKind::Pg,
            account,
            delta: sign * amount,
            counter: None,
        }),
        Some(Work {
            kind: AppKind::Store,
            account: rng.gen_range(0..targets.accounts),
            delta: -sign * amount,
            counter: None,
        }),
        with_kafka.then_some(Work {
            kind: AppKind::Kafka,
            account: 0,
            delta: amount,
            counter: None,
        }),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Runs client `n` until `stop` is set.
pub async fn client_loop(
    n: usize,
    seed: u64,
    clients: Clients,
    targets: Targets,
    history: History,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(n as u64 * 7919));
    while !*stop.borrow_and_update() {
        let work = draw_work(&mut rng, &targets);
        let rollback_on_purpose = rng.gen_bool(0.05);
        let impatient = work.len() == 1 && rng.gen_bool(0.5);
        let record = transfer(
            n,
            &clients,
            &targets,
            &history,
            &work,
            rollback_on_purpose,
            impatient,
        )
        .await;
        // No leader, or an application down: do not spin on failures.
        let pause = match (record.told, record.asked.as_str()) {
            (Told::BeginFailed, _) => Some(Duration::from_millis(100)),
            (_, "rollback") if !rollback_on_purpose => Some(Duration::from_millis(20)),
            _ => None,
        };
        history.txn(record);
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
}

async fn transfer(
    n: usize,
    clients: &Clients,
    targets: &Targets,
    history: &History,
    work: &[Work],
    rollback_on_purpose: bool,
    impatient: bool,
) -> TxnRecord {
    let client = &clients.patient;
    let mut record = TxnRecord {
        client: n,
        gtrid: String::new(),
        branches: Vec::new(),
        asked: Verb::Commit.name().into(),
        one_phase: work.len() == 1,
        amount: work.first().map_or(0, |w| w.delta.abs()),
        told: Told::BeginFailed,
        told_by: String::new(),
        detail: String::new(),
        start_ms: history.now_ms(),
        end_ms: 0,
    };
    let mut branches = Vec::new();
    for w in work {
        if let Some((_, endpoint, _)) = targets.get(w.kind) {
            branches.push((endpoint.clone(), w.kind.resource().to_string()));
        }
    }
    let begun = match client
        .begin(BeginOptions {
            timeout: Duration::from_secs(20),
            branches,
            ..Default::default()
        })
        .await
    {
        Ok(b) => b,
        Err(e) => {
            record.detail = e.to_string();
            record.end_ms = history.now_ms();
            return record;
        }
    };
    let gtrid = begun.gtrid.clone();
    record.gtrid = gtrid.clone();
    record.branches = work
        .iter()
        .zip(&begun.branches)
        .map(|(w, b)| BranchRecord {
            app: w.kind.name().into(),
            xid: b.xid.render(),
        })
        .collect();
    let calls = work.iter().zip(&begun.branches).map(|(w, b)| {
        let addr = targets.get(w.kind).map(|t| t.2.clone()).unwrap_or_default();
        let mut request =
            json!({"op": "work", "xid": b.xid.render(), "account": w.account, "delta": w.delta});
        if let Some(c) = w.counter {
            request["counter"] = json!(c);
        }
        async move { app_call(&addr, &request, WORK_TIMEOUT).await }
    });
    let failures: Vec<String> = futures::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    let mut verb = Verb::Commit;
    let mut answer = if !failures.is_empty() || rollback_on_purpose {
        verb = Verb::Rollback;
        record.asked = verb.name().into();
        record.detail = failures.join("; ");
        verb.call(client, &gtrid).await
    } else if impatient {
        match Verb::Commit.call(&clients.impatient, &gtrid).await {
            Ok(d) => Ok(d),
            // No answer in time: the error path an application takes.
            Err(e) => {
                verb = Verb::Rollback;
                record.asked = COMMIT_GAVE_UP.into();
                record.detail = format!("commit: {e:#}");
                verb.call(client, &gtrid).await
            }
        }
    } else {
        verb.call(client, &gtrid).await
    }
    .map(|d| told_by(verb, &d));
    if let Err(e) = &answer {
        record.detail = format!("{}; {}: {e:#}", record.detail, verb.name());
        answer = ask_again(client, &gtrid, verb).await;
    }
    record.end_ms = history.now_ms();
    match answer {
        Ok((committed, by, why)) => {
            record.told = if committed {
                Told::Committed
            } else {
                Told::Aborted
            };
            record.told_by = by.into();
            if record.detail.is_empty() {
                record.detail = why;
            }
        }
        // Still no answer: the outcome is whatever the coordinator recorded, and the
        // checker reads it there.
        Err(e) => {
            record.told = Told::Unknown;
            record.detail = format!("{}; asked again: {e:#}", record.detail);
        }
    }
    record
}

/// What a client was told: (committed, the call that answered, why).
type Answer = (bool, &'static str, String);

/// The answer `verb` gave.
fn told_by(verb: Verb, d: &Decision) -> Answer {
    (
        d.outcome == Outcome::Committed,
        verb.name(),
        format!("{:?} {}", d.reason, d.detail),
    )
}

/// What a client learns by asking again after `verb` got no answer: GetTransaction
/// (answered once the transaction is decided), then `verb` again, until one answers or
/// [`ASK_AGAIN_FOR`] passes.
async fn ask_again(client: &CoordinatorClient, gtrid: &str, verb: Verb) -> anyhow::Result<Answer> {
    let asking = async {
        loop {
            if let Ok(t) = client.get(gtrid).await {
                if let Recorded::Decided { committed, .. } = Recorded::of(&t) {
                    let reason = pb::Reason::try_from(t.reason).unwrap_or(pb::Reason::Unspecified);
                    return (committed, "get", format!("{reason:?} {}", t.detail));
                }
            }
            if let Ok(d) = verb.call(client, gtrid).await {
                return told_by(verb, &d);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(ASK_AGAIN_FOR, asking)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {ASK_AGAIN_FOR:?}"))
}

/// An operator at work during the run (docs/design.md, rule 17): every few hundred
/// ms it picks a live transaction at random and aborts it (three times in four) or
/// commits it, as a person resolving what looks stuck would. Whatever the answer
/// (changed, already decided, refused), the checker then holds every client's answer
/// and every participant to the recorded outcome. Results go to the history as
/// nemesis records of action `operator`, kind `<action>_<result>`.
pub async fn operator_loop(
    seed: u64,
    client: CoordinatorClient,
    history: History,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6f70_6572);
    while !*stop.borrow_and_update() {
        let pause = Duration::from_millis(rng.gen_range(200..800));
        tokio::select! {
            _ = stop.changed() => break,
            () = tokio::time::sleep(pause) => {}
        }
        let Ok(page) = client.list(None, 200, "").await else {
            continue;
        };
        if page.transactions.is_empty() {
            continue;
        }
        let t = &page.transactions[rng.gen_range(0..page.transactions.len())];
        let (action, name) = if rng.gen_bool(0.75) {
            (pb::ResolveAction::Abort, "abort")
        } else {
            (pb::ResolveAction::Commit, "commit")
        };
        let (result, detail) = match client
            .resolve(&t.gtrid, action, "chaos-operator", "chaos run")
            .await
        {
            Ok(r) if r.changed => ("changed", String::new()),
            Ok(_) => ("unchanged", String::new()),
            Err(e) => ("refused", e.to_string()),
        };
        history.nemesis("operator", &format!("{name}_{result}"), &t.gtrid, &detail);
    }
}

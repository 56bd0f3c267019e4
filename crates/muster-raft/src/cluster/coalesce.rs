//! Calls a follower makes to the leader on its clients' behalf, coalesced.
//!
//! A follower forwards every write and every lease renewal to the leader.
//! One call each cost a follower several times the CPU of the same request
//! on the leader (BENCHMARKS.md: a renewal 5x, a write 1.6x). So the
//! requests that arrive while calls are in flight go out together in the
//! next one: at most [`IN_FLIGHT`] calls of a kind at once, each with up to
//! [`Calls::MAX`] parts. A lone request is not delayed; under load the calls
//! grow instead of multiplying. Each part keeps its own answer: a call is
//! only a transport, what it carries is answered part by part.
//!
//! Two kinds use it: [`Renew`] (lease ids; idempotent, so a failed call
//! fails each renewal in it, to be tried again) and [`Forward`] (commands,
//! each proposed on its own by the leader, where they meet in one log entry
//! anyway; a call sent without an answer is never sent again, as for one
//! forwarded write).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use muster_catalog::Command;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::FORWARD_TIMEOUT;
use super::client::{CallError, Http};
use super::wire;
use crate::Renewal;

/// Calls of one kind to the leader in flight at once; requests arriving
/// meanwhile wait for the next call.
const IN_FLIGHT: usize = 2;

/// One kind of coalesced call.
pub(crate) trait Calls: Send + Sync + 'static {
    /// One caller's part of a call.
    type Part: Send + 'static;
    /// What that caller gets back.
    type Answer: Send + 'static;
    /// Most parts (as counted by [`Calls::size`]) in one call.
    const MAX: usize;
    /// How much of a call `part` takes.
    fn size(part: &Self::Part) -> usize;
    /// Sends one call with `parts` to `leader` at `addr`; one answer per
    /// part, in order.
    fn call(
        http: Http,
        leader: u64,
        addr: String,
        parts: Vec<Self::Part>,
    ) -> impl Future<Output = Vec<Self::Answer>> + Send;
}

struct Job<C: Calls> {
    leader: u64,
    addr: String,
    part: C::Part,
    reply: oneshot::Sender<C::Answer>,
}

/// How many requests were forwarded, in how many calls.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) parts: AtomicU64,
    pub(crate) calls: AtomicU64,
}

/// The follower's side of one kind: a queue drained by one task.
pub(crate) struct Coalescer<C: Calls> {
    tx: mpsc::UnboundedSender<Job<C>>,
    pub(crate) stats: Arc<Stats>,
}

impl<C: Calls> Coalescer<C> {
    /// Starts the task that sends the calls; it ends with the last sender.
    pub(crate) fn start(http: Http) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        tokio::spawn(drive::<C>(http, rx, Arc::clone(&stats)));
        Coalescer { tx, stats }
    }

    /// Sends `part` to `leader` at `addr` in a call shared with the parts
    /// queued meanwhile. `None` only while the node shuts down.
    pub(crate) async fn send(&self, leader: u64, addr: &str, part: C::Part) -> Option<C::Answer> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                leader,
                addr: addr.to_string(),
                part,
                reply,
            })
            .ok()?;
        answer.await.ok()
    }
}

async fn drive<C: Calls>(http: Http, mut rx: mpsc::UnboundedReceiver<Job<C>>, stats: Arc<Stats>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut size = C::size(&first.part);
        let mut jobs = vec![first];
        while size < C::MAX {
            match rx.try_recv() {
                Ok(job) => {
                    size += C::size(&job.part);
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Nearly always one leader; during a change, one call each.
        let mut by_leader: BTreeMap<(u64, String), Vec<Job<C>>> = BTreeMap::new();
        for job in jobs {
            by_leader
                .entry((job.leader, job.addr.clone()))
                .or_default()
                .push(job);
        }
        let permit = Arc::new(permit);
        for ((leader, addr), jobs) in by_leader {
            let (http, stats, permit) = (http.clone(), Arc::clone(&stats), Arc::clone(&permit));
            tokio::spawn(async move {
                let _permit = permit;
                stats.calls.fetch_add(1, Ordering::Relaxed);
                let (parts, replies): (Vec<_>, Vec<_>) =
                    jobs.into_iter().map(|j| (j.part, j.reply)).unzip();
                let size: usize = parts.iter().map(C::size).sum();
                stats.parts.fetch_add(size as u64, Ordering::Relaxed);
                let answers = C::call(http, leader, addr, parts).await;
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            });
        }
    }
}

/// Lease renewals: a part is the ids of one renewal request; its answer
/// one [`Renewal`] per id, or `None` when the call failed or the receiver
/// no longer leads (try again).
pub(crate) struct Renew;

impl Calls for Renew {
    type Part = Vec<u64>;
    type Answer = Option<Vec<Renewal>>;
    const MAX: usize = 4096;

    fn size(part: &Vec<u64>) -> usize {
        part.len()
    }

    async fn call(
        http: Http,
        leader: u64,
        addr: String,
        parts: Vec<Vec<u64>>,
    ) -> Vec<Self::Answer> {
        let ids: Vec<u64> = parts.iter().flatten().copied().collect();
        let answers = match wire::encode(&wire::RenewRequest { ids: ids.clone() }) {
            Ok(body) => {
                let reply: Result<wire::RenewReply, _> = http
                    .call(leader, &addr, "renew", body, FORWARD_TIMEOUT)
                    .await;
                match reply {
                    Ok(wire::RenewReply::Renewed(out)) if out.len() == ids.len() => Some(out),
                    Ok(wire::RenewReply::Renewed(out)) => {
                        tracing::warn!(
                            leader,
                            asked = ids.len(),
                            answered = out.len(),
                            "the leader answered a different number of renewals"
                        );
                        None
                    }
                    Ok(wire::RenewReply::NotLeader { .. }) => None,
                    Err(e) => {
                        tracing::debug!(leader, error = %e, "forwarded renewals failed");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode renewals");
                None
            }
        };
        let mut answers = answers.map(Vec::into_iter);
        parts
            .iter()
            .map(|p| answers.as_mut().map(|a| a.by_ref().take(p.len()).collect()))
            .collect()
    }
}

/// What became of one forwarded write.
pub(crate) enum Forwarded {
    /// The leader's answer.
    Answer(wire::ForwardReply),
    /// The call certainly did not reach the leader: send it again.
    NotSent,
    /// Sent, without an answer: it may have been applied, so it is not
    /// sent again.
    Lost(String),
    /// Refused, not handled: this node was removed from the cluster.
    Removed,
}

/// Forwarded writes: a part is one command, proposed on its own by the
/// leader.
pub(crate) struct Forward;

impl Calls for Forward {
    type Part = Command;
    type Answer = Forwarded;
    const MAX: usize = 256;

    fn size(_: &Command) -> usize {
        1
    }

    async fn call(http: Http, leader: u64, addr: String, parts: Vec<Command>) -> Vec<Forwarded> {
        let n = parts.len();
        let body = match wire::encode(&wire::ForwardRequest(
            parts.into_iter().map(wire::Forwarded).collect(),
        )) {
            Ok(b) => b,
            Err(e) => {
                return (0..n)
                    .map(|_| Forwarded::Answer(wire::ForwardReply::Failed(e.clone())))
                    .collect();
            }
        };
        let reply: Result<Vec<wire::ForwardReply>, _> = http
            .call(leader, &addr, "forward", body, FORWARD_TIMEOUT)
            .await;
        match reply {
            Ok(answers) if answers.len() == n => {
                answers.into_iter().map(Forwarded::Answer).collect()
            }
            Ok(answers) => {
                let why = format!(
                    "the leader answered {} of {n} forwarded writes",
                    answers.len()
                );
                tracing::warn!(leader, "{why}");
                (0..n).map(|_| Forwarded::Lost(why.clone())).collect()
            }
            Err(CallError::Unreachable { .. }) => (0..n).map(|_| Forwarded::NotSent).collect(),
            Err(CallError::Removed { .. }) => (0..n).map(|_| Forwarded::Removed).collect(),
            Err(e) => {
                let why = e.to_string();
                (0..n).map(|_| Forwarded::Lost(why.clone())).collect()
            }
        }
    }
}

//! Lease renewals a follower forwards to the leader, coalesced.
//!
//! A follower takes heartbeats for leases that live in the leader's memory,
//! so each one is a call to the leader. One call per heartbeat cost a
//! follower five times the CPU of the same heartbeat on the leader
//! (BENCHMARKS.md). The renew route takes a list of lease ids, so the
//! renewals that arrive while calls are in flight go out together in the
//! next one: at most [`IN_FLIGHT`] calls at once, each with up to
//! [`MAX_IDS`] ids. A lone heartbeat is not delayed; under load the calls
//! grow instead of multiplying. Renewing is idempotent, so a failed call
//! fails every renewal in it and each is simply tried again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::FORWARD_TIMEOUT;
use super::client::Http;
use super::wire;
use crate::Renewal;

/// Calls to the leader in flight at once; renewals arriving meanwhile wait
/// for the next call.
const IN_FLIGHT: usize = 2;
/// Most lease ids in one call.
const MAX_IDS: usize = 4096;

/// One caller's renewals.
struct Job {
    leader: u64,
    addr: String,
    ids: Vec<u64>,
    /// One answer per id, or `None`: the call failed or the receiver no
    /// longer leads (ask again).
    reply: oneshot::Sender<Option<Vec<Renewal>>>,
}

/// How many renewals were forwarded, in how many calls.
#[derive(Debug, Default)]
pub(crate) struct RenewStats {
    pub(crate) renewals: AtomicU64,
    pub(crate) calls: AtomicU64,
}

/// The follower's side: a queue drained by one task.
pub(crate) struct Renewals {
    tx: mpsc::UnboundedSender<Job>,
    pub(crate) stats: Arc<RenewStats>,
}

impl Renewals {
    /// Starts the task that sends the calls; it ends with the last sender.
    pub(crate) fn start(http: Http) -> Renewals {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(RenewStats::default());
        tokio::spawn(drive(http, rx, Arc::clone(&stats)));
        Renewals { tx, stats }
    }

    /// Renews `ids` on `leader` at `addr`, in a call shared with the
    /// renewals queued meanwhile. `None`: try again (see [`Job::reply`]).
    pub(crate) async fn renew(&self, leader: u64, addr: &str, ids: &[u64]) -> Option<Vec<Renewal>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                leader,
                addr: addr.to_string(),
                ids: ids.to_vec(),
                reply,
            })
            .ok()?;
        answer.await.ok().flatten()
    }
}

async fn drive(http: Http, mut rx: mpsc::UnboundedReceiver<Job>, stats: Arc<RenewStats>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut count = first.ids.len();
        let mut jobs = vec![first];
        while count < MAX_IDS {
            match rx.try_recv() {
                Ok(job) => {
                    count += job.ids.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Nearly always one leader; during a change, one call each.
        let mut by_leader: BTreeMap<(u64, String), Vec<Job>> = BTreeMap::new();
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
                send(&http, leader, &addr, jobs, &stats).await;
            });
        }
    }
}

/// One call for `jobs`, its answer split among them.
async fn send(http: &Http, leader: u64, addr: &str, jobs: Vec<Job>, stats: &RenewStats) {
    let ids: Vec<u64> = jobs.iter().flat_map(|j| j.ids.iter().copied()).collect();
    stats.calls.fetch_add(1, Ordering::Relaxed);
    stats
        .renewals
        .fetch_add(ids.len() as u64, Ordering::Relaxed);
    let answers = match wire::encode(&wire::RenewRequest { ids: ids.clone() }) {
        Ok(body) => {
            let reply: Result<wire::RenewReply, _> = http
                .call(leader, addr, "renew", body, FORWARD_TIMEOUT)
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
    for job in jobs {
        let mine = answers
            .as_mut()
            .map(|a| a.by_ref().take(job.ids.len()).collect());
        let _ = job.reply.send(mine);
    }
}

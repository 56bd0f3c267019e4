//! Group commit of proposals: concurrent proposals share one log entry.
//!
//! openraft appends each `client_write` as its own entry and awaits the
//! fsync of every append before it handles the next message, so one entry
//! per proposal means one fsync per proposal, one after the other. The
//! batcher instead takes every proposal queued so far (up to a cap), sends
//! them as the commands of one entry, and hands each proposer its own result.
//! A lone proposal goes out at once as a batch of one; proposals arriving
//! while a batch is being written form the next batch, so batches grow with
//! load and no delay is ever added.
//!
//! The batcher also asks openraft for a snapshot when [`SnapshotPace`]
//! says one is due: it sees every batch go out, and openraft's own policy
//! counts entries, not the commands inside them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use muster_catalog::Command;
use openraft::error::{ClientWriteError, Fatal};
use tokio::sync::{mpsc, oneshot, watch};

use crate::state_machine::SnapshotPace;
use crate::types::{Raft, Request};
use crate::{Applied, ProposeError};

/// At most this many commands in one entry.
pub(crate) const MAX_BATCH_COMMANDS: usize = 4096;
/// A batch stops growing once its commands' estimated encoded size reaches
/// this (a single larger command still goes out, alone).
pub(crate) const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Proposals waiting for the batcher; beyond it `propose` waits to queue.
pub(crate) const QUEUE_CAPACITY: usize = 4 * MAX_BATCH_COMMANDS;

/// The answer to one proposal.
pub(crate) type Reply = oneshot::Sender<Result<Applied, ProposeError>>;

/// One queued proposal.
pub(crate) struct Proposal {
    pub(crate) command: Command,
    pub(crate) reply: Reply,
}

impl Proposal {
    pub(crate) fn new(
        command: Command,
    ) -> (Proposal, oneshot::Receiver<Result<Applied, ProposeError>>) {
        let (reply, rx) = oneshot::channel();
        (Proposal { command, reply }, rx)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The estimated encoded size of an instance's variable-length fields (id,
/// address, tags, metadata, version, zone): the part both the batcher's
/// estimate of a registration and a restore's estimate of a stored
/// instance ([`crate::backup`]) count the same way.
pub(crate) fn instance_fields_bytes<'a>(
    id: &str,
    address: &str,
    tags: impl Iterator<Item = &'a str>,
    meta: impl Iterator<Item = (&'a str, &'a str)>,
    version: Option<&str>,
    zone: Option<&str>,
) -> usize {
    id.len()
        + address.len()
        + tags.map(|t| t.len() + 4).sum::<usize>()
        + meta.map(|(k, v)| k.len() + v.len() + 6).sum::<usize>()
        + version.map_or(0, str::len)
        + zone.map_or(0, str::len)
}

/// A cheap upper-bound-ish estimate of a command's encoded size, to keep
/// entries around [`MAX_BATCH_BYTES`] without encoding anything twice.
pub(crate) fn approx_size(cmd: &Command) -> usize {
    const FRAME: usize = 96;
    const PER_CHECK: usize = 512;
    match cmd {
        Command::Register {
            namespace,
            service,
            instance: i,
            ..
        } => {
            FRAME
                + namespace.len()
                + service.len()
                + instance_fields_bytes(
                    &i.id,
                    &i.address,
                    i.tags.iter().map(String::as_str),
                    i.meta.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    i.version.as_deref(),
                    i.zone.as_deref(),
                )
                + i.checks.len() * PER_CHECK
        }
        Command::Deregister {
            namespace,
            service,
            id,
        } => FRAME + namespace.len() + service.len() + id.len(),
        Command::CreateLease { .. } | Command::RevokeLease { .. } => FRAME,
        Command::AclBootstrap { token } | Command::AclSetToken { token } => {
            FRAME
                + 64
                + token.accessor.len()
                + token.description.len()
                + token.policies.iter().map(|p| p.len() + 4).sum::<usize>()
        }
        Command::AclDeleteToken { accessor: name } | Command::AclDeletePolicy { name } => {
            FRAME + name.len()
        }
        Command::AclSetPolicy { policy } => {
            FRAME
                + policy.description.len()
                + policy
                    .services
                    .iter()
                    .map(|r| r.namespace.len() + r.service.len() + 48)
                    .sum::<usize>()
        }
        Command::CheckStatus {
            namespace,
            service,
            id,
            check,
            output,
            ..
        } => FRAME + namespace.len() + service.len() + id.len() + check.len() + output.len() * 2,
        Command::Maintenance {
            namespace,
            service,
            id,
            reason,
        } => {
            FRAME
                + namespace.len()
                + service.len()
                + id.len()
                + reason.as_ref().map_or(0, String::len)
        }
        Command::PutCheck {
            namespace,
            service,
            id,
            ..
        } => FRAME + namespace.len() + service.len() + id.len() + PER_CHECK,
        Command::RemoveCheck {
            namespace,
            service,
            id,
            check,
        } => FRAME + namespace.len() + service.len() + id.len() + check.len(),
        Command::RestoreBegin { .. }
        | Command::RestoreCommit { .. }
        | Command::RestoreAbort { .. } => FRAME,
        // A chunk is sized by its sender ([`crate::backup`]); roughly.
        Command::RestoreStage {
            leases, instances, ..
        } => FRAME + leases.len() * 128 + instances.len() * 320,
        Command::ExpireLeases { ids } | Command::PreserveLeases { ids, .. } => {
            FRAME + ids.len() * 21
        }
        Command::RetireNode { .. } => FRAME,
    }
}

/// Proposals that go out as one entry.
struct Batch {
    commands: Vec<Command>,
    replies: Vec<Reply>,
    bytes: usize,
}

impl Batch {
    fn new(first: Proposal) -> Batch {
        let mut batch = Batch {
            commands: Vec::new(),
            replies: Vec::new(),
            bytes: 0,
        };
        batch.push(first);
        batch
    }

    fn push(&mut self, p: Proposal) {
        self.bytes += approx_size(&p.command);
        self.commands.push(p.command);
        self.replies.push(p.reply);
    }

    fn is_full(&self) -> bool {
        self.commands.len() >= MAX_BATCH_COMMANDS || self.bytes >= MAX_BATCH_BYTES
    }

    /// Whether `p` may join without taking the batch past its byte cap.
    fn fits(&self, p: &Proposal) -> bool {
        self.bytes + approx_size(&p.command) <= MAX_BATCH_BYTES
    }

    /// Writes the batch as one entry and answers every proposer.
    async fn write(self, raft: &Raft) {
        use openraft::error::RaftError as OpenraftError;

        let Batch {
            commands, replies, ..
        } = self;
        let n = commands.len();
        let req = Request {
            now_ms: now_ms(),
            commands: commands.into(),
        };
        let (id, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.id, m.current_term)
        };
        let written = raft.client_write(req);
        tokio::pin!(written);
        let answer = tokio::select! {
            r = &mut written => Some(r),
            () = leadership_lost(raft, id, term) => {
                tokio::time::timeout(UNANSWERED_GRACE, &mut written).await.ok()
            }
        };
        let Some(answer) = answer else {
            tracing::warn!(
                term,
                commands = n,
                "a batch proposed as leader was never answered after leadership moved on; \
                 its writes may or may not have been applied"
            );
            for reply in replies {
                let _ = reply.send(Err(ProposeError::OutcomeUnknown { leader: id }));
            }
            return;
        };
        let err = match answer {
            Ok(resp) if resp.data.0.len() == n => {
                let index = resp.log_id.index;
                for (reply, result) in replies.into_iter().zip(resp.data.0) {
                    let _ = reply.send(Ok(Applied { index, result }));
                }
                return;
            }
            Ok(resp) => ProposeError::Fatal(format!(
                "entry {} applied {} results for {n} commands",
                resp.log_id,
                resp.data.0.len()
            )),
            Err(OpenraftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                ProposeError::NotLeader {
                    leader: f.leader_id,
                }
            }
            Err(OpenraftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                ProposeError::Fatal(e.to_string())
            }
            Err(OpenraftError::Fatal(Fatal::Stopped)) => ProposeError::ShuttingDown,
            Err(OpenraftError::Fatal(e)) => ProposeError::Fatal(e.to_string()),
        };
        for reply in replies {
            let _ = reply.send(Err(err.clone()));
        }
    }
}

/// How long a batch's write may go unanswered once this node stopped
/// leading the term it was proposed in.
///
/// openraft answers a proposal when its entry is applied here, or with
/// "forward to leader" when a new leader's log truncates it. An entry
/// that leaves this node's log any other way (a snapshot installed from a
/// new leader covers its index) is never answered; the batcher, one batch
/// at a time, would wait for ever, and every later write on this node
/// with it (found by a partition seed: a former leader elected again
/// answered nothing). A legitimate answer after a change of leader comes
/// within a heartbeat or two; after this the outcome is reported unknown.
const UNANSWERED_GRACE: Duration = Duration::from_secs(2);

/// Resolves once node `id` no longer leads term `term`.
async fn leadership_lost(raft: &Raft, id: u64, term: u64) {
    let mut metrics = raft.metrics();
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.current_term != term || m.current_leader != Some(id) {
                return;
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Asks openraft for a snapshot when [`SnapshotPace`] says one is due,
/// once per build: a trigger that arrives while a build is under way is
/// ignored by openraft, so it is only repeated after another threshold's
/// worth of commands without a new build having begun.
#[derive(Default)]
struct SnapshotTrigger {
    /// `(pace.builds(), pace.commands())` when the last trigger was sent.
    sent: Option<(u64, u64)>,
}

impl SnapshotTrigger {
    async fn check(&mut self, raft: &Raft, pace: &SnapshotPace) {
        let (commands, threshold) = (pace.commands(), pace.threshold());
        if commands < threshold {
            return;
        }
        let builds = pace.builds();
        if let Some((sent_builds, sent_commands)) = self.sent
            && sent_builds == builds
            && commands < sent_commands.saturating_add(threshold)
        {
            return;
        }
        self.sent = Some((builds, commands));
        tracing::debug!(commands, threshold, "snapshot due by commands");
        if let Err(e) = raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "could not trigger a snapshot");
        }
    }
}

/// Takes queued proposals and writes them in batches, one at a time, until
/// `stop` turns `true` (or its sender or every proposal sender is gone).
/// Then refuses what is still queued with [`ProposeError::ShuttingDown`].
///
/// One batch in flight is the fastest: openraft handles appends one after
/// the other anyway, and proposals that arrive meanwhile make the next batch
/// bigger, so each fsync and each entry's fixed costs are shared by more
/// commands (measured: two or four in flight gave 10-40% less throughput).
pub(crate) async fn run(
    raft: Raft,
    pace: Arc<SnapshotPace>,
    mut rx: mpsc::Receiver<Proposal>,
    mut stop: watch::Receiver<bool>,
) {
    // A proposal that did not fit the last batch: the first of the next.
    let mut carry: Option<Proposal> = None;
    let mut trigger = SnapshotTrigger::default();
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => break,
                },
            },
        };
        // Everything queued now, without waiting for more.
        let mut batch = Batch::new(first);
        while !batch.is_full() {
            match rx.try_recv() {
                Ok(p) if batch.fits(&p) => batch.push(p),
                Ok(p) => {
                    carry = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        batch.write(&raft).await;
        trigger.check(&raft, &pace).await;
        if *stop.borrow() {
            break;
        }
    }
    // No proposal gets in after `close`; refuse those already queued.
    rx.close();
    if let Some(p) = carry {
        let _ = p.reply.send(Err(ProposeError::ShuttingDown));
    }
    while let Ok(p) = rx.try_recv() {
        let _ = p.reply.send(Err(ProposeError::ShuttingDown));
    }
}

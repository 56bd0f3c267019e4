//! Dynamic membership: add a node (as a learner, promoted once caught up),
//! remove one (its id retired for good), and move leadership.
//!
//! Every change is made by the leader; any node takes the request and
//! forwards it there ([`Shared::change_members`]). Each change is safe to
//! send again: adding a member already there at the same address, and
//! removing one already removed, succeed without doing anything.
//!
//! # Retired ids
//!
//! Removing a node first commits [`Command::RetireNode`] through the log,
//! so every node (and every snapshot) holds the set of removed ids; an add
//! of a retired id is refused. A removed node that is started again must
//! get a new id and an empty data directory.
//!
//! # Leadership transfer
//!
//! openraft 0.9 has no leadership transfer. The leader makes one: it waits
//! until the target holds its whole log, holds back new proposals, stops
//! its heartbeats, and asks the target to call an election (`elect`) until
//! one is won. Voters refuse votes for as long as they heard from a leader
//! within the election timeout (openraft's leader lease), so this takes
//! about that long (0.8 s); the target, up to date and asking first, wins
//! it unless another follower's own timer fires in the same instant (then
//! the transfer to a named node fails with "ask again", and that node now
//! follows another leader). Held writes then go to the new leader. If no
//! election is won in time, the old leader resumes its heartbeats.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::PoisonError;
use std::time::Duration;

use muster_catalog::Command;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError as OpenraftError};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::client::CallError;
use super::{Attempt, Shared, wire};
use crate::ProposeError;

/// How long a new learner may take to catch up before it is promoted.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(60);
/// How long a node being added may take to answer who it is.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole change may take, forwarding and waits included.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a leadership transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(15);
/// Between two election requests to the transfer's target.
const ELECT_PAUSE: Duration = Duration::from_millis(100);

/// A change of the cluster's membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add node `id`, reachable for cluster RPC at `cluster_addr`: first
    /// a learner, then a voter once it holds the log.
    Add {
        /// Its node id (never one removed before).
        id: u64,
        /// Its cluster RPC address, `host:port`.
        cluster_addr: String,
    },
    /// Remove node `id` (voter or learner); its id is retired.
    Remove {
        /// The node id.
        id: u64,
    },
    /// Make `to` the leader, or any other voter when `None`.
    TransferLeader {
        /// The voter to lead.
        to: Option<u64>,
    },
}

/// Why a membership change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MemberError {
    /// The change is not possible as asked (an unknown or retired id, the
    /// leader removing itself, another change under way).
    #[error("{0}")]
    Refused(String),
    /// No leader could be reached in time.
    #[error("not the leader{}", match .leader { Some(l) => format!(" (leader is node {l})"), None => " (no leader known)".to_owned() })]
    NotLeader {
        /// The leader this node knows.
        leader: Option<u64>,
    },
    /// The node is stopping, or failed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<ProposeError> for MemberError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { leader } => MemberError::NotLeader { leader },
            e => MemberError::Unavailable(e.to_string()),
        }
    }
}

/// The answer to a forwarded change.
#[derive(Serialize, Deserialize)]
pub(crate) enum MemberReply {
    Done,
    NotLeader { leader: Option<u64> },
    Refused(String),
    Unavailable(String),
}

fn refused<T>(m: impl Into<String>) -> Result<T, MemberError> {
    Err(MemberError::Refused(m.into()))
}

/// openraft's answer to a membership write, as a [`MemberError`].
fn write_error(e: OpenraftError<u64, ClientWriteError<u64, BasicNode>>) -> MemberError {
    match e {
        OpenraftError::APIError(ClientWriteError::ForwardToLeader(f)) => MemberError::NotLeader {
            leader: f.leader_id,
        },
        OpenraftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => MemberError::Refused(
            "another membership change is under way; try again once it is done".into(),
        ),
        OpenraftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            MemberError::Refused(c.to_string())
        }
        OpenraftError::Fatal(f) => MemberError::Unavailable(f.to_string()),
    }
}

impl Shared {
    /// Makes `change` on the leader: here if this node leads, else
    /// forwarded; waits (bounded) for a leader.
    pub(crate) async fn change_members(&self, change: MemberChange) -> Result<(), MemberError> {
        let body = wire::encode(&change).map_err(MemberError::Unavailable)?;
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        let r = self
            .on_leader(|leader| {
                let (change, body) = (change.clone(), body.clone());
                async move {
                    let r = match leader {
                        None | Some((_, None)) => return Attempt::Retry,
                        Some((l, _)) if l == self.node_id => self.change_here(change).await,
                        Some((l, Some(addr))) => {
                            let left = deadline.saturating_duration_since(Instant::now());
                            let reply: Result<MemberReply, _> =
                                self.http.call(l, &addr, "members", body, left).await;
                            match reply {
                                Ok(MemberReply::Done) => Ok(()),
                                Ok(MemberReply::NotLeader { .. }) => return Attempt::Retry,
                                Ok(MemberReply::Refused(m)) => Err(MemberError::Refused(m)),
                                Ok(MemberReply::Unavailable(m)) => Err(MemberError::Unavailable(m)),
                                // Every change is safe to send again.
                                Err(CallError::Unreachable { .. }) => return Attempt::Retry,
                                Err(e) => Err(MemberError::Unavailable(e.to_string())),
                            }
                        }
                    };
                    match r {
                        Err(MemberError::NotLeader { .. }) => Attempt::Retry,
                        r => Attempt::Done(Ok(r)),
                    }
                }
            })
            .await;
        match r {
            Ok(r) => r,
            Err(e) => Err(e.into()),
        }
    }

    /// The leader's side of a change (forwarded ones included).
    pub(crate) async fn change_here(&self, change: MemberChange) -> Result<(), MemberError> {
        match change {
            MemberChange::Add { id, cluster_addr } => self.add(id, cluster_addr).await,
            MemberChange::Remove { id } => self.remove(id).await,
            MemberChange::TransferLeader { to } => self.transfer(to).await,
        }
    }

    pub(crate) fn reply(r: Result<(), MemberError>) -> MemberReply {
        match r {
            Ok(()) => MemberReply::Done,
            Err(MemberError::NotLeader { leader }) => MemberReply::NotLeader { leader },
            Err(MemberError::Refused(m)) => MemberReply::Refused(m),
            Err(MemberError::Unavailable(m)) => MemberReply::Unavailable(m),
        }
    }

    /// Voters and every member's address, as this node knows them.
    fn membership(&self) -> (BTreeSet<u64>, BTreeMap<u64, String>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        (
            membership.voter_ids().collect(),
            membership
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
        )
    }

    fn is_retired(&self, id: u64) -> bool {
        self.catalog
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .retired_nodes()
            .contains(&id)
    }

    async fn add(&self, id: u64, addr: String) -> Result<(), MemberError> {
        if id == 0 {
            return refused("node ids start at 1");
        }
        let port = addr.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(p)) if p != 0) {
            return refused(format!(
                "{addr:?} is not host:port (the new node's cluster address, e.g. 10.0.0.4:7701)"
            ));
        }
        if self.is_retired(id) {
            return refused(format!(
                "node id {id} was removed from this cluster and is never reused: \
                 start the new node with another id and an empty data directory"
            ));
        }
        let (voters, nodes) = self.membership();
        let at = |addr: &str| nodes.iter().find(|(_, a)| **a == addr).map(|(id, _)| *id);
        match nodes.get(&id) {
            // Asked at another address than the member's: the same if the
            // node there is this one, advertising the member's address.
            Some(a) if *a != addr => match self.probe(id, &addr).await {
                Ok(advertised) if advertised == *a => {}
                _ => return refused(format!("node {id} is already a member, at {a}")),
            },
            Some(_) => {}
            None => {
                if let Some(other) = at(&addr) {
                    return refused(format!("node {other} is already at {addr}"));
                }
            }
        }
        match nodes.get(&id) {
            Some(_) if voters.contains(&id) => return Ok(()),
            // A learner at this address (an add cut short): promote it.
            Some(_) => {}
            None => {
                // Nothing changes unless the node answers as itself, at
                // the address it advertises, which is what its peers use.
                let addr = self.probe(id, &addr).await?;
                if let Some(other) = at(&addr) {
                    return refused(format!("node {other} is already at {addr}"));
                }
                self.raft
                    .add_learner(id, BasicNode::new(&addr), false)
                    .await
                    .map_err(write_error)?;
                tracing::info!(node = id, %addr, "added as a learner");
            }
        }
        // Promoted once it holds the log as it is now.
        let target = self.raft.metrics().borrow().last_log_index;
        let caught_up = self
            .raft
            .wait(Some(LEARNER_CATCH_UP))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .map(|l| l.index)
                        >= target
                },
                "new learner caught up",
            )
            .await;
        if caught_up.is_err() {
            return refused(format!(
                "node {id} was added as a learner but did not catch up within \
                 {LEARNER_CATCH_UP:?}: is it running at {addr} with --join? \
                 Join it again to promote it once it runs"
            ));
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(write_error)?;
        tracing::info!(node = id, "promoted to voter");
        Ok(())
    }

    /// Asks the node at `addr` who it is (`hello`) before it is added,
    /// so that a node that cannot be reached (not running, not started
    /// with `--join`, a certificate the cluster's CA did not issue, or one
    /// that refuses the cluster's) is refused with the reason and the
    /// membership stays as it was. Returns the cluster address the node
    /// advertises (its `cluster_advertise`), checked to answer as well.
    async fn probe(&self, id: u64, addr: &str) -> Result<String, MemberError> {
        let hello = |at: String| async move {
            let hello: Result<wire::Hello, _> =
                self.http.get(id, &at, "hello", PROBE_TIMEOUT).await;
            match hello {
                Ok(h) if h.node_id == id => Ok(h),
                Ok(h) => refused(format!(
                    "the node at {at} is node {}, not node {id}; nothing changed",
                    h.node_id
                )),
                Err(e) => refused(format!(
                    "node {id} cannot be reached for cluster RPC at {at} ({e}); nothing \
                     changed. Start it with --join, and with cluster TLS give it a \
                     certificate from the cluster's CA naming that address"
                )),
            }
        };
        let h = hello(addr.to_string()).await?;
        let advertised = h.cluster_addr.unwrap_or_else(|| addr.to_string());
        if advertised != addr {
            hello(advertised.clone()).await.map_err(|e| {
                MemberError::Refused(format!(
                    "node {id} advertises {advertised} (its cluster_advertise), where its \
                     peers would reach it: {e}"
                ))
            })?;
        }
        Ok(advertised)
    }

    async fn remove(&self, id: u64) -> Result<(), MemberError> {
        let (voters, nodes) = self.membership();
        if !nodes.contains_key(&id) {
            if self.is_retired(id) {
                return Ok(()); // removed already
            }
            return refused(format!("node {id} is not a member"));
        }
        if id == self.node_id {
            return refused(format!(
                "node {id} leads: move leadership first (muster cluster transfer-leader), \
                 then remove it"
            ));
        }
        self.propose_local(Command::RetireNode { id }).await?;
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        // `retain: false`: a removed voter does not stay on as a learner.
        self.raft
            .change_membership(change, false)
            .await
            .map_err(write_error)?;
        tracing::info!(node = id, "removed; its id is retired");
        Ok(())
    }

    async fn transfer(&self, to: Option<u64>) -> Result<(), MemberError> {
        let (voters, nodes) = self.membership();
        let target = match to {
            Some(t) if t == self.node_id => return Ok(()),
            Some(t) if voters.contains(&t) => t,
            Some(t) if nodes.contains_key(&t) => {
                return refused(format!("node {t} is a learner, not a voter"));
            }
            Some(t) => return refused(format!("node {t} is not a member")),
            // The most up-to-date other voter.
            None => {
                let metrics = self.raft.metrics();
                let m = metrics.borrow();
                let matched = |id: &u64| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                };
                match voters
                    .iter()
                    .filter(|v| **v != self.node_id)
                    .max_by_key(|v| matched(v))
                {
                    Some(v) => *v,
                    None => return refused("this node is the only voter"),
                }
            }
        };
        let Some(addr) = nodes.get(&target).cloned() else {
            return refused(format!("node {target} is not a member"));
        };
        let deadline = Instant::now() + TRANSFER_TIMEOUT;
        // No new proposals while leadership moves; those waiting are sent
        // to the new leader afterwards.
        let _held = self.transfer_gate.write().await;
        let last = self.raft.metrics().borrow().last_log_index;
        let left = deadline.saturating_duration_since(Instant::now());
        let caught_up = self
            .raft
            .wait(Some(left))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&target).cloned().flatten())
                        .map(|l| l.index)
                        >= last
                },
                "transfer target caught up",
            )
            .await;
        if caught_up.is_err() {
            return refused(format!(
                "node {target} did not catch up with the leader's log in time"
            ));
        }
        self.raft.runtime_config().heartbeat(false);
        let result = self.elect_until_led(target, &addr, deadline).await;
        self.raft.runtime_config().heartbeat(true);
        match (result?, to) {
            // Another follower's own timer won the race: say so, the
            // caller may ask again (now of the new leader).
            (leader, Some(t)) if leader != t => Err(MemberError::Unavailable(format!(
                "leadership moved to node {leader}, not node {t}; ask again"
            ))),
            _ => Ok(()),
        }
    }

    /// Asks `target` to call elections until a leader other than this node
    /// is known (returned), or `deadline`.
    async fn elect_until_led(
        &self,
        target: u64,
        addr: &str,
        deadline: Instant,
    ) -> Result<u64, MemberError> {
        let mut metrics = self.raft.metrics();
        loop {
            let leader = metrics.borrow_and_update().current_leader;
            if let Some(l) = leader.filter(|l| *l != self.node_id) {
                tracing::info!(leader = l, target, "leadership moved");
                return Ok(l);
            }
            let sent: Result<MemberReply, _> = self
                .http
                .call(target, addr, "elect", bytes::Bytes::new(), ELECT_PAUSE * 5)
                .await;
            if let Err(e) = sent {
                tracing::debug!(target, error = %e, "election request failed");
            }
            if Instant::now() >= deadline {
                return Err(MemberError::Unavailable(format!(
                    "leadership did not move to node {target} within {TRANSFER_TIMEOUT:?}"
                )));
            }
            let _ = tokio::time::timeout(ELECT_PAUSE, metrics.changed()).await;
        }
    }
}

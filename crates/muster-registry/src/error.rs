//! The one error type of the registry. Front-ends map it to their protocol
//! (the HTTP API to a status and a stable code) in one place each.

use muster_catalog::ApplyError;
use muster_raft::ProposeError;
use muster_types::{FieldError, format_lease_id};

/// Why an operation was refused or failed. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// An input is invalid: which field and why.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// No such instance.
    #[error("instance {id:?} of service {service:?} not found")]
    InstanceNotFound {
        /// Service name.
        service: String,
        /// Instance id.
        id: String,
    },
    /// No such lease (never was, expired, or revoked).
    #[error("lease {} not found (expired or revoked)", format_lease_id(*.0))]
    LeaseNotFound(u64),
    /// The instance has no such check.
    #[error("instance {id:?} has no check {check:?}")]
    CheckNotFound {
        /// Instance id.
        id: String,
        /// Check id.
        check: String,
    },
    /// A lease with this id exists already.
    #[error("lease {} already exists", format_lease_id(*.0))]
    LeaseExists(u64),
    /// A heartbeat for an instance without a lease.
    #[error(
        "instance {id:?} is persistent (registered without ttl or lease); it has nothing to renew"
    )]
    NoLease {
        /// Instance id.
        id: String,
    },
    /// A check that runs a program on the registry's host, which this
    /// registry does not allow.
    #[error(
        "command checks (args) run programs on the registry's host and are disabled; \
         start the agent with --enable-command-checks to allow them"
    )]
    CommandChecksDisabled {
        /// The offending field, e.g. `checks[0].args`.
        field: String,
    },
    /// A report for a check that the registry runs itself.
    #[error("check {check:?} is not a TTL check; the registry runs it itself")]
    NotTtlCheck {
        /// Check id.
        check: String,
    },
    /// This node cannot take the operation now (it does not lead).
    #[error("this node cannot accept writes now: not the leader{}", match .leader {
        Some(l) => format!(" (leader is node {l})"),
        None => " (no leader known)".to_owned(),
    })]
    NotLeader {
        /// The leader, if known.
        leader: Option<u64>,
    },
    /// The registry is shutting down.
    #[error("the registry is shutting down")]
    ShuttingDown,
    /// This node forwarded the write to the leader, which stopped
    /// answering before it said whether it applied it (a leader killed
    /// mid-write). Read it back, or send it again if it is idempotent (a
    /// registration, a deregistration and a check report are).
    #[error(
        "the leader (node {leader}) stopped answering while it had this write: it may or may not \
         have been applied; read it back, or send it again if sending it twice is harmless"
    )]
    OutcomeUnknown {
        /// The leader the write was forwarded to.
        leader: u64,
    },
    /// This node was removed from its cluster: it gets no more of the log,
    /// so it answers nothing (its state only ages). Clients move on to
    /// another member.
    #[error(
        "node {node} was removed from the cluster and answers no requests: send them to another member; \
         to use this machine again, start it with a new --node-id and an empty data directory, then join it"
    )]
    Removed {
        /// This node's (retired) id.
        node: u64,
    },
    /// A membership change that cannot be made as asked.
    #[error("{0}")]
    MembershipRefused(String),
    /// A membership change that could not be completed (a node stopping,
    /// a transfer that did not finish in time).
    #[error("{0}")]
    MembershipUnavailable(String),
    /// A backup that is not whole or was changed: refused before anything
    /// changed.
    #[error("{0}")]
    InvalidBackup(String),
    /// Another restore replaced this one while it was staged.
    #[error("{0}")]
    RestoreConflict(String),
    /// The upload of a restore could not be read or spooled.
    #[error("restore upload failed: {0}")]
    RestoreIo(String),
    /// The caller's token lacks a right the operation needs.
    #[error("permission denied: this needs {missing}")]
    PermissionDenied {
        /// The right, e.g. `write on service "orders" in namespace "default"`.
        missing: String,
    },
    /// The token presented is not one this registry knows (never made,
    /// revoked or expired).
    #[error("the ACL token is not valid (unknown, revoked or expired)")]
    InvalidToken,
    /// ACL operations on a registry that runs without ACLs.
    #[error("ACLs are not enabled on this registry; start the agent with --acl")]
    AclDisabled,
    /// The bootstrap token was made before.
    #[error(
        "ACLs are already bootstrapped: the bootstrap token was made before; use a management token to make others"
    )]
    AclBootstrapped,
    /// No token with this accessor.
    #[error("token {0:?} not found")]
    TokenNotFound(String),
    /// No policy with this name.
    #[error("policy {0:?} not found")]
    PolicyNotFound(String),
    /// The write could not be made durable; the node must be restarted.
    #[error("the write could not be made durable: {0}")]
    Storage(String),
    /// Writes cannot be made durable any more (a full disk, a failed
    /// store); reads go on. The agent restarts once it can.
    #[error("{}", if *.full {
        format!("the disk of the registry's data directory is full; writes are refused until space is freed ({reason})")
    } else {
        format!("the registry can no longer make writes durable ({reason})")
    })]
    Unwritable {
        /// The disk is full (the failure passes once space is freed).
        full: bool,
        /// What failed.
        reason: String,
    },
}

/// Result of a registry operation.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

impl From<ApplyError> for RegistryError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::UnknownLease(id) => RegistryError::LeaseNotFound(id),
            ApplyError::LeaseExists(id) => RegistryError::LeaseExists(id),
            ApplyError::UnknownInstance { service, id } => {
                RegistryError::InstanceNotFound { service, id }
            }
            ApplyError::UnknownCheck { id, check } => RegistryError::CheckNotFound { id, check },
            ApplyError::NoRestore(id) => RegistryError::RestoreConflict(format!(
                "restore {id} is not staged (replaced by another or abandoned)"
            )),
            ApplyError::AclBootstrapped => RegistryError::AclBootstrapped,
            ApplyError::UnknownToken(a) => RegistryError::TokenNotFound(a),
            ApplyError::UnknownPolicy(n) => RegistryError::PolicyNotFound(n),
            ApplyError::OverLimit { field, max, .. } => RegistryError::Invalid(
                FieldError::invalid(field.clone(), format!("at most {max} {field} per instance")),
            ),
        }
    }
}

impl From<ProposeError> for RegistryError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { leader } => RegistryError::NotLeader { leader },
            ProposeError::ShuttingDown => RegistryError::ShuttingDown,
            ProposeError::OutcomeUnknown { leader } => RegistryError::OutcomeUnknown { leader },
            ProposeError::Removed { node } => RegistryError::Removed { node },
            ProposeError::Fatal(m) => {
                tracing::error!(error = %m, "write failed");
                RegistryError::Storage(m)
            }
        }
    }
}

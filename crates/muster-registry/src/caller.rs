//! Who asks. Every registry operation takes a [`Caller`], so that
//! authorisation (ACL tokens) is decided in one place, [`crate::Registry`]'s
//! `authorize`, for every front-end.

/// The identity an operation runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    identity: Identity,
}

/// What a caller presented about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identity {
    /// Nothing: no credentials were presented.
    #[default]
    Anonymous,
    /// An ACL token's secret.
    Token(Secret),
}

/// A token's secret. Shown nowhere: its `Debug` is redacted, so it cannot
/// reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Caller {
    /// A caller without credentials.
    pub const fn anonymous() -> Self {
        Caller {
            identity: Identity::Anonymous,
        }
    }

    /// A caller presenting an ACL token's secret.
    pub fn with_token(secret: impl Into<String>) -> Self {
        Caller {
            identity: Identity::Token(Secret(secret.into())),
        }
    }

    /// Who the caller is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// What an operation does, as authorisation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access<'a> {
    /// Change a service's instances or checks, or report a check.
    Write(&'a muster_catalog::ServiceKey),
    /// Create, renew, inspect or revoke leases.
    Lease,
    /// Cluster status and membership, snapshots.
    Operator,
    /// Tokens and policies.
    Acl,
}

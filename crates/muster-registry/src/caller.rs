//! Who asks. Every registry operation takes a [`Caller`], so that
//! authorisation (ACL tokens, from the security work) is decided in one
//! place, [`crate::Registry`]'s `authorize`, for every front-end.

/// The identity an operation runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    identity: Identity,
}

/// What a caller proved about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Identity {
    /// Nothing: no credentials were presented (the only kind today).
    #[default]
    Anonymous,
}

impl Caller {
    /// A caller without credentials.
    pub const fn anonymous() -> Self {
        Caller {
            identity: Identity::Anonymous,
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
    /// Read a service (discovery, watch, one instance).
    Read(&'a muster_catalog::ServiceKey),
    /// List the services of a namespace.
    List(&'a str),
    /// Change a service's instances or checks, or report a check.
    Write(&'a muster_catalog::ServiceKey),
    /// Create, renew, inspect or revoke leases.
    Lease,
    /// Cluster status.
    Operator,
}

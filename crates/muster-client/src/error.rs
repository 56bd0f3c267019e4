//! The one error type of the crate.

use std::time::Duration;

/// Everything that can go wrong in the client.
///
/// - [`Error::Unreachable`]: no registry address answered (after failover and
///   retries).
/// - [`Error::Api`]: the registry answered with a typed error
///   (`{"error": {"code", "message", "field"}}`); [`Error::code`] gives the
///   stable code, e.g. `invalid_field` or `lease_not_found`.
/// - [`Error::Stale`]: the registry has been unreachable for longer than the
///   maximum staleness, so the cached answer is no longer served.
/// - [`Error::NoHealthyInstance`]: a balancer has nothing to pick from.
/// - [`Error::Config`] and [`Error::Protocol`]: a bad builder setting or an
///   answer the client does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The client was configured with an invalid setting.
    #[error("invalid client configuration: {0}")]
    Config(String),

    /// No registry address could be reached.
    #[error("cannot reach the registry at {addrs}: {reason}")]
    Unreachable {
        /// The addresses tried, comma-separated.
        addrs: String,
        /// The last failure seen.
        reason: String,
    },

    /// The registry refused the request with a typed error.
    #[error("{message}{} [{status} {code}]", field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable machine-readable code, e.g. `invalid_field`.
        code: String,
        /// Human-readable explanation from the registry.
        message: String,
        /// The offending input field, when there is one.
        field: Option<String>,
    },

    /// The registry answered something this client does not understand.
    #[error("unexpected answer from the registry: {0}")]
    Protocol(String),

    /// A watch stream carried an event this client cannot decode (a
    /// registry of another version, or a proxy mangling the stream).
    #[error("unreadable watch event {data:?}: {reason}")]
    UnreadableEvent {
        /// The event's data, as received.
        data: String,
        /// Why it could not be decoded.
        reason: String,
    },

    /// The registry has been unreachable for longer than the maximum
    /// staleness, so the cached answer is withheld.
    #[error(
        "the cached instances of {query} are {age:?} old, more than the maximum staleness of {max_staleness:?}; the registry is unreachable: {reason}"
    )]
    Stale {
        /// The query, as `service?filters`.
        query: String,
        /// How long the registry has been unreachable.
        age: Duration,
        /// The configured maximum staleness.
        max_staleness: Duration,
        /// Why the watch is down.
        reason: String,
    },

    /// A balancer found no instance to pick: none matches, or every match is
    /// critical. (Ejected instances are still picked when every one is
    /// ejected.)
    #[error("no healthy instance of {query}: {matching} matching, none passing or warning")]
    NoHealthyInstance {
        /// The query, as `service?filters`.
        query: String,
        /// Instances matching the query.
        matching: usize,
    },
}

impl Error {
    /// The variant in one word (`unreachable`, `api`, `stale`…), for
    /// metrics and spans, where [`Error::code`] is more precise when it
    /// exists.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Unreachable { .. } => "unreachable",
            Error::Api { .. } => "api",
            Error::Protocol(_) => "protocol",
            Error::UnreadableEvent { .. } => "unreadable_event",
            Error::Stale { .. } => "stale",
            Error::NoHealthyInstance { .. } => "no_healthy_instance",
        }
    }

    /// The registry's error code, for [`Error::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the registry does not know the lease (it expired or the
    /// registry lost its state): the cue to create a new one and re-register.
    pub fn is_lease_not_found(&self) -> bool {
        self.code() == Some("lease_not_found")
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

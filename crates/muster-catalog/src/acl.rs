//! The ACL state every node holds: tokens (by accessor, with a hash of
//! their secret, never the secret) and policies (by name), changed only
//! through the log like everything else, so every node enforces the same
//! rules at the same index.

use std::collections::{BTreeMap, HashMap};

pub use muster_types::acl::{ANONYMOUS_ACCESSOR, Policy, ServiceAccess, ServiceRule, TokenInfo};

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclToken {
    /// Public id.
    pub accessor: String,
    /// Hex SHA-256 of the secret (empty for the anonymous token, which has
    /// none).
    pub secret_hash: String,
    /// What the token is for.
    pub description: String,
    /// Names of its policies.
    pub policies: Vec<String>,
    /// Whether it may do everything.
    pub management: bool,
    /// Creation time (Unix milliseconds, the proposer's clock).
    pub created_ms: u64,
    /// Expiry (Unix milliseconds), if any.
    pub expires_ms: Option<u64>,
}

impl AclToken {
    /// The token as the API shows it.
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            accessor: self.accessor.clone(),
            description: self.description.clone(),
            policies: self.policies.clone(),
            management: self.management,
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
        }
    }
}

/// Tokens and policies.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// Whether the bootstrap token was made (it is made once, ever).
    pub bootstrapped: bool,
    tokens: BTreeMap<String, AclToken>,
    policies: BTreeMap<String, Policy>,
    /// Accessor by secret hash.
    by_hash: HashMap<String, String>,
    /// The log index of the last change (or of the snapshot it was read
    /// from): what a cache of decisions is valid for. Not stored.
    changed_at: u64,
}

/// Equal tokens, policies and bootstrap state; where a change was last
/// applied does not count.
impl PartialEq for Acl {
    fn eq(&self, other: &Self) -> bool {
        self.bootstrapped == other.bootstrapped
            && self.tokens == other.tokens
            && self.policies == other.policies
    }
}

impl Eq for Acl {}

impl Acl {
    /// The state made of its stored parts.
    pub fn from_parts(
        bootstrapped: bool,
        tokens: impl IntoIterator<Item = AclToken>,
        policies: impl IntoIterator<Item = Policy>,
    ) -> Acl {
        let mut acl = Acl {
            bootstrapped,
            ..Acl::default()
        };
        for t in tokens {
            acl.put_token(t);
        }
        for p in policies {
            acl.policies.insert(p.name.clone(), p);
        }
        acl
    }

    /// The log index of the last change, or of the snapshot the state was
    /// read from: decisions made from the state stay valid while it holds.
    pub fn changed_at(&self) -> u64 {
        self.changed_at
    }

    pub(crate) fn set_changed_at(&mut self, index: u64) {
        self.changed_at = index;
    }

    /// Whether nothing was ever set (snapshots leave the state out then).
    pub fn is_empty(&self) -> bool {
        !self.bootstrapped && self.tokens.is_empty() && self.policies.is_empty()
    }

    /// Every token, by accessor.
    pub fn tokens(&self) -> impl ExactSizeIterator<Item = &AclToken> {
        self.tokens.values()
    }

    /// Every policy, by name.
    pub fn policies(&self) -> impl ExactSizeIterator<Item = &Policy> {
        self.policies.values()
    }

    /// One token by accessor.
    pub fn token(&self, accessor: &str) -> Option<&AclToken> {
        self.tokens.get(accessor)
    }

    /// The token whose secret hashes to `hash`.
    pub fn token_by_hash(&self, hash: &str) -> Option<&AclToken> {
        self.by_hash.get(hash).and_then(|a| self.tokens.get(a))
    }

    /// One policy by name.
    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.get(name)
    }

    pub(crate) fn put_token(&mut self, mut t: AclToken) {
        if let Some(old) = self.tokens.get(&t.accessor) {
            // An update never changes what proves the token, nor its kind.
            t.secret_hash = old.secret_hash.clone();
            t.management = old.management;
            t.created_ms = old.created_ms;
        }
        if !t.secret_hash.is_empty() {
            self.by_hash
                .insert(t.secret_hash.clone(), t.accessor.clone());
        }
        self.tokens.insert(t.accessor.clone(), t);
    }

    pub(crate) fn remove_token(&mut self, accessor: &str) -> bool {
        match self.tokens.remove(accessor) {
            Some(t) => {
                self.by_hash.remove(&t.secret_hash);
                true
            }
            None => false,
        }
    }

    pub(crate) fn put_policy(&mut self, p: Policy) {
        self.policies.insert(p.name.clone(), p);
    }

    pub(crate) fn remove_policy(&mut self, name: &str) -> bool {
        self.policies.remove(name).is_some()
    }
}

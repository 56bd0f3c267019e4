//! ACL tokens and policies: resolving a caller to what it may do, the
//! operations that manage tokens and policies, and the audit of writes.
//!
//! Tokens and policies live in the catalog (so in the replicated log), with
//! each secret stored as its SHA-256: a node resolves a caller against its
//! own applied state, so every node enforces the same rules, and a token
//! revoked at index `i` stops working on each node as it applies `i`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use muster_catalog::acl::{ANONYMOUS_ACCESSOR, Acl, AclToken, Policy, ServiceAccess, ServiceRule};
use muster_catalog::{Command, Done, ServiceKey};
use muster_types::FieldError;
use muster_types::acl::{CreatedToken, PolicyRequest, TokenInfo, TokenRequest};

use crate::caller::{Access, Caller, Identity};
use crate::{Registry, RegistryError, Result};

/// What a caller may do, resolved from the token it presented.
#[derive(Debug, Clone)]
pub(crate) enum Authz {
    /// Everything: ACLs are off, or a management token.
    All {
        /// Who, for the audit (`-` with ACLs off).
        accessor: String,
    },
    /// What its policies grant.
    Rules {
        /// Who, for the audit.
        accessor: String,
        /// Every service rule of its policies.
        rules: Vec<ServiceRule>,
        /// The operator right.
        operator: bool,
        /// The acl right.
        acl: bool,
    },
}

impl Authz {
    fn resolve(acl: &Acl, token: &AclToken, now_ms: u64) -> Result<Authz> {
        if token.expires_ms.is_some_and(|e| e <= now_ms) {
            return Err(RegistryError::InvalidToken);
        }
        if token.management {
            return Ok(Authz::All {
                accessor: token.accessor.clone(),
            });
        }
        let (mut rules, mut operator, mut acl_right) = (Vec::new(), false, false);
        for p in token.policies.iter().filter_map(|n| acl.policy(n)) {
            rules.extend(p.services.iter().cloned());
            operator |= p.operator;
            acl_right |= p.acl;
        }
        Ok(Authz::Rules {
            accessor: token.accessor.clone(),
            rules,
            operator,
            acl: acl_right,
        })
    }

    /// The accessor of the token, for the audit.
    pub(crate) fn accessor(&self) -> &str {
        match self {
            Authz::All { accessor } | Authz::Rules { accessor, .. } => accessor,
        }
    }

    /// What the most specific matching rule grants on `key` (of equally
    /// specific ones, `deny`, then `write`), or `None` if no rule matches.
    pub(crate) fn service(&self, key: &ServiceKey) -> Option<ServiceAccess> {
        match self {
            Authz::All { .. } => Some(ServiceAccess::Write),
            Authz::Rules { rules, .. } => rules
                .iter()
                .filter_map(|r| {
                    r.specificity(&key.namespace, &key.service)
                        .map(|s| (s, std::cmp::Reverse(r.access)))
                })
                .max()
                .map(|(_, std::cmp::Reverse(a))| a),
        }
    }

    /// Whether the caller may read `key`.
    pub(crate) fn may_read(&self, key: &ServiceKey) -> bool {
        matches!(
            self.service(key),
            Some(ServiceAccess::Read | ServiceAccess::Write)
        )
    }

    /// Whether the caller may read anything of `namespace` at all (a cheap
    /// test before filtering a list).
    pub(crate) fn reads_in(&self, namespace: &str) -> bool {
        match self {
            Authz::All { .. } => true,
            Authz::Rules { rules, .. } => rules
                .iter()
                .any(|r| r.in_namespace(namespace) && r.access != ServiceAccess::Deny),
        }
    }

    fn allows(&self, access: Access<'_>) -> std::result::Result<(), String> {
        let (ok, missing) = match (self, access) {
            (Authz::All { .. }, _) => (true, String::new()),
            (_, Access::Write(key)) => (
                self.service(key) == Some(ServiceAccess::Write),
                format!(
                    "write on service {:?} in namespace {:?}",
                    &*key.service, &*key.namespace
                ),
            ),
            (Authz::Rules { rules, .. }, Access::Lease) => (
                rules.iter().any(|r| r.access == ServiceAccess::Write),
                "write on some service (leases hold registered instances)".to_string(),
            ),
            (Authz::Rules { operator, .. }, Access::Operator) => {
                (*operator, "the operator right".to_string())
            }
            (Authz::Rules { acl, .. }, Access::Acl) => (*acl, "the acl right".to_string()),
        };
        if ok { Ok(()) } else { Err(missing) }
    }
}

/// Most secrets whose decisions are cached; past it the cache starts over.
const CACHED_SECRETS: usize = 4096;

/// Decisions per presented secret (see [`Registry::authz`]).
pub(crate) struct AuthzCache {
    /// What everyone may do with ACLs off.
    open: Arc<Authz>,
    by_secret: Mutex<foldhash::HashMap<String, Cached>>,
}

struct Cached {
    /// The ACL state's `changed_at` the decision was made from.
    at: u64,
    expires_ms: Option<u64>,
    authz: Arc<Authz>,
}

impl Default for AuthzCache {
    fn default() -> Self {
        AuthzCache {
            open: Arc::new(Authz::All {
                accessor: "-".into(),
            }),
            by_secret: Mutex::default(),
        }
    }
}

impl AuthzCache {
    fn get(&self, secret: &str, at: u64, now_ms: u64) -> Option<Arc<Authz>> {
        let map = crate::cache::lock(&self.by_secret);
        let hit = map.get(secret)?;
        (hit.at == at && hit.expires_ms.is_none_or(|e| e > now_ms)).then(|| Arc::clone(&hit.authz))
    }

    fn put(&self, secret: &str, at: u64, expires_ms: Option<u64>, authz: Arc<Authz>) {
        let mut map = crate::cache::lock(&self.by_secret);
        if map.len() >= CACHED_SECRETS && !map.contains_key(secret) {
            map.clear();
        }
        map.insert(
            secret.to_string(),
            Cached {
                at,
                expires_ms,
                authz,
            },
        );
    }
}

/// Now, as the wall clock says, in Unix milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The hex SHA-256 of a secret: what the catalog stores and looks up.
pub(crate) fn hash_secret(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    hex(digest.as_ref())
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `n` bytes from the operating system's generator.
fn random(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| RegistryError::Storage("the system's random generator failed".into()))?;
    Ok(buf)
}

/// A fresh accessor: 128 random bits, shown as a UUID.
fn new_accessor() -> Result<String> {
    let h = hex(&random(16)?);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// A fresh secret: 256 random bits, hex.
fn new_secret() -> Result<String> {
    Ok(hex(&random(32)?))
}

/// One audited write: who (the token's accessor, never its secret), what,
/// on what, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// When (Unix milliseconds).
    pub time_ms: u64,
    /// The token's accessor: `anonymous`, `unknown-token`, or `-` with ACLs off.
    pub accessor: String,
    /// The operation, e.g. `register`, `acl-token-revoke`.
    pub op: &'static str,
    /// What it was done to, e.g. `default/payments/pay-1`.
    pub target: String,
    /// `accepted`, `denied` or `failed`.
    pub result: &'static str,
    /// Why it was refused or failed.
    pub error: Option<String>,
}

/// Where audit records go besides the `muster::audit` log line and the
/// counter, e.g. an append-only file: set by the composition root with
/// [`Registry::set_audit_sink`]. Called on the writing task: keep it quick.
pub trait AuditSink: Send + Sync + 'static {
    /// Records one write.
    fn record(&self, record: &AuditRecord);
}

/// How a write ended, for the audit.
fn outcome<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(RegistryError::PermissionDenied { .. } | RegistryError::InvalidToken) => "denied",
        Err(_) => "failed",
    }
}

impl Registry {
    /// Sends every audit record to `sink` from now on (once; a second call
    /// is ignored and returns `false`).
    pub fn set_audit_sink(&self, sink: std::sync::Arc<dyn AuditSink>) -> bool {
        self.inner.audit.set(sink).is_ok()
    }

    /// What `caller` may do. With ACLs off, everything.
    ///
    /// Decisions are cached per presented secret for as long as the ACL
    /// state they were made from holds (its `changed_at` index) and the
    /// token has not expired, so a request costs a map lookup rather than
    /// a SHA-256 and a walk of its policies. The cache lives in memory only
    /// (as the request that carried the secret does), is bounded, and
    /// never holds an unknown token.
    pub(crate) fn authz(&self, caller: &Caller) -> Result<Arc<Authz>> {
        // Every read and write is authorised here first, so this one check
        // keeps a removed node from serving its ageing state to anyone.
        self.member()?;
        if !self.inner.config.acl {
            return Ok(Arc::clone(&self.inner.acl_cache.open));
        }
        let key = match caller.identity() {
            Identity::Anonymous => "",
            Identity::Token(secret) => secret.expose(),
        };
        let now = now_ms();
        let at = self.read(|c| c.acl().changed_at());
        if let Some(hit) = self.inner.acl_cache.get(key, at, now) {
            return Ok(hit);
        }
        let hash = (!key.is_empty()).then(|| hash_secret(key));
        let (at, resolved) = self.read(|c| {
            let acl = c.acl();
            let resolved = match &hash {
                None => match acl.token(ANONYMOUS_ACCESSOR) {
                    Some(t) => Authz::resolve(acl, t, now).map(|a| (a, t.expires_ms)),
                    None => Ok((
                        Authz::Rules {
                            accessor: ANONYMOUS_ACCESSOR.into(),
                            rules: Vec::new(),
                            operator: false,
                            acl: false,
                        },
                        None,
                    )),
                },
                Some(h) => match acl.token_by_hash(h) {
                    Some(t) => Authz::resolve(acl, t, now).map(|a| (a, t.expires_ms)),
                    None => Err(RegistryError::InvalidToken),
                },
            };
            (acl.changed_at(), resolved)
        });
        let (authz, expires_ms) = resolved?;
        let authz = Arc::new(authz);
        self.inner
            .acl_cache
            .put(key, at, expires_ms, Arc::clone(&authz));
        Ok(authz)
    }

    /// The one place where callers are authorised: `Ok` with what they may
    /// do, or the error naming the right they lack.
    pub(crate) fn authorize(&self, caller: &Caller, access: Access<'_>) -> Result<Arc<Authz>> {
        let a = self.authz(caller)?;
        match a.allows(access) {
            Ok(()) => Ok(a),
            Err(missing) => Err(RegistryError::PermissionDenied { missing }),
        }
    }

    /// Whether `caller` may read `key`. A service it may not read is, to
    /// it, a service without instances, as an unknown one.
    pub(crate) fn readable(&self, caller: &Caller, key: &ServiceKey) -> Result<bool> {
        Ok(self.authz(caller)?.may_read(key))
    }

    /// Runs write `op` on `target` for `caller` if `access` is granted, and
    /// records it in the audit: the accessor, the operation, the target and
    /// how it ended. A `quiet` operation (a renewal, thousands a second) is
    /// counted always but logged only when refused.
    pub(crate) async fn audited<T, F>(
        &self,
        caller: &Caller,
        access: Access<'_>,
        op: &'static str,
        quiet: bool,
        target: impl FnOnce() -> String,
        body: F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let (accessor, r) = match self.authorize(caller, access) {
            Ok(a) => (a, body.await),
            Err(e) => (
                Arc::new(Authz::All {
                    accessor: self.accessor_of(caller),
                }),
                Err(e),
            ),
        };
        if quiet && r.is_ok() {
            metrics::counter!("muster_audit_writes_total", "op" => op, "result" => "accepted")
                .increment(1);
            return r;
        }
        self.audit(accessor.accessor(), op, &target(), &r);
        r
    }

    /// Records one write: a log line (`muster::audit`), the counter, and a
    /// line of the audit file if there is one.
    fn audit<T>(&self, accessor: &str, op: &'static str, target: &str, r: &Result<T>) {
        let result = outcome(r);
        metrics::counter!("muster_audit_writes_total", "op" => op, "result" => result).increment(1);
        let error = r.as_ref().err().map(|e| e.to_string());
        let sink = self.inner.audit.get();
        if self.inner.config.acl || sink.is_some() {
            tracing::info!(target: "muster::audit", accessor, op, target, result, error, "write");
        } else {
            tracing::debug!(target: "muster::audit", accessor, op, target, result, error, "write");
        }
        if let Some(sink) = sink {
            sink.record(&AuditRecord {
                time_ms: now_ms(),
                accessor: accessor.to_string(),
                op,
                target: target.to_string(),
                result,
                error,
            });
        }
    }

    /// Who `caller` is, for the audit of a refused write: its accessor if
    /// the token is known, never the secret.
    fn accessor_of(&self, caller: &Caller) -> String {
        match caller.identity() {
            _ if !self.inner.config.acl => "-".into(),
            Identity::Anonymous => ANONYMOUS_ACCESSOR.into(),
            Identity::Token(secret) => {
                let h = hash_secret(secret.expose());
                self.read(|c| c.acl().token_by_hash(&h).map(|t| t.accessor.clone()))
                    .unwrap_or_else(|| "unknown-token".into())
            }
        }
    }

    fn acl_enabled(&self) -> Result<()> {
        if self.inner.config.acl {
            Ok(())
        } else {
            Err(RegistryError::AclDisabled)
        }
    }

    async fn propose_acl(&self, cmd: Command) -> Result<u64> {
        let w = self.propose(cmd).await?;
        match w.value.done {
            Done::Acl => Ok(w.index),
            other => Err(RegistryError::Storage(format!(
                "an ACL command was applied as {other:?}"
            ))),
        }
    }

    // ---- tokens ---------------------------------------------------------

    /// Makes the first management token, once ever; its secret is in the
    /// answer and nowhere else. Needs no token: until it exists there is
    /// none to present.
    pub async fn acl_bootstrap(&self, caller: &Caller) -> Result<CreatedToken> {
        self.acl_enabled()?;
        let secret = new_secret()?;
        let mut token = self.new_token(true, TokenRequest::default(), None)?;
        token.secret_hash = hash_secret(&secret);
        let info = token.info();
        let r = self.propose_acl(Command::AclBootstrap { token }).await;
        self.audit(
            &self.accessor_of(caller),
            "acl-bootstrap",
            &info.accessor,
            &r,
        );
        r?;
        Ok(CreatedToken {
            token: info,
            secret,
        })
    }

    fn new_token(
        &self,
        management: bool,
        req: TokenRequest,
        expires_in: Option<std::time::Duration>,
    ) -> Result<AclToken> {
        let now = now_ms();
        Ok(AclToken {
            accessor: new_accessor()?,
            secret_hash: String::new(),
            description: req.description,
            policies: req.policies,
            management,
            created_ms: now,
            expires_ms: expires_in
                .map(|d| now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
        })
    }

    /// Refuses policy names that do not exist.
    fn policies_exist(&self, names: &[String]) -> Result<()> {
        self.read(
            |c| match names.iter().position(|n| c.acl().policy(n).is_none()) {
                None => Ok(()),
                Some(i) => Err(FieldError::invalid(
                    format!("policies[{i}]"),
                    format!("policy {:?} does not exist", names[i]),
                )
                .into()),
            },
        )
    }

    /// Creates a token carrying `req.policies`; its secret is in the answer
    /// and nowhere else.
    pub async fn create_token(&self, caller: &Caller, req: TokenRequest) -> Result<CreatedToken> {
        self.acl_enabled()?;
        self.audited(
            caller,
            Access::Acl,
            "acl-token-create",
            false,
            String::new,
            async {
                let expires_in = req.validate()?;
                self.policies_exist(&req.policies)?;
                let secret = new_secret()?;
                let mut token = self.new_token(false, req, expires_in)?;
                token.secret_hash = hash_secret(&secret);
                let info = token.info();
                self.propose_acl(Command::AclSetToken { token }).await?;
                Ok(CreatedToken {
                    token: info,
                    secret,
                })
            },
        )
        .await
    }

    /// Changes a token's description and policies (the anonymous token's
    /// too: that is how anonymous reads are granted).
    pub async fn update_token(
        &self,
        caller: &Caller,
        accessor: &str,
        req: TokenRequest,
    ) -> Result<TokenInfo> {
        self.acl_enabled()?;
        self.audited(
            caller,
            Access::Acl,
            "acl-token-update",
            false,
            || accessor.to_string(),
            async {
                if req.validate()?.is_some() {
                    return Err(FieldError::invalid(
                        "expires_in",
                        "a token's expiry is set when it is created; create a new token instead",
                    )
                    .into());
                }
                self.policies_exist(&req.policies)?;
                let existing = self.read(|c| c.acl().token(accessor).cloned());
                let token = match existing {
                    Some(t) => AclToken {
                        description: req.description,
                        policies: req.policies,
                        ..t
                    },
                    None if accessor == ANONYMOUS_ACCESSOR => AclToken {
                        accessor: ANONYMOUS_ACCESSOR.into(),
                        secret_hash: String::new(),
                        description: req.description,
                        policies: req.policies,
                        management: false,
                        created_ms: now_ms(),
                        expires_ms: None,
                    },
                    None => return Err(RegistryError::TokenNotFound(accessor.to_string())),
                };
                self.propose_acl(Command::AclSetToken {
                    token: token.clone(),
                })
                .await?;
                Ok(self
                    .read(|c| c.acl().token(accessor).map(AclToken::info))
                    .unwrap_or_else(|| token.info()))
            },
        )
        .await
    }

    /// Revokes a token: every node refuses it once it applied the revoke.
    pub async fn revoke_token(&self, caller: &Caller, accessor: &str) -> Result<u64> {
        self.acl_enabled()?;
        self.audited(
            caller,
            Access::Acl,
            "acl-token-revoke",
            false,
            || accessor.to_string(),
            async {
                if accessor == ANONYMOUS_ACCESSOR {
                    return Err(FieldError::invalid(
                        "accessor",
                        "the anonymous token cannot be revoked; take its policies away instead",
                    )
                    .into());
                }
                self.propose_acl(Command::AclDeleteToken {
                    accessor: accessor.to_string(),
                })
                .await
            },
        )
        .await
    }

    /// Every token (never a secret).
    pub fn tokens(&self, caller: &Caller) -> Result<Vec<TokenInfo>> {
        self.acl_enabled()?;
        self.authorize(caller, Access::Acl)?;
        Ok(self.read(|c| c.acl().tokens().map(AclToken::info).collect()))
    }

    /// One token (never its secret).
    pub fn token(&self, caller: &Caller, accessor: &str) -> Result<TokenInfo> {
        self.acl_enabled()?;
        self.authorize(caller, Access::Acl)?;
        self.read(|c| c.acl().token(accessor).map(AclToken::info))
            .ok_or_else(|| RegistryError::TokenNotFound(accessor.to_string()))
    }

    /// The token the caller presented, without needing the acl right.
    pub fn token_self(&self, caller: &Caller) -> Result<TokenInfo> {
        self.acl_enabled()?;
        let accessor = self.authz(caller)?.accessor().to_string();
        Ok(self
            .read(|c| c.acl().token(&accessor).map(AclToken::info))
            .unwrap_or(TokenInfo {
                accessor,
                description: "callers without a token".into(),
                policies: Vec::new(),
                management: false,
                created_ms: 0,
                expires_ms: None,
            }))
    }

    // ---- policies -------------------------------------------------------

    /// Creates or replaces policy `name`.
    pub async fn set_policy(
        &self,
        caller: &Caller,
        name: &str,
        req: PolicyRequest,
    ) -> Result<Policy> {
        self.acl_enabled()?;
        self.audited(
            caller,
            Access::Acl,
            "acl-policy-set",
            false,
            || name.to_string(),
            async {
                let policy = req.validate(name)?;
                self.propose_acl(Command::AclSetPolicy {
                    policy: policy.clone(),
                })
                .await?;
                Ok(policy)
            },
        )
        .await
    }

    /// Deletes policy `name`; tokens naming it lose what it granted.
    pub async fn delete_policy(&self, caller: &Caller, name: &str) -> Result<u64> {
        self.acl_enabled()?;
        self.audited(
            caller,
            Access::Acl,
            "acl-policy-delete",
            false,
            || name.to_string(),
            async {
                self.propose_acl(Command::AclDeletePolicy {
                    name: name.to_string(),
                })
                .await
            },
        )
        .await
    }

    /// Every policy.
    pub fn policies(&self, caller: &Caller) -> Result<Vec<Policy>> {
        self.acl_enabled()?;
        self.authorize(caller, Access::Acl)?;
        Ok(self.read(|c| c.acl().policies().cloned().collect()))
    }

    /// One policy.
    pub fn policy(&self, caller: &Caller, name: &str) -> Result<Policy> {
        self.acl_enabled()?;
        self.authorize(caller, Access::Acl)?;
        self.read(|c| c.acl().policy(name).cloned())
            .ok_or_else(|| RegistryError::PolicyNotFound(name.to_string()))
    }
}

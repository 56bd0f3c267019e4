//! ACL policies and tokens as the API shows them, and the rule matching
//! every node applies the same way.
//!
//! A [`Policy`] grants `read`, `write` or `deny` on service names (exact, or
//! a prefix ending in `*`) within a namespace (or `*`, every namespace),
//! plus the `operator` right (cluster, snapshots) and the `acl` right
//! (tokens and policies). A token carries policies; the most specific rule
//! matching a service decides (an exact name beats a prefix, a longer
//! prefix a shorter one, a named namespace `*`), and of equally specific
//! rules `deny` wins, then `write` (which includes `read`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::FieldError;

/// The most policies a token carries and rules a policy holds.
pub const MAX_POLICY_RULES: usize = 256;
/// The most policies on one token.
pub const MAX_TOKEN_POLICIES: usize = 32;
/// Longest description of a token or policy.
pub const MAX_DESCRIPTION_LEN: usize = 256;

/// The accessor of the anonymous token: what callers without a token get.
/// Its policies can be changed (to grant anonymous reads); it has no secret
/// and cannot be revoked.
pub const ANONYMOUS_ACCESSOR: &str = "anonymous";

/// What a rule grants on the services it matches.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAccess {
    /// Nothing, whatever less specific rules say.
    Deny,
    /// Discovery, watches, listing.
    Read,
    /// Read, plus register, deregister, heartbeat, report checks.
    Write,
}

impl std::fmt::Display for ServiceAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServiceAccess::Deny => "deny",
            ServiceAccess::Read => "read",
            ServiceAccess::Write => "write",
        })
    }
}

/// One rule of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceRule {
    /// Namespace, or `*` for every namespace.
    pub namespace: String,
    /// Service name, or a prefix ending in `*` (`pay*`; `*` alone is every
    /// service).
    pub service: String,
    /// What the rule grants.
    pub access: ServiceAccess,
}

impl ServiceRule {
    /// How specific the rule is for a service it matches, or `None` if it
    /// does not match: (exact name, prefix length, named namespace).
    pub fn specificity(&self, namespace: &str, service: &str) -> Option<(bool, usize, bool)> {
        let ns_named = self.namespace != "*";
        if ns_named && self.namespace != namespace {
            return None;
        }
        match self.service.strip_suffix('*') {
            Some(prefix) if service.starts_with(prefix) => Some((false, prefix.len(), ns_named)),
            Some(_) => None,
            None if self.service == service => Some((true, service.len(), ns_named)),
            None => None,
        }
    }

    /// Whether the rule could grant anything in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> bool {
        self.namespace == "*" || self.namespace == namespace
    }

    fn validate(&self, at: usize) -> Result<(), FieldError> {
        let field = |f: &str| format!("services[{at}].{f}");
        if self.namespace != "*" && crate::validate_namespace(&self.namespace).is_err() {
            return Err(FieldError::invalid(
                field("namespace"),
                format!(
                    "namespace {:?} is neither `*` nor a namespace name",
                    self.namespace
                ),
            ));
        }
        let name = self.service.strip_suffix('*').unwrap_or(&self.service);
        let ok = if self.service.ends_with('*') {
            name.is_empty()
                || (name.len() < crate::limits::MAX_NAME_LEN
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        } else {
            crate::validate_service_name(name).is_ok()
        };
        if !ok {
            return Err(FieldError::invalid(
                field("service"),
                format!(
                    "service pattern {:?} is neither a service name nor a prefix ending in `*`",
                    self.service
                ),
            ));
        }
        Ok(())
    }
}

/// A named set of rights, as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Name (a DNS label); tokens refer to policies by name.
    pub name: String,
    /// What the policy is for.
    #[serde(default)]
    pub description: String,
    /// Rules on services.
    #[serde(default)]
    pub services: Vec<ServiceRule>,
    /// Cluster membership and status, snapshots (save and restore).
    #[serde(default)]
    pub operator: bool,
    /// Managing tokens and policies.
    #[serde(default)]
    pub acl: bool,
}

/// Body of `PUT /v1/acl/policies/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// What the policy is for.
    #[serde(default)]
    pub description: String,
    /// Rules on services.
    #[serde(default)]
    pub services: Vec<ServiceRule>,
    /// Cluster membership and status, snapshots (save and restore).
    #[serde(default)]
    pub operator: bool,
    /// Managing tokens and policies.
    #[serde(default)]
    pub acl: bool,
}

impl PolicyRequest {
    /// The policy named `name`, or the first field that is wrong.
    pub fn validate(self, name: &str) -> Result<Policy, FieldError> {
        validate_policy_name(name)?;
        validate_description(&self.description)?;
        if self.services.len() > MAX_POLICY_RULES {
            return Err(FieldError::invalid(
                "services",
                format!("at most {MAX_POLICY_RULES} rules per policy"),
            ));
        }
        for (i, r) in self.services.iter().enumerate() {
            r.validate(i)?;
        }
        Ok(Policy {
            name: name.to_string(),
            description: self.description,
            services: self.services,
            operator: self.operator,
            acl: self.acl,
        })
    }
}

/// Checks a policy name: a DNS label, like service names.
pub fn validate_policy_name(name: &str) -> Result<(), FieldError> {
    crate::validate_service_name(name).map_err(|_| {
        FieldError::invalid(
            "name",
            format!(
                "policy name {name:?} is not a DNS label: use 1 to {} characters of a-z, 0-9 and '-'",
                crate::limits::MAX_NAME_LEN
            ),
        )
    })
}

fn validate_description(d: &str) -> Result<(), FieldError> {
    if d.len() > MAX_DESCRIPTION_LEN {
        return Err(FieldError::invalid(
            "description",
            format!("at most {MAX_DESCRIPTION_LEN} bytes"),
        ));
    }
    Ok(())
}

/// A token as shown: never its secret (only the answer that creates it
/// carries the secret, once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// Public id of the token, for listing, updating and revoking it.
    pub accessor: String,
    /// What the token is for.
    pub description: String,
    /// Names of its policies.
    pub policies: Vec<String>,
    /// Whether it may do everything (the bootstrap token).
    pub management: bool,
    /// When it was created (Unix milliseconds).
    pub created_ms: u64,
    /// When it stops working (Unix milliseconds), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// Answer of `POST /v1/acl/bootstrap` and `POST /v1/acl/tokens`: the token
/// and, this once, its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The token.
    #[serde(flatten)]
    pub token: TokenInfo,
    /// The secret to present as `Authorization: Bearer <secret>`. Shown
    /// only now: the registry keeps a hash of it.
    pub secret: String,
}

/// Body of `POST /v1/acl/tokens` and `PUT /v1/acl/tokens/{accessor}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// What the token is for.
    #[serde(default)]
    pub description: String,
    /// Names of its policies (each must exist).
    #[serde(default)]
    pub policies: Vec<String>,
    /// How long it works from now (`90d`, `1h`); forever if absent. Only
    /// on creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

impl TokenRequest {
    /// Checks the fields; the expiry as a duration.
    pub fn validate(&self) -> Result<Option<std::time::Duration>, FieldError> {
        validate_description(&self.description)?;
        if self.policies.len() > MAX_TOKEN_POLICIES {
            return Err(FieldError::invalid(
                "policies",
                format!("at most {MAX_TOKEN_POLICIES} policies per token"),
            ));
        }
        for (i, p) in self.policies.iter().enumerate() {
            validate_policy_name(p)
                .map_err(|e| FieldError::invalid(format!("policies[{i}]"), e.message))?;
        }
        self.expires_in
            .as_deref()
            .map(|s| {
                crate::parse_duration(s)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        FieldError::invalid(
                            "expires_in",
                            format!("{s:?} is not a positive duration such as `1h` or `90d`"),
                        )
                    })
            })
            .transpose()
    }
}

/// Answer of `GET /v1/acl/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokensResponse {
    /// Every token, by accessor.
    pub tokens: Vec<TokenInfo>,
}

/// Answer of `GET /v1/acl/policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoliciesResponse {
    /// Every policy, by name.
    pub policies: Vec<Policy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(ns: &str, svc: &str) -> ServiceRule {
        ServiceRule {
            namespace: ns.into(),
            service: svc.into(),
            access: ServiceAccess::Read,
        }
    }

    #[test]
    fn exact_beats_prefix_and_longer_prefix_beats_shorter() {
        let exact = rule("default", "payments").specificity("default", "payments");
        let long = rule("default", "pay*").specificity("default", "payments");
        let short = rule("default", "p*").specificity("default", "payments");
        let all = rule("*", "*").specificity("default", "payments");
        assert!(
            exact > long && long > short && short > all,
            "{exact:?} {long:?} {short:?} {all:?}"
        );
        assert_eq!(
            rule("default", "pay*").specificity("default", "orders"),
            None
        );
        assert_eq!(rule("prod", "*").specificity("default", "orders"), None);
        assert_eq!(
            rule("default", "payments").specificity("default", "payments-v2"),
            None
        );
    }

    #[test]
    fn bad_rules_and_names_are_refused_naming_the_field() {
        let bad = PolicyRequest {
            services: vec![rule("default", "pay*"), rule("default", "Pay*")],
            ..Default::default()
        };
        assert_eq!(bad.validate("p").unwrap_err().field, "services[1].service");
        let bad = PolicyRequest {
            services: vec![rule("no such ns", "x")],
            ..Default::default()
        };
        assert_eq!(
            bad.validate("p").unwrap_err().field,
            "services[0].namespace"
        );
        assert_eq!(
            PolicyRequest::default().validate("Bad").unwrap_err().field,
            "name"
        );
        let t = TokenRequest {
            expires_in: Some("soon".into()),
            ..Default::default()
        };
        assert_eq!(t.validate().unwrap_err().field, "expires_in");
    }
}

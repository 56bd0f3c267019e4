//! The OpenAPI document, generated from the handlers and wire types. The
//! committed copy (`docs/openapi.json`) is checked against it by a test.

use std::collections::BTreeMap;

use axum::response::IntoResponse;
use muster_types::{ID_PATTERN, LABEL_PATTERN, LEASE_ID_PATTERN, limits};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::api;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "muster", description = "muster service registry: native HTTP API v1. Every read answers with the header X-Muster-Index; errors are {\"error\": {\"code\", \"message\", \"field\"}}, also on any route for a wrong method (405 method_not_allowed, with Allow), a path segment that is not UTF-8 (400 invalid_path), an oversized target (414 uri_too_long) or header block (431 headers_too_large), and, when the agent sets a request-rate limit (`rate_limit`, per token or else per client address), 429 rate_limited with Retry-After on any route but /healthz."),
    paths(
        api::instances::register, api::instances::get_one, api::instances::deregister,
        api::instances::heartbeat, api::instances::discover,
        api::checks::maintenance, api::checks::put_check, api::checks::delete_check, api::checks::report,
        api::services::list,
        api::leases::create, api::leases::get_one, api::leases::renew, api::leases::renew_many, api::leases::revoke,
        api::watch::watch, api::watch_many::watch_many,
        api::cluster::cluster, api::cluster::join, api::cluster::leave,
        api::cluster::transfer_leader, api::cluster::healthz,
        api::snapshot::save, api::snapshot::restore,
        api::acl::bootstrap, api::acl::create_token, api::acl::list_tokens, api::acl::token_self,
        api::acl::get_token, api::acl::update_token, api::acl::revoke_token,
        api::acl::list_policies, api::acl::get_policy, api::acl::put_policy, api::acl::delete_policy,
        crate::metrics::render, serve,
    ),
    modifiers(&ParameterRules, &AclAnswers, &RateLimited),
    tags(
        (name = "instances", description = "Register, deregister, heartbeat and discover instances"),
        (name = "checks", description = "Server-run health checks, TTL check reports, maintenance"),
        (name = "services", description = "Services of a namespace"),
        (name = "leases", description = "Leases: one renewal keeps many instances alive"),
        (name = "watch", description = "Live changes as Server-Sent Events"),
        (name = "operations", description = "Cluster status, liveness, metrics, this document"),
        (name = "acl", description = "ACL tokens and policies (agent run with --acl)"),
    )
)]
pub struct ApiDoc;

/// The document as pretty JSON, exactly as committed.
pub fn document() -> String {
    let mut s = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    s.push('\n');
    s
}

/// `GET /v1/openapi.json`.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json")))]
pub async fn serve() -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document(),
    )
}

/// An error answer of the API: the typed [`muster_types::ErrorBody`].
fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
        .into()
}

/// The answers of an operation that writes to the log (or, for renewals,
/// needs the leader and a writable store), besides its own:
/// `responses((status = 200, ...), WriteErrors)`.
pub struct WriteErrors;

impl IntoResponses for WriteErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        BTreeMap::from([
            (
                "503".to_string(),
                error_response(
                    "not_leader (this node does not lead; the leader is named if known), \
                     shutting_down, storage_failed (writes cannot be made durable), \
                     outcome_unknown (the leader this node forwarded the write to stopped \
                     answering: it may or may not have been applied), or node_removed (this \
                     node was removed from its cluster)",
                ),
            ),
            (
                "507".to_string(),
                error_response("storage_full: the data directory's disk is full"),
            ),
        ])
    }
}

/// The answers of an operation that reads a body, besides its own 400 for
/// a malformed one: `responses((status = 200, ...), BodyErrors)`.
pub struct BodyErrors;

impl IntoResponses for BodyErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        BTreeMap::from([
            (
                "408".to_string(),
                error_response("body_timeout: the body did not arrive in time"),
            ),
            (
                "413".to_string(),
                error_response(&format!(
                    "body_too_large: the body is over {} bytes",
                    limits::MAX_BODY_BYTES
                )),
            ),
        ])
    }
}

/// With ACLs on (`muster agent --acl`), every `/v1/` operation but this
/// document may answer 401 `invalid_token` (a token that is malformed,
/// unknown, revoked or expired) and 403 `permission_denied` (naming the
/// right the token lacks); tokens come as `Authorization: Bearer` or
/// `X-Muster-Token`. Declared here once rather than on every operation,
/// with the 503 `node_removed` of a node removed from its cluster, which
/// answers every `/v1/` operation so (clients move on to another member).
struct AclAnswers;

impl Modify for AclAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "token_header",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Muster-Token"))),
        );
        let v1 = |path: &str| path.starts_with("/v1/") && path != "/v1/openapi.json";
        for (_, op) in operations(doc).filter(|(path, _)| v1(path)) {
            add_answer(
                op,
                "401",
                "invalid_token: the token is malformed, unknown, revoked or expired",
            );
            add_answer(
                op,
                "403",
                "permission_denied: the token lacks the right this needs (named)",
            );
            add_answer(
                op,
                "503",
                "node_removed: this node was removed from its cluster and answers nothing; \
                 ask another member",
            );
        }
    }
}

/// Every operation of the document with its path.
fn operations(doc: &mut utoipa::openapi::OpenApi) -> impl Iterator<Item = (&str, &mut Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        .map(move |op| (path.as_str(), op))
    })
}

/// Adds answer `status` to `op` unless it documents its own.
fn add_answer(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error_response(description));
}

/// Gives the parameters that name things the rule the server checks them
/// by, so a client (or a fuzzer) can tell a valid name from an invalid one:
/// `service` and `namespace` are DNS labels, an instance's `id` and a
/// `check` id follow [`ID_PATTERN`], a lease `id` [`LEASE_ID_PATTERN`], and
/// a check report's `status` is one of three words; a blocking query's
/// `index` is any unsigned 64-bit integer. Kept here, once,
/// rather than on each of the twenty operations that take them.
struct ParameterRules;

impl Modify for ParameterRules {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, op) in operations(doc) {
            constrain(op, path.starts_with("/v1/leases/"));
        }
    }
}

/// Adds the 429 of the request-rate limit to every operation but
/// `/healthz` (which it never refuses); operations with 429s of their own
/// (caps on watches and blocking queries) name it in theirs.
struct RateLimited;

impl Modify for RateLimited {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (_, op) in operations(doc).filter(|(path, _)| *path != "/healthz") {
            add_answer(
                op,
                "429",
                "rate_limited: over the request-rate limit of this token (or, \
                 without one, of this client address); header Retry-After",
            );
        }
    }
}

fn constrain(op: &mut Operation, leases: bool) {
    for p in op.parameters.iter_mut().flatten() {
        let Some(RefOr::T(Schema::Object(schema))) = p.schema.as_mut() else {
            continue;
        };
        match (p.name.as_str(), &p.parameter_in) {
            ("service", _) | ("namespace", ParameterIn::Query) => {
                schema.pattern = Some(LABEL_PATTERN.into());
                schema.min_length = Some(1);
                schema.max_length = Some(limits::MAX_NAME_LEN);
            }
            ("id", ParameterIn::Path) if leases => {
                schema.pattern = Some(LEASE_ID_PATTERN.into());
            }
            ("id" | "check", ParameterIn::Path) => {
                schema.pattern = Some(ID_PATTERN.into());
                schema.min_length = Some(1);
                schema.max_length = Some(limits::MAX_ID_LEN);
            }
            // A log index is a u64: `int64` (signed) would tell a client
            // that the upper half of the range is out of bounds.
            ("index", ParameterIn::Query) => {
                schema.format = None;
            }
            ("status", ParameterIn::Path) => {
                schema.enum_values = Some(vec!["pass".into(), "warn".into(), "fail".into()]);
            }
            _ => {}
        }
    }
}

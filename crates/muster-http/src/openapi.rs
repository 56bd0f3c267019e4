//! The OpenAPI document, generated from the handlers and wire types. The
//! committed copy (`docs/openapi.json`) is checked against it by a test.

use axum::response::IntoResponse;
use utoipa::OpenApi;

use crate::api;

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "muster", description = "muster service registry: native HTTP API v1. Every read answers with the header X-Muster-Index; errors are {\"error\": {\"code\", \"message\", \"field\"}}, also on any route for a wrong method (405 method_not_allowed, with Allow), a path segment that is not UTF-8 (400 invalid_path), an oversized target (414 uri_too_long) or header block (431 headers_too_large)."),
    paths(
        api::instances::register, api::instances::get_one, api::instances::deregister,
        api::instances::heartbeat, api::instances::discover,
        api::checks::maintenance, api::checks::put_check, api::checks::delete_check, api::checks::report,
        api::services::list,
        api::leases::create, api::leases::get_one, api::leases::renew, api::leases::renew_many, api::leases::revoke,
        api::watch::watch,
        api::cluster::cluster, api::cluster::healthz,
        crate::metrics::render, serve,
    ),
    tags(
        (name = "instances", description = "Register, deregister, heartbeat and discover instances"),
        (name = "checks", description = "Server-run health checks, TTL check reports, maintenance"),
        (name = "services", description = "Services of a namespace"),
        (name = "leases", description = "Leases: one renewal keeps many instances alive"),
        (name = "watch", description = "Live changes as Server-Sent Events"),
        (name = "operations", description = "Cluster status, liveness, metrics, this document"),
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

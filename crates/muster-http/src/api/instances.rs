//! Registration, deregistration, heartbeats and discovery of instances.

use std::io::Write;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use muster_registry::{HealthFilter, Query, Renewed, ServiceKey, VersionMatch};
use muster_types::{
    ErrorBody, Instance, InstancesResponse, RegisterRequest, RenewResponse, WriteResponse,
    validate_service_name,
};

use super::{
    ApiPath, CONSISTENT_DOC, Call, JsonBody, Params, indexed, json_response, json_with_index,
};
use crate::HttpStateRef;
use crate::cache::Answer;
use crate::error::ApiError;
use crate::limit::Peer;
use crate::openapi::{BodyErrors, WriteErrors};
use crate::wire;

/// Register or replace an instance. Idempotent: the same body again changes
/// nothing. Answered only once the write is durable.
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}", tag = "instances",
    params(("service" = String, Path, description = "Service name (DNS label)"),
           ("id" = String, Path, description = "Instance id, unique within the service"),
           ("namespace" = Option<String>, Query, description = "Namespace (default `default`)")),
    request_body = RegisterRequest,
    responses((status = 200, description = "Registered; the instance as stored", body = Instance, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Invalid input", body = ErrorBody),
              (status = 404, description = "Unknown lease", body = ErrorBody),
              (status = 403, description = "Command checks are disabled on this registry", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn register(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath((service, id)): ApiPath<(String, String)>,
    params: Params,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    let reg = body.validate()?;
    let w = state
        .registry
        .register(&caller, &key, &id, reg.into())
        .await?;
    Ok(indexed(w.index, &wire::instance(&w.value)))
}

/// One instance.
#[utoipa::path(get, path = "/v1/services/{service}/instances/{id}", tag = "instances",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("namespace" = Option<String>, Query, description = "Namespace"),
           ("consistent" = Option<bool>, Query, description = CONSISTENT_DOC)),
    responses((status = 200, description = "The instance", body = Instance, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Invalid service name, id, namespace or parameter", body = ErrorBody),
              (status = 404, description = "No such instance", body = ErrorBody),
              (status = 503, description = "not_leader: a consistent read found no leader with a quorum in time", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath((service, id)): ApiPath<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let key = params.instance_key_with(service, &id, &["namespace", "consistent"])?;
    if params.consistent()? {
        state.registry.consistent(&caller, &key).await?;
    }
    let found = state.registry.instance(&caller, &key, &id)?;
    Ok(indexed(found.index, &wire::instance_state(&found.value)))
}

/// Deregister an instance. Answered once the removal is durable.
#[utoipa::path(delete, path = "/v1/services/{service}/instances/{id}", tag = "instances",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    responses((status = 200, description = "Removed", body = WriteResponse, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Invalid service name, id, namespace or parameter", body = ErrorBody),
              (status = 404, description = "No such instance", body = ErrorBody),
              WriteErrors))]
pub async fn deregister(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath((service, id)): ApiPath<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    let w = state.registry.deregister(&caller, &key, &id).await?;
    Ok(indexed(
        w.index,
        &WriteResponse {
            index: w.index,
            removed: w.value,
        },
    ))
}

/// Renew the lease of an instance (not a log write).
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/heartbeat", tag = "instances",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    responses((status = 200, description = "Renewed", body = RenewResponse),
              (status = 400, description = "Invalid service name, id, namespace or parameter", body = ErrorBody),
              (status = 404, description = "No such instance or lease: register again", body = ErrorBody),
              (status = 409, description = "The instance is persistent and has no lease", body = ErrorBody),
              WriteErrors))]
pub async fn heartbeat(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath((service, id)): ApiPath<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    Ok(renewed(state.registry.heartbeat(&caller, &key, &id).await?))
}

/// The answer to a renewal: a [`RenewResponse`].
pub fn renewed(r: Renewed) -> Response {
    json_response(renew_body(r.lease, r.ttl.as_millis() as u64))
}

/// A [`RenewResponse`] as JSON, written directly: it is the answer to every
/// heartbeat, and two fixed fields need no serializer (which, with the
/// lease id's `String`, cost more than the renewal itself). A test checks it
/// against serde's encoding.
fn renew_body(lease: u64, ttl_ms: u64) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // At most 50 bytes: 16 hex digits and 20 decimal ones around 14 fixed.
    const CAP: usize = 64;
    let mut buf = [0u8; CAP];
    let mut out = &mut buf[..];
    let mut id = *br#"{"id":"0000000000000000","ttl_ms":"#;
    // The 16 hex digits of `format_lease_id` (`write!` with `{:016x}`
    // costs more than the rest of this function).
    for (i, digit) in id[7..23].iter_mut().enumerate() {
        *digit = HEX[(lease >> (4 * (15 - i))) as usize & 0xf];
    }
    out.write_all(&id).expect("the answer fits the buffer");
    write!(out, "{ttl_ms}}}").expect("the answer fits the buffer");
    let len = CAP - out.len();
    // One allocation of the exact size (a Vec with spare capacity would
    // cost `Bytes` a second one).
    Bytes::copy_from_slice(&buf[..len])
}

/// Parses discovery filters shared by discovery and watch.
pub fn parse_query(params: &Params) -> Result<Query, ApiError> {
    let meta = params
        .all("meta")
        .into_iter()
        .map(|m| match m.split_once(':') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(ApiError::bad_param(
                "meta",
                format!("meta filter {m:?} must look like key:value"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let health = match params.get("health") {
        None | Some("passing") => HealthFilter::Passing,
        Some("any") => HealthFilter::Any,
        Some(other) => {
            return Err(ApiError::bad_param(
                "health",
                format!("health {other:?} must be \"passing\" or \"any\""),
            ));
        }
    };
    let version = params.get("version").map(VersionMatch::parse).transpose()?;
    Ok(Query {
        tags: params.all("tag"),
        meta,
        version,
        zone: params.get("zone").map(str::to_string),
        health,
    })
}

/// Discover instances of a service. Answers come from a per-query cache of
/// serialised bytes; with `index` the call blocks until the service changes.
#[utoipa::path(get, path = "/v1/services/{service}/instances", tag = "instances",
    params(("service" = String, Path, description = "Service name"),
           ("namespace" = Option<String>, Query, description = "Namespace"),
           ("tag" = Option<Vec<String>>, Query, description = "Required tag; repeat for several (all must match)"),
           ("meta" = Option<Vec<String>>, Query, description = "Required metadata `key:value`; repeatable"),
           ("version" = Option<String>, Query, description = "Semver range such as `^1.4` or `>=2,<3`; non-semver versions match by equality"),
           ("zone" = Option<String>, Query, description = "Zone"),
           ("health" = Option<String>, Query, description = "`passing` (default) or `any`"),
           ("index" = Option<u64>, Query, description = "Block until the service index exceeds this"),
           ("wait" = Option<String>, Query, description = "Longest block with `index`, e.g. `30s` (default 5m); over 10m is a 400"),
           ("consistent" = Option<bool>, Query, description = CONSISTENT_DOC)),
    responses((status = 200, description = "Matching instances; header X-Muster-Index", body = InstancesResponse, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Invalid parameter", body = ErrorBody),
              (status = 429, description = "`too_many_blocking_queries`: with `index`, the caps on parked blocking queries (in all, or from this address) are reached; or `rate_limited`, over the request-rate limit; header Retry-After", body = ErrorBody),
              (status = 503, description = "not_leader: a consistent read found no leader with a quorum in time", body = ErrorBody)))]
pub async fn discover(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    ApiPath(service): ApiPath<String>,
    Peer(peer): Peer,
    params: Params,
) -> Result<Response, ApiError> {
    params.only(&[
        "namespace",
        "tag",
        "meta",
        "version",
        "zone",
        "health",
        "index",
        "wait",
        "consistent",
    ])?;
    let key = ServiceKey::new(params.namespace()?, service);
    validate_service_name(&key.service)?;
    let query = parse_query(&params)?;
    if params.consistent()? {
        state.registry.consistent(&caller, &key).await?;
    }
    let index = match params.blocking()? {
        Some((index, wait)) => {
            // Held while parked; dropped with the future if the client goes.
            let _parked = state.caps.blocking.acquire(peer)?;
            state
                .registry
                .wait_service(&caller, &key, index, wait)
                .await?
        }
        None => state.registry.service_index(&caller, &key)?,
    };
    let cache_key = query.cache_key();
    if let Some(answer) = state.cache.get(&key, &cache_key, index) {
        return Ok(json_with_index(answer.index_header, answer.body));
    }
    let found = state.registry.discover(&caller, &key, &query)?;
    let body = InstancesResponse {
        namespace: key.namespace.to_string(),
        service: key.service.to_string(),
        index: found.index,
        instances: found.instances.iter().map(|i| wire::instance(i)).collect(),
    };
    let bytes = Bytes::from(serde_json::to_vec(&body).expect("wire types serialise"));
    let answer = Answer::new(found.index, bytes);
    state.cache.put(&key, &cache_key, answer.clone());
    Ok(json_with_index(answer.index_header, answer.body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_types::format_lease_id;

    #[test]
    fn renew_body_is_the_serde_encoding() {
        for (lease, ttl_ms) in [
            (1, 0),
            (0x00ab_cdef_0123_4567, 60_000),
            (u64::MAX, u64::MAX),
            (0x8000_0000_0000_0000, 1),
        ] {
            let expected = serde_json::to_vec(&RenewResponse {
                id: format_lease_id(lease),
                ttl_ms,
            })
            .unwrap();
            assert_eq!(
                renew_body(lease, ttl_ms),
                expected,
                "{}",
                String::from_utf8_lossy(&expected)
            );
        }
    }
}

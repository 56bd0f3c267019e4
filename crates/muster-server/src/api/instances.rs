//! Registration, deregistration, heartbeats and discovery of instances.

use std::io::Write;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use muster_catalog::{
    Command, HealthFilter, InstanceData, LeaseRef, Query, ServiceKey, VersionMatch,
};
use muster_types::{
    ErrorBody, Instance, InstancesResponse, RegisterRequest, RenewResponse, WriteResponse,
    format_lease_id, validate_service_name,
};
use rand::Rng;

use super::{JsonBody, Params, indexed, json_response, json_with_index, wait_for_change};
use crate::AppStateRef;
use crate::cache::Answer;
use crate::error::ApiError;
use crate::leases::RenewError;

/// Command checks run programs on the agent's host: only with the opt-in.
pub fn refuse_command_checks(
    state: &AppStateRef,
    checks: &[muster_types::Check],
) -> Result<(), ApiError> {
    if state.config.enable_command_checks {
        return Ok(());
    }
    match checks
        .iter()
        .position(|c| matches!(c.kind, muster_types::CheckKind::Command { .. }))
    {
        None => Ok(()),
        Some(i) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "command_checks_disabled",
            "command checks (args) run programs on the registry's host and are disabled; \
             start the agent with --enable-command-checks to allow them",
        )
        .with_field(format!("checks[{i}].args"))),
    }
}

/// A fresh lease id: random, never 0.
pub fn new_lease_id() -> u64 {
    rand::rng().random_range(1..=u64::MAX)
}

/// Register or replace an instance. Idempotent: the same body again changes
/// nothing. Answered only once the write is durable.
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}", tag = "instances",
    params(("service" = String, Path, description = "Service name (DNS label)"),
           ("id" = String, Path, description = "Instance id, unique within the service"),
           ("namespace" = Option<String>, Query, description = "Namespace (default `default`)")),
    request_body = RegisterRequest,
    responses((status = 200, description = "Registered; the instance as stored", body = Instance),
              (status = 400, description = "Invalid input", body = ErrorBody),
              (status = 404, description = "Unknown lease", body = ErrorBody),
              (status = 413, description = "Body too large", body = ErrorBody),
              (status = 422, description = "Checks are not supported yet", body = ErrorBody),
              (status = 503, description = "Not leader or shutting down", body = ErrorBody)))]
pub async fn register(
    State(state): State<AppStateRef>,
    Path((service, id)): Path<(String, String)>,
    params: Params,
    JsonBody(body): JsonBody<RegisterRequest>,
) -> Result<Response, ApiError> {
    let ServiceKey { namespace, service } = params.instance_key(service, &id)?;
    let reg = body.validate()?;
    refuse_command_checks(&state, &reg.checks)?;
    let lease = match (reg.ttl, reg.lease) {
        (Some(ttl), _) => LeaseRef::Own {
            id: new_lease_id(),
            ttl_ms: ttl.as_millis() as u64,
        },
        (None, Some(l)) => LeaseRef::Existing(l),
        (None, None) => LeaseRef::None,
    };
    // Refuse an unknown lease before it costs a log entry (apply re-checks,
    // so a revoke racing this request still cannot attach to a dead lease).
    if let LeaseRef::Existing(l) = lease
        && state
            .node
            .catalog()
            .read()
            .expect("catalog lock")
            .lease(l)
            .is_none()
    {
        return Err(muster_catalog::ApplyError::UnknownLease(l).into());
    }
    let cmd = Command::Register {
        namespace: namespace.to_string(),
        service: service.to_string(),
        instance: InstanceData {
            id,
            address: reg.address,
            port: reg.port,
            tags: reg.tags,
            meta: reg.meta,
            version: reg.version,
            zone: reg.zone,
            weight: reg.weight,
            checks: reg.checks,
        },
        lease,
    };
    let applied = state.node.propose(cmd).await?;
    let out = applied.result?;
    let inst = out.instance.expect("register yields the instance");
    // Registering counts as a heartbeat of the instance's lease.
    if let Some(l) = inst.lease.as_deref().and_then(muster_types::parse_lease_id) {
        let _ = state.leases.renew(l);
    }
    metrics::counter!("muster_registrations_total").increment(1);
    Ok(indexed(applied.index, &*inst))
}

/// One instance.
#[utoipa::path(get, path = "/v1/services/{service}/instances/{id}", tag = "instances",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    responses((status = 200, description = "The instance", body = Instance),
              (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn get_one(
    State(state): State<AppStateRef>,
    Path((service, id)): Path<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    let (index, mut inst) = {
        let c = state.node.catalog().read().expect("catalog lock");
        let inst = c.instance(&key, &id).ok_or_else(|| {
            ApiError::not_found(
                "not_found",
                format!("instance {id:?} of service {:?} not found", key.service),
            )
        })?;
        (c.service_index(&key), (**inst).clone())
    };
    // The last run of each check lives in memory on the leader, not in the log.
    for check in &mut inst.checks {
        if let Some(rt) = state.checks.runtime(&key, &id, &check.id) {
            check.last_run_ms = rt.last_run_ms;
            check.last_output = rt.last_output.filter(|o| *o != check.output);
        }
    }
    Ok(indexed(index, &inst))
}

/// Deregister an instance. Answered once the removal is durable.
#[utoipa::path(delete, path = "/v1/services/{service}/instances/{id}", tag = "instances",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    responses((status = 200, description = "Removed", body = WriteResponse),
              (status = 404, description = "No such instance", body = ErrorBody)))]
pub async fn deregister(
    State(state): State<AppStateRef>,
    Path((service, id)): Path<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let ServiceKey { namespace, service } = params.instance_key(service, &id)?;
    let applied = state
        .node
        .propose(Command::Deregister {
            namespace: namespace.to_string(),
            service: service.to_string(),
            id,
        })
        .await?;
    let out = applied.result?;
    Ok(indexed(
        applied.index,
        &WriteResponse {
            index: applied.index,
            removed: out.removed,
        },
    ))
}

/// Renew the lease of an instance (not a log write).
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/heartbeat", tag = "instances",
    params(("service" = String, Path, description = "Service name"),
           ("id" = String, Path, description = "Instance id"),
           ("namespace" = Option<String>, Query, description = "Namespace")),
    responses((status = 200, description = "Renewed", body = RenewResponse),
              (status = 404, description = "No such instance or lease: register again", body = ErrorBody),
              (status = 409, description = "The instance is persistent and has no lease", body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<AppStateRef>,
    Path((service, id)): Path<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let key = params.instance_key(service, &id)?;
    let lease = {
        let c = state.node.catalog().read().expect("catalog lock");
        let inst = c.instance(&key, &id).ok_or_else(|| {
            ApiError::not_found(
                "not_found",
                format!(
                    "instance {id:?} of service {:?} not found; register it again",
                    key.service
                ),
            )
        })?;
        inst.lease.clone()
    };
    let Some(lease) = lease.as_deref().and_then(muster_types::parse_lease_id) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_lease",
            "instance is persistent (registered without ttl or lease); it has nothing to renew",
        ));
    };
    renew_lease(&state, lease)
}

/// Renews one lease in memory, mapping failures to API errors. The answer
/// is a [`RenewResponse`].
pub fn renew_lease(state: &AppStateRef, lease: u64) -> Result<Response, ApiError> {
    match state.leases.renew(lease) {
        Ok(ttl) => Ok(json_response(renew_body(lease, ttl.as_millis() as u64))),
        Err(RenewError::NotFound) => {
            metrics::counter!("muster_lease_renewal_failures_total").increment(1);
            Err(ApiError::not_found(
                "lease_not_found",
                format!(
                    "lease {} not found (expired or revoked); register again",
                    format_lease_id(lease)
                ),
            ))
        }
        Err(RenewError::NotLeader) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_leader",
            "this node does not hold lease timers; send renewals to the leader",
        )),
    }
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
           ("wait" = Option<String>, Query, description = "Longest block, e.g. `30s` (default 5m, max 10m)")),
    responses((status = 200, description = "Matching instances; header X-Muster-Index", body = InstancesResponse),
              (status = 400, description = "Invalid parameter", body = ErrorBody)))]
pub async fn discover(
    State(state): State<AppStateRef>,
    Path(service): Path<String>,
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
    ])?;
    let key = ServiceKey::new(params.namespace()?, service);
    validate_service_name(&key.service)?;
    let query = parse_query(&params)?;
    if let Some((index, wait)) = params.blocking()? {
        let rx = state.hub.subscribe_service(key.clone());
        let current = || {
            state
                .node
                .catalog()
                .read()
                .expect("catalog lock")
                .service_index(&key)
        };
        wait_for_change(rx, current, index, wait, state.shutdown.clone()).await;
    }
    let cache_key = query.cache_key();
    let c = state.node.catalog().read().expect("catalog lock");
    let index = c.service_index(&key);
    if let Some(answer) = state.cache.get(&key, &cache_key, index) {
        return Ok(json_with_index(answer.index_header, answer.body));
    }
    let (index, found) = c.query(&key, &query);
    drop(c);
    let body = InstancesResponse {
        namespace: key.namespace.to_string(),
        service: key.service.to_string(),
        index,
        instances: found.iter().map(|i| (**i).clone()).collect(),
    };
    let bytes = Bytes::from(serde_json::to_vec(&body).expect("wire types serialise"));
    let answer = Answer::new(index, bytes);
    state.cache.put(key, cache_key, answer.clone());
    Ok(json_with_index(answer.index_header, answer.body))
}

#[cfg(test)]
mod tests {
    use super::*;

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

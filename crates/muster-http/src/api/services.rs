//! The list of services of a namespace.

use axum::extract::State;
use axum::response::Response;
use muster_types::{ErrorBody, ServicesResponse};

use super::{CONSISTENT_DOC, Call, Params, indexed};
use crate::HttpStateRef;
use crate::error::ApiError;
use crate::limit::Peer;

/// Services with instance counts by health; blocking with `index` + `wait`
/// (woken by any change in the namespace).
#[utoipa::path(get, path = "/v1/services", tag = "services",
    params(("namespace" = Option<String>, Query, description = "Namespace"),
           ("index" = Option<u64>, Query, description = "Block until the namespace index exceeds this"),
           ("wait" = Option<String>, Query, description = "Longest block with `index`, e.g. `30s` (default 5m); over 10m is a 400"),
           ("consistent" = Option<bool>, Query, description = CONSISTENT_DOC)),
    responses((status = 200, description = "Services; header X-Muster-Index", body = ServicesResponse, headers(("X-Muster-Index" = u64, description = "The index this answer reflects"))),
              (status = 400, description = "Invalid parameter", body = ErrorBody),
              (status = 429, description = "`too_many_blocking_queries`: with `index`, the caps on parked blocking queries (in all, or from this address) are reached; or `rate_limited`, over the request-rate limit; header Retry-After", body = ErrorBody),
              (status = 503, description = "not_leader: a consistent read found no leader with a quorum in time", body = ErrorBody)))]
pub async fn list(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    Peer(peer): Peer,
    params: Params,
) -> Result<Response, ApiError> {
    params.only(&["namespace", "index", "wait", "consistent"])?;
    let namespace = params.namespace()?.to_string();
    if params.consistent()? {
        state
            .registry
            .consistent_services(&caller, &namespace)
            .await?;
    }
    if let Some((index, wait)) = params.blocking()? {
        // Held while parked; dropped with the future if the client goes.
        let _parked = state.caps.blocking.acquire(peer)?;
        state
            .registry
            .wait_services(&caller, &namespace, index, wait)
            .await?;
    }
    let list = state.registry.services(&caller, &namespace)?;
    let body = ServicesResponse {
        services: list.services,
        namespace,
        index: list.index,
    };
    Ok(indexed(list.index, &body))
}

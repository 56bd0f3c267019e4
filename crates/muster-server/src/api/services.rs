//! The list of services of a namespace.

use axum::extract::State;
use axum::response::Response;
use muster_types::{ErrorBody, ServicesResponse};

use super::{Params, indexed, wait_for_change};
use crate::AppStateRef;
use crate::error::ApiError;

/// Services with instance counts by health; blocking with `index` + `wait`
/// (woken by any change in the namespace).
#[utoipa::path(get, path = "/v1/services", tag = "services",
    params(("namespace" = Option<String>, Query, description = "Namespace"),
           ("index" = Option<u64>, Query, description = "Block until the namespace index exceeds this"),
           ("wait" = Option<String>, Query, description = "Longest block, e.g. `30s`")),
    responses((status = 200, description = "Services; header X-Muster-Index", body = ServicesResponse),
              (status = 400, description = "Invalid parameter", body = ErrorBody)))]
pub async fn list(State(state): State<AppStateRef>, params: Params) -> Result<Response, ApiError> {
    params.only(&["namespace", "index", "wait"])?;
    let namespace = params.namespace()?.to_string();
    if let Some((index, wait)) = params.blocking()? {
        let rx = state.hub.subscribe_namespace(namespace.clone());
        let current = || {
            state
                .node
                .catalog()
                .read()
                .expect("catalog lock")
                .namespace_index(&namespace)
        };
        wait_for_change(rx, current, index, wait, state.shutdown.clone()).await;
    }
    let c = state.node.catalog().read().expect("catalog lock");
    let index = c.namespace_index(&namespace);
    let body = ServicesResponse {
        services: c.services(&namespace),
        namespace,
        index,
    };
    drop(c);
    Ok(indexed(index, &body))
}

//! ACL routes: bootstrap, tokens and policies. All but bootstrap and
//! `token/self` need the `acl` right; with ACLs off they answer 400
//! `acl_disabled`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use muster_types::ErrorBody;
use muster_types::acl::{
    CreatedToken, PoliciesResponse, Policy, PolicyRequest, TokenInfo, TokenRequest, TokensResponse,
};

use super::{ApiPath, Call, JsonBody, Params};
use crate::HttpStateRef;
use crate::error::ApiError;
use crate::openapi::{BodyErrors, WriteErrors};

/// Makes the first management token, once ever. Needs no token; the
/// answer is the only place its secret is ever shown.
#[utoipa::path(post, path = "/v1/acl/bootstrap", tag = "acl",
    responses((status = 200, description = "The management token, with its secret", body = CreatedToken),
              (status = 400, description = "acl_disabled: the agent runs without --acl", body = ErrorBody),
              (status = 409, description = "acl_bootstrapped: done before", body = ErrorBody),
              WriteErrors))]
pub async fn bootstrap(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
) -> Result<axum::Json<CreatedToken>, ApiError> {
    params.only(&[])?;
    Ok(axum::Json(state.registry.acl_bootstrap(&caller).await?))
}

/// Creates a token carrying policies (each must exist); the answer is the
/// only place its secret is ever shown.
#[utoipa::path(post, path = "/v1/acl/tokens", tag = "acl",
    request_body = TokenRequest,
    responses((status = 201, description = "The token, with its secret", body = CreatedToken),
              (status = 400, description = "Invalid body, an unknown policy, or acl_disabled", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn create_token(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<Response, ApiError> {
    params.only(&[])?;
    let t = state.registry.create_token(&caller, body).await?;
    Ok((StatusCode::CREATED, axum::Json(t)).into_response())
}

/// Every token, never a secret.
#[utoipa::path(get, path = "/v1/acl/tokens", tag = "acl",
    responses((status = 200, description = "Every token", body = TokensResponse),
              (status = 400, description = "acl_disabled (the agent runs without --acl), or a parameter given", body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
) -> Result<axum::Json<TokensResponse>, ApiError> {
    params.only(&[])?;
    Ok(axum::Json(TokensResponse {
        tokens: state.registry.tokens(&caller)?,
    }))
}

/// The token presented with this request (any valid token may ask).
#[utoipa::path(get, path = "/v1/acl/token/self", tag = "acl",
    responses((status = 200, description = "The caller's token", body = TokenInfo),
              (status = 400, description = "acl_disabled (the agent runs without --acl), or a parameter given", body = ErrorBody)))]
pub async fn token_self(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
) -> Result<axum::Json<TokenInfo>, ApiError> {
    params.only(&[])?;
    Ok(axum::Json(state.registry.token_self(&caller)?))
}

/// One token, never its secret.
#[utoipa::path(get, path = "/v1/acl/tokens/{accessor}", tag = "acl",
    params(("accessor" = String, Path, description = "Token accessor, or `anonymous`")),
    responses((status = 200, description = "The token", body = TokenInfo),
              (status = 400, description = "acl_disabled (the agent runs without --acl), or a parameter given", body = ErrorBody),
              (status = 404, description = "token_not_found", body = ErrorBody)))]
pub async fn get_token(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
    ApiPath(accessor): ApiPath<String>,
) -> Result<axum::Json<TokenInfo>, ApiError> {
    params.only(&[])?;
    Ok(axum::Json(state.registry.token(&caller, &accessor)?))
}

/// Changes a token's description and policies. `anonymous` is the token of
/// callers without one: give it a policy to allow anonymous reads.
#[utoipa::path(put, path = "/v1/acl/tokens/{accessor}", tag = "acl",
    params(("accessor" = String, Path, description = "Token accessor, or `anonymous`")),
    request_body = TokenRequest,
    responses((status = 200, description = "The token as it now is", body = TokenInfo),
              (status = 400, description = "Invalid body or an unknown policy", body = ErrorBody),
              (status = 404, description = "token_not_found", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn update_token(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
    ApiPath(accessor): ApiPath<String>,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<axum::Json<TokenInfo>, ApiError> {
    params.only(&[])?;
    Ok(axum::Json(
        state
            .registry
            .update_token(&caller, &accessor, body)
            .await?,
    ))
}

/// Revokes a token: refused by every node once it applied the revoke.
#[utoipa::path(delete, path = "/v1/acl/tokens/{accessor}", tag = "acl",
    params(("accessor" = String, Path, description = "Token accessor")),
    responses((status = 204, description = "Revoked"),
              (status = 400, description = "The anonymous token (take its policies away instead)", body = ErrorBody),
              (status = 404, description = "token_not_found", body = ErrorBody),
              WriteErrors))]
pub async fn revoke_token(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
    ApiPath(accessor): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    params.only(&[])?;
    state.registry.revoke_token(&caller, &accessor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every policy.
#[utoipa::path(get, path = "/v1/acl/policies", tag = "acl",
    responses((status = 200, description = "Every policy", body = PoliciesResponse),
              (status = 400, description = "acl_disabled (the agent runs without --acl), or a parameter given", body = ErrorBody)))]
pub async fn list_policies(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
) -> Result<axum::Json<PoliciesResponse>, ApiError> {
    params.only(&[])?;
    Ok(axum::Json(PoliciesResponse {
        policies: state.registry.policies(&caller)?,
    }))
}

/// One policy.
#[utoipa::path(get, path = "/v1/acl/policies/{name}", tag = "acl",
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 200, description = "The policy", body = Policy),
              (status = 400, description = "acl_disabled (the agent runs without --acl), or a parameter given", body = ErrorBody),
              (status = 404, description = "policy_not_found", body = ErrorBody)))]
pub async fn get_policy(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::Json<Policy>, ApiError> {
    params.only(&[])?;
    Ok(axum::Json(state.registry.policy(&caller, &name)?))
}

/// Creates or replaces a policy.
#[utoipa::path(put, path = "/v1/acl/policies/{name}", tag = "acl",
    params(("name" = String, Path, description = "Policy name (a DNS label)")),
    request_body = PolicyRequest,
    responses((status = 200, description = "The policy", body = Policy),
              (status = 400, description = "Invalid name or rule", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn put_policy(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
    ApiPath(name): ApiPath<String>,
    JsonBody(body): JsonBody<PolicyRequest>,
) -> Result<axum::Json<Policy>, ApiError> {
    params.only(&[])?;
    Ok(axum::Json(
        state.registry.set_policy(&caller, &name, body).await?,
    ))
}

/// Deletes a policy; tokens naming it lose what it granted.
#[utoipa::path(delete, path = "/v1/acl/policies/{name}", tag = "acl",
    params(("name" = String, Path, description = "Policy name")),
    responses((status = 204, description = "Deleted"),
              (status = 400, description = "acl_disabled (the agent runs without --acl), or a parameter given", body = ErrorBody),
              (status = 404, description = "policy_not_found", body = ErrorBody),
              WriteErrors))]
pub async fn delete_policy(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    params: Params,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    params.only(&[])?;
    state.registry.delete_policy(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

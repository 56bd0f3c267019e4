//! HTTP API v1: routing, and the extractors every handler shares (JSON
//! bodies with typed errors, query parameters checked against a list).

pub mod acl;
pub mod checks;
pub mod cluster;
pub mod instances;
pub mod leases;
pub mod services;
pub mod snapshot;
pub mod watch;
pub mod watch_many;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, RawQuery, Request};
use axum::handler::Handler;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::MethodRouter;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use muster_registry::{Caller, ServiceKey};
use muster_types::{DEFAULT_NAMESPACE, INDEX_HEADER, limits, validate_namespace};
use rand::Rng;
use serde::de::DeserializeOwned;
use utoipa::PartialSchema;

use crate::HttpStateRef;
use crate::error::ApiError;
use crate::metrics::{self, TrackLayer};

/// The OpenAPI description of `?consistent`, shared by every read that takes it.
pub(crate) const CONSISTENT_DOC: &str = "Linearizable read (bare `?consistent` or `true`): the leader confirms with a quorum that it leads (read-index), asked of it by a follower, and the answer reflects at least its commit index; 503 `not_leader` when no leader with a quorum answers within 5 s";

/// Adds a route whose handlers count and time their requests under the
/// route's template (`metrics::TrackLayer`), answering other methods with
/// 405 (and `Allow`), tracked the same way:
/// `route!(router, "/v1/leases/{id}", get(leases::get_one).delete(leases::revoke))`.
///
/// The layer wraps each handler rather than the route's `MethodRouter`:
/// axum turns every layer around a route into one more boxed service,
/// cloned (a boxed clone) and called (a boxed future) per request.
macro_rules! route {
    ($router:expr, $path:literal, $($method:ident($handler:expr)).+) => {{
        let track = TrackLayer::new($path);
        $router.route(
            $path,
            MethodRouter::new()
                $(.$method(Handler::layer($handler, track.clone())))+
                .fallback(Handler::layer(method_not_allowed, track)),
        )
    }};
}

/// Builds the router of every route, each counting and timing its own
/// requests. Bodies are capped where they are read ([`JsonBody`]).
pub fn router(state: HttpStateRef) -> Router {
    let r = Router::new();
    let r = route!(r, "/v1/services", get(services::list));
    let r = route!(
        r,
        "/v1/services/{service}/instances",
        get(instances::discover)
    );
    let r = route!(
        r,
        "/v1/services/{service}/instances/{id}",
        put(instances::register)
            .get(instances::get_one)
            .delete(instances::deregister)
    );
    let r = route!(
        r,
        "/v1/services/{service}/instances/{id}/heartbeat",
        put(instances::heartbeat)
    );
    let r = route!(
        r,
        "/v1/services/{service}/instances/{id}/maintenance",
        put(checks::maintenance)
    );
    let r = route!(
        r,
        "/v1/services/{service}/instances/{id}/checks/{check}",
        put(checks::put_check).delete(checks::delete_check)
    );
    let r = route!(
        r,
        "/v1/services/{service}/instances/{id}/checks/{check}/{status}",
        put(checks::report)
    );
    let r = route!(r, "/v1/leases", post(leases::create));
    let r = route!(r, "/v1/leases/renew", post(leases::renew_many));
    let r = route!(
        r,
        "/v1/leases/{id}",
        get(leases::get_one).delete(leases::revoke)
    );
    let r = route!(r, "/v1/leases/{id}/renew", put(leases::renew));
    let r = route!(
        r,
        "/v1/watch",
        get(watch::watch).post(watch_many::watch_many)
    );
    let r = route!(r, "/v1/cluster", get(cluster::cluster));
    let r = route!(r, "/v1/cluster/members", post(cluster::join));
    let r = route!(r, "/v1/cluster/members/{id}", delete(cluster::leave));
    let r = route!(
        r,
        "/v1/cluster/transfer-leader",
        post(cluster::transfer_leader)
    );
    let r = route!(r, "/v1/snapshot", get(snapshot::save));
    let r = route!(r, "/v1/snapshot/restore", post(snapshot::restore));
    let r = route!(r, "/v1/acl/bootstrap", post(acl::bootstrap));
    let r = route!(
        r,
        "/v1/acl/tokens",
        get(acl::list_tokens).post(acl::create_token)
    );
    let r = route!(r, "/v1/acl/token/self", get(acl::token_self));
    let r = route!(
        r,
        "/v1/acl/tokens/{accessor}",
        get(acl::get_token)
            .put(acl::update_token)
            .delete(acl::revoke_token)
    );
    let r = route!(r, "/v1/acl/policies", get(acl::list_policies));
    let r = route!(
        r,
        "/v1/acl/policies/{name}",
        get(acl::get_policy)
            .put(acl::put_policy)
            .delete(acl::delete_policy)
    );
    let r = route!(r, "/v1/openapi.json", get(crate::openapi::serve));
    let r = route!(r, "/metrics", get(crate::metrics::render));
    let r = route!(r, "/healthz", get(cluster::healthz));
    r.fallback(Handler::layer(
        not_found,
        TrackLayer::new(metrics::UNMATCHED),
    ))
    .with_state(state)
}

/// A known route asked with a method it does not have: the typed error,
/// with the route's methods in `Allow` (axum adds it to the fallback's
/// answer).
async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this route does not take {method}; its methods are in the Allow header"),
    )
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "no_route",
        "no such route; see /v1/openapi.json for the API",
    )
}

/// The caller of a request: the ACL token it presents, as
/// `Authorization: Bearer <secret>` or `X-Muster-Token: <secret>`, or none
/// (anonymous). The registry authorises every operation.
pub struct Call(pub Caller);

/// The header a token may also come in (as Consul's `X-Consul-Token`).
pub const TOKEN_HEADER: &str = "x-muster-token";

impl<S: Send + Sync> FromRequestParts<S> for Call {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        caller_of(&parts.headers).map(Call)
    }
}

/// The caller a request's headers name. A malformed `Authorization` is an
/// error, not an anonymous call: a client that meant to authenticate must
/// hear that it did not.
pub(crate) fn caller_of(headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", m.to_string());
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| bad("the Authorization header is not ASCII"))?;
        let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(bad(
                "the Authorization header must be `Bearer <token>` (or send X-Muster-Token)",
            ));
        }
        return Ok(Caller::with_token(token.trim()));
    }
    if let Some(v) = headers.get(TOKEN_HEADER) {
        let v = v
            .to_str()
            .map_err(|_| bad("the X-Muster-Token header is not ASCII"))?;
        if v.trim().is_empty() {
            return Err(bad("the X-Muster-Token header is empty"));
        }
        return Ok(Caller::with_token(v.trim()));
    }
    Ok(Caller::anonymous())
}

/// Path parameters, percent-decoded, as axum's `Path` extracts them, but
/// with typed rejections: a segment that does not decode to UTF-8 is a 400
/// `invalid_path` naming the parameter, not axum's plain-text answer.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(r) => Err(path_rejection(r)),
        }
    }
}

/// The typed error of a path that did not extract. Only a segment that is
/// not UTF-8 can fail for the `String` parameters of the routes; anything
/// else is a route declared wrong, a server error.
fn path_rejection(r: PathRejection) -> ApiError {
    use axum::extract::path::ErrorKind;

    if let PathRejection::FailedToDeserializePathParams(e) = &r
        && let ErrorKind::InvalidUtf8InPathParam { key } = e.kind()
    {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("path parameter {key} is not valid UTF-8 once percent-decoded"),
        )
        .with_field(key.as_str());
    }
    if r.status().is_client_error() {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", r.body_text())
    } else {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", r.body_text())
    }
}

/// A JSON body of at most [`limits::MAX_BODY_BYTES`]: malformed JSON,
/// unknown fields and oversized bodies become typed API errors instead of
/// axum's plain-text rejections. The limit is applied here rather than by a
/// `DefaultBodyLimit` layer, so requests without a body (heartbeats,
/// lookups) do not pay for it.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + PartialSchema> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let LimitedBody(bytes) = LimitedBody::from_request(req, state).await?;
        decode_json(&bytes).map(JsonBody)
    }
}

/// A raw body of at most [`limits::MAX_BODY_BYTES`], for routes whose body
/// is optional: oversized and unreadable bodies become typed API errors.
pub struct LimitedBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for LimitedBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let deadline = req
            .extensions()
            .get::<crate::limit::Conn>()
            .map_or(crate::serve::Limits::default().body_timeout, |c| {
                c.body_timeout
            });
        let body = Limited::new(req.into_body(), limits::MAX_BODY_BYTES);
        let collected = tokio::time::timeout(deadline, body.collect())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!("the request body did not arrive within {deadline:?}"),
                )
            })?;
        let bytes = collected
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!(
                            "request body is larger than {} bytes",
                            limits::MAX_BODY_BYTES
                        ),
                    )
                } else {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        format!("Failed to buffer the request body: {e}"),
                    )
                }
            })?
            .to_bytes();
        Ok(LimitedBody(bytes))
    }
}

/// Decodes a JSON body into a wire type, with typed errors: a value that
/// does not fit names the field by its path (`checks[0].interval`), and a
/// missing field is found from the type's schema.
pub fn decode_json<T: DeserializeOwned + PartialSchema>(bytes: &[u8]) -> Result<T, ApiError> {
    use serde_json::error::Category;

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let (path, err) = match serde_path_to_error::deserialize(&mut de) {
        // Nothing but whitespace may follow the value.
        Ok(v) => match de.end() {
            Ok(()) => return Ok(v),
            Err(e) => (String::from("."), e),
        },
        Err(e) => (e.path().to_string(), e.into_inner()),
    };
    Err(match err.classify() {
        Category::Data => {
            let e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", err.to_string());
            let field = match path.as_str() {
                "." => missing_field::<T>(bytes),
                _ => Some(path),
            };
            match field {
                Some(f) => e.with_field(f),
                None => e,
            }
        }
        _ => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("request body is not valid JSON: {err}"),
        ),
    })
}

/// The first property `T`'s schema requires that the body's object lacks.
fn missing_field<T: PartialSchema>(bytes: &[u8]) -> Option<String> {
    use utoipa::openapi::{RefOr, schema::Schema};

    let body: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(bytes).ok()?;
    match T::schema() {
        RefOr::T(Schema::Object(o)) => o.required.into_iter().find(|f| !body.contains_key(f)),
        _ => None,
    }
}

/// Query-string parameters, repeated keys kept, checked against what a
/// route accepts so a typo is an error rather than a silently ignored filter.
pub struct Params(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Ok(RawQuery(q)) = RawQuery::from_request_parts(parts, state).await;
        Params::parse(q.as_deref())
    }
}

impl Params {
    /// Decodes a raw query string (`None` when the target has no `?`):
    /// `application/x-www-form-urlencoded` pairs, percent-decoded, in order.
    pub fn parse(query: Option<&str>) -> Result<Params, ApiError> {
        let pairs = match query {
            None => Vec::new(),
            Some(q) => serde_urlencoded::from_str(q).map_err(|e| {
                ApiError::bad_param("query", format!("query string is malformed: {e}"))
            })?,
        };
        Ok(Params(pairs))
    }

    /// Fails on any parameter not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for (k, _) in &self.0 {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::bad_param(
                    k,
                    format!(
                        "unknown parameter {k:?}; this route accepts: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The last value of a parameter.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable parameter.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The namespace (default `default`), validated.
    pub fn namespace(&self) -> Result<&str, ApiError> {
        let ns = self.get("namespace").unwrap_or(DEFAULT_NAMESPACE);
        validate_namespace(ns)?;
        Ok(ns)
    }

    /// The key of an instance route: only `namespace` accepted, and the
    /// namespace, service name and instance id validated.
    pub fn instance_key(&self, service: String, id: &str) -> Result<ServiceKey, ApiError> {
        self.instance_key_with(service, id, &["namespace"])
    }

    /// [`Params::instance_key`] for a route that also takes `allowed`
    /// parameters (which must include `namespace`).
    pub fn instance_key_with(
        &self,
        service: String,
        id: &str,
        allowed: &[&str],
    ) -> Result<ServiceKey, ApiError> {
        self.only(allowed)?;
        let key = ServiceKey::new(self.namespace()?, service);
        muster_types::validate_service_name(&key.service)?;
        muster_types::validate_instance_id(id)?;
        Ok(key)
    }

    /// `consistent`: present (bare, or `true`) asks for a linearizable
    /// read; absent or `false` reads this node's applied state.
    pub fn consistent(&self) -> Result<bool, ApiError> {
        match self.get("consistent") {
            None | Some("false") => Ok(false),
            Some("" | "true") => Ok(true),
            Some(v) => Err(ApiError::bad_param(
                "consistent",
                format!("consistent takes no value, or true or false; not {v:?}"),
            )),
        }
    }

    /// A blocking-query request: `index` and `wait`, jittered. A `wait`
    /// is checked the same way whether or not `index` came with it: over
    /// [`limits::MAX_WAIT_MS`] is a 400, never silently shortened.
    pub fn blocking(&self) -> Result<Option<(u64, Duration)>, ApiError> {
        let wait = self.wait()?;
        let Some(index) = self.get("index") else {
            if wait.is_some() {
                return Err(ApiError::bad_param(
                    "wait",
                    "wait needs index: pass the X-Muster-Index of your last read",
                ));
            }
            return Ok(None);
        };
        let index: u64 = index.parse().map_err(|_| {
            ApiError::bad_param(
                "index",
                format!("index {index:?} is not a non-negative integer"),
            )
        })?;
        let wait = wait.unwrap_or(Duration::from_millis(limits::DEFAULT_WAIT_MS));
        // Jitter spreads the return of many waiters that started together.
        let jitter = rand::rng().random_range(0..=wait.as_millis() as u64 / 16);
        Ok(Some((index, wait + Duration::from_millis(jitter))))
    }

    /// The `wait` parameter: a duration of at most [`limits::MAX_WAIT_MS`].
    fn wait(&self) -> Result<Option<Duration>, ApiError> {
        let Some(w) = self.get("wait") else {
            return Ok(None);
        };
        let wait = muster_types::parse_duration(w).map_err(|m| ApiError::bad_param("wait", m))?;
        let max = Duration::from_millis(limits::MAX_WAIT_MS);
        if wait > max {
            return Err(ApiError::bad_param(
                "wait",
                format!(
                    "wait {w:?} is too long: it must be at most {}",
                    muster_types::format_duration(max)
                ),
            ));
        }
        Ok(Some(wait))
    }
}

/// A JSON response of encoded bytes.
pub fn json_response(body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The index header's name, checked once rather than per response.
const INDEX: HeaderName = HeaderName::from_static(INDEX_HEADER);

/// A JSON response carrying the index it reflects.
pub fn indexed_json(index: u64, body: Bytes) -> Response {
    json_with_index(HeaderValue::from(index), body)
}

/// A JSON response with its index already made into a header value.
pub fn json_with_index(index: HeaderValue, body: Bytes) -> Response {
    let mut resp = json_response(body);
    resp.headers_mut().insert(INDEX, index);
    resp
}

/// Serialises a value into a response with its index.
pub fn indexed<T: serde::Serialize>(index: u64, value: &T) -> Response {
    indexed_json(
        index,
        Bytes::from(serde_json::to_vec(value).expect("wire types serialise")),
    )
}

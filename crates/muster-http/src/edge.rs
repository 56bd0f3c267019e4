//! What is checked of a request before it is routed: the length of its
//! target and the size of its header block, each refused with the typed
//! error of the API (414 `uri_too_long`, 431 `headers_too_large`), and the
//! request-rate limit (429 `rate_limited`, [`crate::limit`]).
//!
//! hyper has limits of its own, checked while it parses a request head:
//! over HTTP/1 a target of more than 65 534 bytes, a head larger than its
//! read buffer (about 400 KiB) or with more than 100 headers; over HTTP/2
//! a header list over 16 KiB. It answers those itself with a bare status
//! line (no body) and closes the connection; it offers no hook to write a
//! body. The limits here are lower than hyper's HTTP/1 ones, so a request
//! that is too large, but not so large that hyper cannot read it, gets the
//! typed answer. Costs a request one pass over its headers.

use std::future::{Ready, ready};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::future::Either;
use muster_types::limits::{MAX_HEADER_BYTES, MAX_URI_BYTES};
use tower::Service;

use crate::error::ApiError;
use crate::limit::{Conn, Rate};
use crate::metrics;

/// Wraps the router: refuses what [`refusal`] finds and what is over the
/// request-rate limit, passes the rest on.
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    rate: Option<Arc<Rate>>,
}

impl<S> Edge<S> {
    /// Checks requests before `inner` sees them.
    pub fn new(inner: S) -> Self {
        Edge { inner, rate: None }
    }

    /// [`Edge::new`], and the request-rate limit if there is one: every
    /// request but `/healthz` (a supervisor's probe keeps its answer) is
    /// counted against its token or source address.
    pub(crate) fn with_rate(inner: S, rate: Option<Arc<Rate>>) -> Self {
        Edge { inner, rate }
    }
}

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if let Some(e) = refusal(&req) {
            metrics::count_unrouted(req.method(), e.status.as_u16());
            return Either::Left(ready(Ok(e.into_response())));
        }
        if let Some(rate) = &self.rate
            && req.uri().path() != "/healthz"
        {
            let source = req.extensions().get::<Conn>().map(|c| c.source);
            if let Err(e) = rate.check(req.headers(), source) {
                metrics::count_unrouted(req.method(), e.status.as_u16());
                return Either::Left(ready(Ok(e.into_response())));
            }
        }
        Either::Right(self.inner.call(req))
    }
}

/// Why a request is refused before routing, if it is: a target (path and
/// query) over [`MAX_URI_BYTES`], or header names and values over
/// [`MAX_HEADER_BYTES`] in all.
pub fn refusal(req: &Request) -> Option<ApiError> {
    let target = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {target} bytes; at most {MAX_URI_BYTES} are accepted"),
        ));
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request headers are {headers} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        ));
    }
    None
}

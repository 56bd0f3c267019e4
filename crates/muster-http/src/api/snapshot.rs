//! Backup and restore of the whole registry (`muster snapshot save` and
//! `restore`). Both stream: neither the server nor the client holds the
//! whole file.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use muster_types::{ErrorBody, INDEX_HEADER, RestoreResult};
use tokio_util::io::StreamReader;

use super::Call;
use crate::HttpStateRef;
use crate::error::ApiError;
use crate::openapi::{BodyErrors, WriteErrors};

/// The header naming how many instances a backup holds, for progress.
pub const INSTANCES_HEADER: &str = "x-muster-backup-instances";

/// A consistent point-in-time backup of the whole registry, from any node:
/// read through the leader's read-index, so every write acknowledged before
/// the request is in it; `X-Muster-Index` is the index it reflects. The
/// body is the backup file (`MBAK` header, snapshot frames, CRC-32C
/// trailer), streamed as it is encoded.
#[utoipa::path(get, path = "/v1/snapshot", tag = "operations",
    responses((status = 200, description = "The backup file", content_type = "application/octet-stream",
               headers(("X-Muster-Index" = u64, description = "The log index the backup reflects"),
                       ("X-Muster-Backup-Instances" = u64, description = "Instances in the backup"))),
              (status = 503, description = "not_leader: no leader with a quorum answered in time", body = ErrorBody)))]
pub async fn save(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
) -> Result<Response, ApiError> {
    let stream = state.registry.snapshot_save(&caller).await?;
    let header = stream.header().clone();
    let pieces = futures::stream::unfold(stream, |mut s| async move {
        s.next_piece().await.map(|p| (p.map(Bytes::from), s))
    });
    let mut response = Body::from_stream(pieces).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(INDEX_HEADER, HeaderValue::from(header.index));
    headers.insert(INSTANCES_HEADER, HeaderValue::from(header.instances));
    Ok(response)
}

/// Replaces the state of the whole cluster with a backup (the body, as
/// `GET /v1/snapshot` wrote it), from any node. The file is checked whole
/// first: a corrupt or truncated one is refused (400 `invalid_backup`)
/// and nothing changes. Then it goes through the log in chunks, staged
/// apart, and is swapped in at once on every node: readers and watches see
/// the old state or the new one, never a mix (watchers get the
/// difference). Restored leases start a fresh full TTL. The way to seed a
/// new cluster: start it, then restore into it.
#[utoipa::path(post, path = "/v1/snapshot/restore", tag = "operations",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "A backup file"),
    responses((status = 200, description = "Restored on every node", body = RestoreResult),
              (status = 400, description = "invalid_backup: not a whole, unchanged backup file; restore_upload_failed", body = ErrorBody),
              (status = 409, description = "restore_conflict: another restore started meanwhile", body = ErrorBody),
              BodyErrors, WriteErrors))]
pub async fn restore(
    State(state): State<HttpStateRef>,
    Call(caller): Call,
    req: axum::extract::Request,
) -> Result<axum::Json<RestoreResult>, ApiError> {
    // A backup may take long to upload, but an upload that stalls (no byte
    // for the body deadline) is given up: it would hold a connection and a
    // staged restore for nothing.
    let idle = req
        .extensions()
        .get::<crate::limit::Conn>()
        .map_or(crate::serve::Limits::default().body_timeout, |c| {
            c.body_timeout
        });
    let body = req.into_body();
    let chunks =
        tokio_stream::StreamExt::timeout(body.into_data_stream(), idle).map(move |r| match r {
            Ok(chunk) => chunk.map_err(std::io::Error::other),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the upload stalled: no byte for {idle:?}"),
            )),
        });
    let reader = StreamReader::new(Box::pin(chunks));
    let report = state.registry.snapshot_restore(&caller, reader).await?;
    Ok(axum::Json(RestoreResult {
        index: report.index,
        instances: report.instances,
        leases: report.leases,
        backup: report.header,
    }))
}

//! `PUT /transactions/{tx}/body` and `PUT /transactions/{tx}/blob/{id}`:
//! a body or blob, whole or in ranges, streamed into the store.
//!
//! Ranges follow the original (`Content-Range: bytes first-last/total`,
//! total `*` while unknown; `X-Finalize-Blob-Length` to finalize with an
//! empty PUT). A range that starts before what is stored is a resend: the
//! overlap is skipped, so retrying a PUT whose reply was lost is harmless.
//! A range that starts beyond it is refused with 416 and the stored state
//! in `Content-Range`, for the client to resume from.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use koukan_rest::{ContentRange, ErrorKind};
use koukan_storage::{BlobId, Store};

use super::pending::{self, PendingBody, Phase, Slot};
use super::read::{Found, locate};
use super::{Error, ListenerCtx, tx_id};

const FINALIZE: &str = "x-finalize-blob-length";
/// Bytes gathered before each append to the store: fewer, larger writes
/// without holding much of a message in memory.
const APPEND_CHUNK: usize = 1 << 20;
/// A client that sends nothing for this long mid-upload is cut off (its
/// upload holds the transaction's lock).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn body(
    State(ctx): State<Arc<ListenerCtx>>,
    Path(tx): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    put(&ctx, &tx, None, &headers, body).await
}

pub async fn blob(
    State(ctx): State<Arc<ListenerCtx>>,
    Path((tx, blob)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    put(&ctx, &tx, Some(blob), &headers, body).await
}

/// What the request's headers ask for.
struct Request {
    range: Option<ContentRange>,
    finalize: Option<u64>,
    content_length: Option<u64>,
}

fn parse_headers(headers: &HeaderMap) -> Result<Request, Error> {
    let text = |name: &str| -> Result<Option<&str>, Error> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| Error::header(name, "not a valid header value"))
            })
            .transpose()
    };
    let content_length = text("content-length")?
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| Error::header("content-length", "not a number"))
        })
        .transpose()?;
    let range = text("content-range")?
        .map(|v| ContentRange::parse(v).map_err(|e| Error::header("content-range", e.to_string())))
        .transpose()?;
    let finalize = text(FINALIZE)?
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| Error::header(FINALIZE, "must be a number of bytes"))
        })
        .transpose()?;
    if let Some(r) = &range {
        match content_length {
            Some(n) if n == r.len() => {}
            Some(_) => {
                return Err(Error::header(
                    "content-range",
                    "the range's length differs from Content-Length",
                ));
            }
            None => {
                return Err(Error::header(
                    "content-range",
                    "a ranged PUT needs Content-Length",
                ));
            }
        }
    }
    if finalize.is_some() && (range.is_some() || content_length.is_some_and(|n| n > 0)) {
        return Err(Error::header(
            FINALIZE,
            "only on an empty PUT (it finalizes what was uploaded)",
        ));
    }
    Ok(Request {
        range,
        finalize,
        content_length,
    })
}

fn stored_range(len: u64, total: Option<u64>) -> Vec<(header::HeaderName, String)> {
    let mut h = vec![(
        header::HeaderName::from_static("x-blob-length"),
        len.to_string(),
    )];
    if let Some(r) = ContentRange::stored(len, total) {
        h.push((header::CONTENT_RANGE, r));
    }
    h
}

fn ok(len: u64, total: Option<u64>) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        "{}",
    )
        .into_response();
    for (name, value) in stored_range(len, total) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

fn unsatisfiable(message: &str, len: u64, total: Option<u64>) -> Error {
    let mut e = Error::field(ErrorKind::RangeNotSatisfiable, "content-range", message);
    e.headers = stored_range(len, total);
    e
}

async fn put(
    ctx: &ListenerCtx,
    tx: &str,
    blob_name: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let id = tx_id(tx)?;
    let spec = ctx.spec();
    let suffix = match &blob_name {
        None => "/body".to_owned(),
        // Encoded again: a redirect's Location must be a URI.
        Some(b) => format!("/blob/{}", koukan_rest::uri::encode_segment(b)),
    };
    let req = parse_headers(headers)?;
    let found = match locate(ctx, &spec, headers, &id, &suffix).await {
        Ok(f) => f,
        Err(r) => return Ok(r),
    };
    let rest = &ctx.rest;
    let store = &rest.queue.store;
    let p = match found {
        Found::Pending(p) => p,
        Found::Stored(rec) => {
            let blob = match (&blob_name, &rec.tx.ingress) {
                (None, _) => rec.tx.body.clone(),
                (Some(name), koukan_storage::StoredIngress::Http(h)) => {
                    h.blobs.get(name).cloned().ok_or_else(unknown_blob)?
                }
                (Some(_), _) => return Err(unknown_blob()),
            };
            return match store.blob_info(&blob).await {
                Ok(info) => resend(&req, info.length, body).await,
                // Delivered and its body collected: finalized all the same.
                Err(koukan_storage::StoreError::NotFound(_)) => Err(finalized()),
                Err(e) => Err(Error::store(e)),
            };
        }
    };
    let mut st = p.state.lock().await;
    if st.phase != Phase::Open {
        // Stored (or dropped) while this request waited for the lock.
        drop(st);
        return Err(Error::kind(
            ErrorKind::Conflict,
            "the transaction's body is complete: it was stored",
        ));
    }
    let max = spec.limits.max_message_size;
    let slot = match (&mut st.body, &blob_name) {
        (PendingBody::Raw(s), None) => s,
        (PendingBody::Builder { slots, .. }, Some(name)) => {
            slots.get_mut(name).ok_or_else(unknown_blob)?
        }
        (PendingBody::Raw(_), Some(_)) => return Err(unknown_blob()),
        (PendingBody::Builder { .. }, None) => {
            return Err(Error::kind(
                ErrorKind::Conflict,
                "this transaction's body is a message_builder spec: PUT its blobs",
            ));
        }
    };
    if slot.finalized {
        return resend(&req, slot.len, body).await;
    }
    let written = write(store.as_ref(), slot, &req, body, max).await;
    p.touch();
    written?;
    let (len, total) = (slot.len, slot.total);
    if st.body.is_complete() {
        match pending::commit(rest, &id, &mut st).await {
            Ok(_) => {
                rest.pending.remove(&id);
                p.touch();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ok(len, total))
}

fn unknown_blob() -> Error {
    Error::not_found("unknown blob: not declared by the transaction's message_builder spec")
}

/// A PUT to a finalized blob: fine if it only repeats what is stored
/// (a retry whose reply was lost), refused otherwise.
async fn resend(req: &Request, len: u64, body: Body) -> Result<Response, Error> {
    let repeat = match (&req.range, req.finalize) {
        (_, Some(n)) => n == len,
        (Some(r), None) => r.last < len && r.total.is_none_or(|t| t == len),
        (None, None) => req.content_length == Some(len),
    };
    if !repeat {
        return Err(finalized());
    }
    drain(body).await;
    Ok(ok(len, Some(len)))
}

fn finalized() -> Error {
    Error::kind(
        ErrorKind::Conflict,
        "the blob is finalized: it can no longer change",
    )
}

async fn drain(mut body: Body) {
    while let Ok(Some(Ok(_))) = tokio::time::timeout(READ_TIMEOUT, body.frame()).await {}
}

/// Appends the request's bytes to `slot`, skipping what a resend
/// overlaps, and finalizes it once its declared total is reached.
async fn write(
    store: &dyn Store,
    slot: &mut Slot,
    req: &Request,
    mut body: Body,
    max: u64,
) -> Result<(), Error> {
    if let Some(n) = req.finalize {
        if n != slot.len {
            return Err(unsatisfiable(
                "x-finalize-blob-length differs from what was uploaded",
                slot.len,
                slot.total,
            ));
        }
        return finalize(store, slot).await;
    }
    let first = req.range.map_or(0, |r| r.first);
    let total = req.range.and_then(|r| r.total);
    if first > slot.len {
        return Err(unsatisfiable(
            "the range starts beyond what was uploaded",
            slot.len,
            slot.total,
        ));
    }
    if let (Some(t), Some(declared)) = (total, slot.total)
        && t != declared
    {
        return Err(unsatisfiable(
            "the total length differs from the one declared before",
            slot.len,
            slot.total,
        ));
    }
    if total.is_some_and(|t| t > max) || req.content_length.is_some_and(|n| first + n > max) {
        return Err(too_large(max));
    }
    // Bytes of this request already stored (a resend).
    let mut skip = slot.len - first;
    let mut received: u64 = 0;
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(READ_TIMEOUT, body.frame()).await {
            Err(_) => return Err(Error::kind(ErrorKind::InvalidHeader, "upload stalled")),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Error::kind(
                    ErrorKind::InvalidHeader,
                    format!("reading the upload failed: {e}"),
                ));
            }
            Ok(Some(Ok(f))) => f,
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        received += data.len() as u64;
        if skip > 0 {
            let n = skip.min(data.len() as u64) as usize;
            data = data.slice(n..);
            skip -= n as u64;
        }
        if slot.len + (buf.len() + data.len()) as u64 > max {
            return Err(too_large(max));
        }
        buf.extend_from_slice(&data);
        if buf.len() >= APPEND_CHUNK {
            append(store, slot, buf.split().freeze()).await?;
        }
    }
    if !buf.is_empty() {
        append(store, slot, buf.freeze()).await?;
    }
    if let Some(n) = req.content_length
        && received != n
    {
        return Err(Error::header(
            "content-length",
            "the entity ended before Content-Length bytes",
        ));
    }
    // An unranged PUT is the whole blob.
    let total = match req.range {
        Some(_) => total,
        None => Some(first + received),
    };
    if let Some(t) = total {
        slot.total = Some(t);
        if slot.len > t {
            return Err(unsatisfiable(
                "more bytes stored than the total length",
                slot.len,
                slot.total,
            ));
        }
        if slot.len == t {
            finalize(store, slot).await?;
        }
    }
    Ok(())
}

fn too_large(max: u64) -> Error {
    Error::kind(
        ErrorKind::TooLarge,
        format!("larger than the listener's max_message_size ({max} bytes)"),
    )
}

async fn append(store: &dyn Store, slot: &mut Slot, data: Bytes) -> Result<(), Error> {
    store.admit().await.map_err(Error::store)?;
    slot.len = store
        .append_blob(&slot.blob, slot.len, data, false)
        .await
        .map_err(Error::store)?;
    Ok(())
}

async fn finalize(store: &dyn Store, slot: &mut Slot) -> Result<(), Error> {
    let blob: &BlobId = &slot.blob;
    store
        .append_blob(blob, slot.len, Bytes::new(), true)
        .await
        .map_err(Error::store)?;
    slot.total = Some(slot.len);
    slot.finalized = true;
    Ok(())
}

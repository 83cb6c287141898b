//! `GET /transactions/{tx}` (point read and hanging GET) and
//! `PATCH /transactions/{tx}` (heartbeat), and what every route shares:
//! API keys, JSON entities, redirects to the replica that holds a
//! transaction.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use koukan_rest::{ErrorKind, TxRead};
use koukan_storage::{StoreError, TxId, TxRecord};

use super::pending::PendingTx;
use super::{Error, ListenerCtx, tx_id, view};
use crate::config::listener::HttpListenerSpec;

/// Checks the request's API key against `sender`'s, when the listener
/// has keys; returns the authenticated principal.
pub fn authorize(
    spec: &HttpListenerSpec,
    headers: &HeaderMap,
    sender: &str,
) -> Result<Option<String>, Error> {
    let Some(keys) = &spec.api_keys else {
        return Ok(None);
    };
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match key {
        Some(k) if keys.check(sender, k) => Ok(Some(sender.to_owned())),
        _ => Err(Error::kind(
            ErrorKind::Unauthorized,
            "missing or wrong API key (Authorization: Bearer <key>)",
        )
        .with_header(header::WWW_AUTHENTICATE, "Bearer".into())),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads an `application/json` entity within the listener's size and
/// depth limits.
pub async fn json_entity(
    spec: &HttpListenerSpec,
    headers: &HeaderMap,
    body: Body,
) -> Result<serde_json::Value, Error> {
    if !is_json(headers) {
        return Err(Error::field(
            ErrorKind::UnsupportedMediaType,
            "content-type",
            "must be application/json",
        ));
    }
    let max = spec.limits.max_json_bytes;
    let bytes = read_limited(body, max).await?;
    if bytes.is_empty() {
        return Err(Error::kind(
            ErrorKind::EmptyEntity,
            "the request needs a JSON entity",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::kind(ErrorKind::InvalidJson, format!("malformed JSON: {e}")))?;
    if koukan_rest::json::too_deep(&value, spec.limits.max_json_depth) {
        return Err(Error::kind(
            ErrorKind::InvalidJson,
            format!(
                "JSON nested deeper than {} levels",
                spec.limits.max_json_depth
            ),
        ));
    }
    Ok(value)
}

/// The whole entity, if it has at most `max` bytes (413 otherwise).
pub async fn read_limited(body: Body, max: usize) -> Result<bytes::Bytes, Error> {
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::kind(
            ErrorKind::TooLarge,
            format!("entity larger than {max} bytes"),
        )),
        Err(e) => Err(Error::kind(
            ErrorKind::InvalidJson,
            format!("reading the entity failed: {e}"),
        )),
    }
}

/// An ETag header's value without quotes (and weakness: a version is a
/// version).
fn etag_of(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(|v| {
        v.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_owned()
    })
}

/// Where a transaction is.
pub enum Found {
    Pending(Arc<PendingTx>),
    Stored(Box<TxRecord>),
}

/// Looks `id` up here; redirects (308) to the replica that holds it when
/// that is another one: a pending transaction of another replica, or a
/// stored one another replica is delivering (leased).
pub async fn locate(
    ctx: &ListenerCtx,
    spec: &HttpListenerSpec,
    headers: &HeaderMap,
    id: &TxId,
    path_suffix: &str,
) -> Result<Found, Response> {
    let rest = &ctx.rest;
    if let Some(p) = rest.pending.get(id) {
        authorize(spec, headers, &p.sender).map_err(IntoResponse::into_response)?;
        return Ok(Found::Pending(p));
    }
    let store = &rest.queue.store;
    match store.get_transaction(id).await {
        Ok(rec) => {
            authorize(spec, headers, &rec.tx.sender).map_err(IntoResponse::into_response)?;
            let leased_elsewhere = rec
                .lease_owner
                .as_ref()
                .is_some_and(|o| o != rest.replica())
                && rec.lease_expires.is_some_and(|e| e > SystemTime::now());
            if leased_elsewhere
                && let Some(owner) = &rec.lease_owner
                && let Some(r) = redirect(ctx, spec, owner, id, path_suffix).await
            {
                return Err(r);
            }
            Ok(Found::Stored(Box::new(rec)))
        }
        Err(StoreError::NotFound(_)) => {
            let owner = super::pending::owner(id);
            if let Some(r) = redirect(ctx, spec, &owner, id, path_suffix).await {
                return Err(r);
            }
            Err(Error::not_found("unknown transaction").into_response())
        }
        Err(e) => Err(Error::store(e).into_response()),
    }
}

async fn redirect(
    ctx: &ListenerCtx,
    spec: &HttpListenerSpec,
    owner: &koukan_storage::ReplicaId,
    id: &TxId,
    suffix: &str,
) -> Option<Response> {
    let uri = ctx.rest.queue.store.replica_uri(owner).await.ok()??;
    if uri == spec.session_uri {
        return None;
    }
    let location = format!("{uri}/transactions/{id}{suffix}");
    Some(
        (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, location)],
        )
            .into_response(),
    )
}

/// The current ETag and read of `id`, wherever it is.
pub async fn current(
    ctx: &ListenerCtx,
    spec: &HttpListenerSpec,
    id: &TxId,
) -> Result<(String, TxRead), Error> {
    if let Some(p) = ctx.rest.pending.get(id) {
        let st = p.state.lock().await;
        if st.phase == super::pending::Phase::Open {
            return Ok((
                view::pending_etag(p.version()),
                view::pending(id, &st, spec),
            ));
        }
    }
    let rec = ctx
        .rest
        .queue
        .store
        .get_transaction(id)
        .await
        .map_err(Error::store)?;
    Ok((view::stored_etag(&rec), view::stored(&rec, spec)))
}

/// `Request-Timeout: <seconds>`, capped by the listener's limit; the
/// cap when absent.
fn request_timeout(spec: &HttpListenerSpec, headers: &HeaderMap) -> Result<Duration, Error> {
    let max = spec.limits.max_request_timeout;
    let Some(v) = headers.get("request-timeout") else {
        return Ok(max);
    };
    let secs: u64 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::header("request-timeout", "must be a whole number of seconds"))?;
    Ok(Duration::from_secs(secs).min(max))
}

pub async fn get(
    State(ctx): State<Arc<ListenerCtx>>,
    Path(tx): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let id = tx_id(&tx)?;
    let spec = ctx.spec();
    let wanted = etag_of(&headers, header::IF_NONE_MATCH);
    // Only a conditional GET waits (as the original's).
    let timeout = match &wanted {
        Some(_) => request_timeout(&spec, &headers)?,
        None => Duration::ZERO,
    };
    let deadline = Instant::now() + timeout;
    let found = match locate(&ctx, &spec, &headers, &id, "").await {
        Ok(f) => f,
        Err(r) => return Ok(r),
    };
    let rec = match found {
        Found::Pending(p) => {
            let etag = view::pending_etag(p.version());
            if wanted.as_deref() != Some(etag.as_str()) {
                let (etag, read) = current(&ctx, &spec, &id).await?;
                return Ok(view::reply(StatusCode::OK, &etag, &read, &[]));
            }
            let Ok(_permit) = ctx.hanging.clone().try_acquire_owned() else {
                return Err(too_many_waiting());
            };
            let mut changes = p.watch();
            changes.mark_unchanged();
            let changed = tokio::time::timeout_at(deadline.into(), changes.changed()).await;
            if changed.is_err() {
                return Ok(view::not_modified(&etag));
            }
            // Changed: uploaded to, stored, or dropped.
            return match current(&ctx, &spec, &id).await {
                Ok((etag, read)) => Ok(view::reply(StatusCode::OK, &etag, &read, &[])),
                Err(e) => Err(e),
            };
        }
        Found::Stored(rec) => rec,
    };
    let etag = view::stored_etag(&rec);
    if wanted.as_deref() != Some(etag.as_str()) {
        return Ok(view::reply(
            StatusCode::OK,
            &etag,
            &view::stored(&rec, &spec),
            &[],
        ));
    }
    if rec.final_attempt_reason.is_some() {
        // Final: it will not change.
        return Ok(view::not_modified(&etag));
    }
    let Ok(_permit) = ctx.hanging.clone().try_acquire_owned() else {
        return Err(too_many_waiting());
    };
    let store = &ctx.rest.queue.store;
    match store.wait_version(&id, rec.version, deadline).await {
        Ok(Some(rec)) => Ok(view::reply(
            StatusCode::OK,
            &view::stored_etag(&rec),
            &view::stored(&rec, &spec),
            &[],
        )),
        Ok(None) => Ok(view::not_modified(&etag)),
        Err(e) => Err(Error::store(e)),
    }
}

fn too_many_waiting() -> Error {
    Error::kind(
        ErrorKind::TooManyRequests,
        "too many hanging GETs waiting; poll again later",
    )
}

/// A heartbeat (an empty entity, or `{}`): the original's incremental
/// updates are for its SMTP gateway's dialect, which this proxy does not
/// need (its SMTP listener is native), so a first-class transaction
/// accepts no other update, as the original's does.
pub async fn patch(
    State(ctx): State<Arc<ListenerCtx>>,
    Path(tx): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let id = tx_id(&tx)?;
    let spec = ctx.spec();
    let found = match locate(&ctx, &spec, &headers, &id, "").await {
        Ok(f) => f,
        Err(r) => return Ok(r),
    };
    let Some(if_match) = etag_of(&headers, header::IF_MATCH) else {
        return Err(Error::header("if-match", "required for an update"));
    };
    if is_json(&headers) {
        let v = json_entity(&spec, &headers, body).await?;
        match v.as_object() {
            Some(o) if o.is_empty() => {}
            Some(o) => {
                let field = o.keys().next().cloned().unwrap_or_default();
                return Err(Error::field(
                    ErrorKind::InvalidJson,
                    &field,
                    "this transaction accepts no updates but heartbeats ({} or an empty PATCH)",
                ));
            }
            None => {
                return Err(Error::kind(
                    ErrorKind::InvalidJson,
                    "the entity must be a JSON object",
                ));
            }
        }
    } else {
        let bytes = read_limited(body, spec.limits.max_json_bytes).await?;
        if !bytes.is_empty() {
            return Err(Error::field(
                ErrorKind::UnsupportedMediaType,
                "content-type",
                "an update must be application/json; a heartbeat has no entity",
            ));
        }
    }
    let (etag, read) = match found {
        Found::Pending(p) => {
            let st = p.state.lock().await;
            if view::pending_etag(p.version()) != if_match {
                return Err(precondition_failed());
            }
            p.touch();
            (
                view::pending_etag(p.version()),
                view::pending(&id, &st, &spec),
            )
        }
        Found::Stored(rec) => {
            if view::stored_etag(&rec) != if_match {
                return Err(precondition_failed());
            }
            // Stored: nothing waits for this client any more, so a
            // heartbeat has nothing to keep alive and writes nothing.
            (view::stored_etag(&rec), view::stored(&rec, &spec))
        }
    };
    Ok(view::reply(StatusCode::OK, &etag, &read, &[]))
}

fn precondition_failed() -> Error {
    Error::field(
        ErrorKind::PreconditionFailed,
        "if-match",
        "the transaction changed: read it again",
    )
}

//! What a read shows (REST_READ): placeholders for the request's fields,
//! the body's status, the latest attempt's responses and the progress.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use koukan_rest::uri::{blob_path, body_path, tx_path};
use koukan_rest::{BlobStatus, BodyRead, MessageBuilderRead, Placeholder, TxRead};
use koukan_storage::{NewTransaction, StoredHttp, StoredIngress, StoredResponse, TxId, TxRecord};

use super::pending::{PendingBody, State};
use crate::config::listener::HttpListenerSpec;

fn response(r: &StoredResponse) -> koukan_rest::Response {
    koukan_rest::Response::new(r.code, r.text.clone())
}

/// The raw body's status.
fn raw_body(base: &str, id: &str, finalized: bool) -> BodyRead {
    BodyRead {
        blob_status: Some(BlobStatus {
            uri: format!("{base}{}", body_path(id)),
            finalized,
        }),
        message_builder: None,
    }
}

/// A message-builder body: its blobs by name, and whether each is final.
fn builder_body<'a>(
    base: &str,
    id: &str,
    blobs: impl Iterator<Item = (&'a String, bool)>,
) -> BodyRead {
    let status = blobs
        .map(|(name, finalized)| {
            let uri = format!("{base}{}", blob_path(id, name));
            (name.clone(), BlobStatus { uri, finalized })
        })
        .collect::<BTreeMap<_, _>>();
    BodyRead {
        blob_status: None,
        message_builder: Some(MessageBuilderRead {
            uri: None,
            blob_status: Some(status),
        }),
    }
}

fn http(tx: &NewTransaction) -> Option<&StoredHttp> {
    match &tx.ingress {
        StoredIngress::Http(h) => Some(h),
        _ => None,
    }
}

/// The body of a stored transaction: complete, so its URIs use the
/// service URI (any replica serves them).
pub fn stored_body(spec: &HttpListenerSpec, id: &TxId, tx: &NewTransaction) -> BodyRead {
    let base = &spec.service_uri;
    match http(tx) {
        Some(h) if !h.blobs.is_empty() => {
            builder_body(base, &id.0, h.blobs.keys().map(|n| (n, true)))
        }
        _ => raw_body(base, &id.0, true),
    }
}

/// What a read shows of the request: placeholders for what it gave, and
/// `remote_host`/`local_host` verbatim.
fn request_fields(tx: &NewTransaction, body: BodyRead) -> TxRead {
    let http = http(tx);
    TxRead {
        sender: Some(Placeholder {}),
        remote_host: http.and_then(|h| h.remote_host.clone()),
        local_host: http.and_then(|h| h.local_host.clone()),
        mail_from: Some(Placeholder {}),
        rcpt_to: tx.rcpt_to.iter().map(|_| Placeholder {}).collect(),
        retry: tx.retry.then_some(Placeholder {}),
        notification: tx.notification.then_some(Placeholder {}),
        body: Some(body),
        ..Default::default()
    }
}

/// A stored transaction, with its latest attempt's responses.
pub fn stored(rec: &TxRecord, spec: &HttpListenerSpec) -> TxRead {
    let last = rec.last_responses.as_ref();
    TxRead {
        mail_response: last.and_then(|l| l.mail.as_ref()).map(response),
        // Positional: only the prefix of recipients that have one.
        rcpt_response: last
            .map(|l| {
                l.rcpt
                    .iter()
                    .map_while(|r| r.as_ref().map(response))
                    .collect()
            })
            .unwrap_or_default(),
        data_response: last.and_then(|l| l.data.as_ref()).map(response),
        attempt_count: Some(rec.attempt_count),
        final_attempt_reason: rec.final_attempt_reason.map(|r| r.as_str().to_owned()),
        cancelled: rec.cancelled,
        ..request_fields(&rec.tx, stored_body(spec, &rec.id, &rec.tx))
    }
}

/// A pending transaction: its uploads go to this replica (the session
/// URI).
pub fn pending(id: &TxId, st: &State, spec: &HttpListenerSpec) -> TxRead {
    let base = &spec.session_uri;
    let body = match &st.body {
        PendingBody::Raw(slot) => raw_body(base, &id.0, slot.finalized),
        PendingBody::Builder { slots, .. } => {
            builder_body(base, &id.0, slots.iter().map(|(n, s)| (n, s.finalized)))
        }
    };
    TxRead {
        cancelled: st.phase == super::pending::Phase::Cancelled,
        ..request_fields(&st.tx, body)
    }
}

/// ETags: a stored transaction's is its store version, as the original's
/// (`ETag: 7`, unquoted); a pending one's is `p` and its in-memory
/// version, so that it can never equal a stored version: a client
/// waiting with a pending ETag sees the change when the transaction is
/// stored.
pub fn stored_etag(rec: &TxRecord) -> String {
    rec.version.to_string()
}

pub fn pending_etag(version: u64) -> String {
    format!("p{version}")
}

/// A JSON reply with its ETag (and `Location` for a create).
pub fn reply(
    status: StatusCode,
    etag: &str,
    read: &TxRead,
    extra: &[(header::HeaderName, String)],
) -> Response {
    let body = serde_json::to_vec(read).unwrap_or_default();
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::from_str(value) {
            resp.headers_mut().insert(name.clone(), v);
        }
    }
    resp
}

/// `304 Not Modified`: no body (the original sent `unchanged`, which
/// HTTP forbids), the same ETag.
pub fn not_modified(etag: &str) -> Response {
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    if let Ok(v) = HeaderValue::from_str(etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

pub fn location(spec: &HttpListenerSpec, id: &TxId) -> String {
    format!("{}{}", spec.session_uri, tx_path(&id.0))
}

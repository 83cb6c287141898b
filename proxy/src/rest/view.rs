//! What a read shows (REST_READ): placeholders for the request's fields,
//! the body's status, the latest attempt's responses and the progress.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use koukan_rest::uri::{blob_path, body_path, tx_path};
use koukan_rest::{BlobStatus, BodyRead, MessageBuilderRead, Placeholder, TxRead};
use koukan_storage::{StoredIngress, StoredResponse, TxId, TxRecord};

use super::pending::{PendingBody, State};
use crate::config::listener::HttpListenerSpec;

fn response(r: &StoredResponse) -> koukan_rest::Response {
    koukan_rest::Response::new(r.code, r.text.clone())
}

/// A stored transaction. Its body is complete, so its URIs use the
/// service URI (any replica serves them).
pub fn stored(rec: &TxRecord, spec: &HttpListenerSpec) -> TxRead {
    let base = &spec.service_uri;
    let id = &rec.id.0;
    let http = match &rec.tx.ingress {
        StoredIngress::Http(h) => Some(h),
        _ => None,
    };
    let body = match http {
        Some(h) if !h.blobs.is_empty() => BodyRead {
            blob_status: None,
            message_builder: Some(MessageBuilderRead {
                uri: None,
                blob_status: Some(
                    h.blobs
                        .keys()
                        .map(|name| {
                            (
                                name.clone(),
                                BlobStatus {
                                    uri: format!("{base}{}", blob_path(id, name)),
                                    finalized: true,
                                },
                            )
                        })
                        .collect(),
                ),
            }),
        },
        _ => BodyRead {
            blob_status: Some(BlobStatus {
                uri: format!("{base}{}", body_path(id)),
                finalized: true,
            }),
            message_builder: None,
        },
    };
    let last = rec.last_responses.as_ref();
    TxRead {
        sender: Some(Placeholder {}),
        remote_host: http.and_then(|h| h.remote_host.clone()),
        local_host: http.and_then(|h| h.local_host.clone()),
        mail_from: Some(Placeholder {}),
        rcpt_to: rec.tx.rcpt_to.iter().map(|_| Placeholder {}).collect(),
        retry: rec.tx.retry.then_some(Placeholder {}),
        notification: rec.tx.notification.then_some(Placeholder {}),
        filter_output: None,
        body: Some(body),
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
    }
}

/// A pending transaction: its uploads go to this replica (the session
/// URI).
pub fn pending(id: &TxId, st: &State, spec: &HttpListenerSpec) -> TxRead {
    let base = &spec.session_uri;
    let id = &id.0;
    let body = match &st.body {
        PendingBody::Raw(slot) => BodyRead {
            blob_status: Some(BlobStatus {
                uri: format!("{base}{}", body_path(id)),
                finalized: slot.finalized,
            }),
            message_builder: None,
        },
        PendingBody::Builder { slots, .. } => BodyRead {
            blob_status: None,
            message_builder: Some(MessageBuilderRead {
                uri: None,
                blob_status: Some(
                    slots
                        .iter()
                        .map(|(name, s)| {
                            (
                                name.clone(),
                                BlobStatus {
                                    uri: format!("{base}{}", blob_path(id, name)),
                                    finalized: s.finalized,
                                },
                            )
                        })
                        .collect::<BTreeMap<_, _>>(),
                ),
            }),
        },
    };
    let http = match &st.tx.ingress {
        StoredIngress::Http(h) => Some(h),
        _ => None,
    };
    TxRead {
        sender: Some(Placeholder {}),
        remote_host: http.and_then(|h| h.remote_host.clone()),
        local_host: http.and_then(|h| h.local_host.clone()),
        mail_from: Some(Placeholder {}),
        rcpt_to: st.tx.rcpt_to.iter().map(|_| Placeholder {}).collect(),
        retry: st.tx.retry.then_some(Placeholder {}),
        notification: st.tx.notification.then_some(Placeholder {}),
        body: Some(body),
        cancelled: st.phase == super::pending::Phase::Cancelled,
        ..Default::default()
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

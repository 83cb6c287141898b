//! `POST /senders/{sender}/transactions`: a new transaction.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use koukan_rest::uri::{BlobRef, parse_blob_uri};
use koukan_rest::{BodyRequest, ErrorKind, TxCreate};
use koukan_storage::{
    BlobId, Created, IdempotencyKey, StoredHttp, StoredIngress, StoredMailbox, StoredParam,
    StoredTls, TxId,
};

use super::pending::{self, InsertError, PendingBody, PendingTx, Phase, Slot};
use super::{Conn, Error, ListenerCtx, builder, view};
use crate::queue::Origin;

/// The header of an idempotent POST.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 255;

pub async fn post(
    State(ctx): State<Arc<ListenerCtx>>,
    Path(sender): Path<String>,
    axum::Extension(conn): axum::Extension<Conn>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let spec = ctx.spec();
    let rest = &ctx.rest;
    let principal = super::read::authorize(&spec, &headers, &sender)?;
    let snapshot = rest.snapshot.load_full();
    if !spec.serves(&sender) || !snapshot.has_sender(&sender) {
        return Err(Error::field(
            ErrorKind::NotFound,
            "sender",
            format!("unknown sender {sender:?}"),
        ));
    }
    let value = super::read::json_entity(&spec, &headers, body).await?;
    let req = TxCreate::parse(&value).map_err(Error::api)?;

    // A first-class transaction: one message to one recipient.
    let mail_from = req.mail_from.as_ref().ok_or_else(|| {
        Error::field(
            ErrorKind::InvalidJson,
            "mail_from",
            "required: a transaction needs mail_from and exactly one rcpt_to",
        )
    })?;
    if req.rcpt_to.len() != 1 {
        return Err(Error::field(
            ErrorKind::InvalidJson,
            "rcpt_to",
            "exactly one recipient: a transaction is one message to one recipient",
        ));
    }
    let mail_from = stored_mailbox("mail_from", mail_from, true)?;
    let rcpt = stored_mailbox("rcpt_to[0]", &req.rcpt_to[0], false)?;
    let tag = match &req.sender {
        Some(s) => {
            if s.name.as_ref().is_some_and(|n| *n != sender) {
                return Err(Error::field(
                    ErrorKind::InvalidJson,
                    "sender.name",
                    "conflicts with the sender of the path",
                ));
            }
            s.tag.clone().unwrap_or_default()
        }
        None => String::new(),
    };
    let Some(chain) = snapshot.chain_for(&sender, &tag) else {
        return Err(Error::field(
            ErrorKind::InvalidField,
            "sender.tag",
            format!("sender {sender:?} has no chain for tag {tag:?}"),
        ));
    };
    let Some(submission) = snapshot.chains.rest_submission(chain) else {
        return Err(Error::kind(
            ErrorKind::Unavailable,
            "no storage configured for the REST API",
        ));
    };

    // Idempotency: the same key and request return the first
    // transaction; the same key with another request is refused.
    let idempotency = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => {
            let key = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
                .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| {
                    Error::header(
                        IDEMPOTENCY_KEY,
                        format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
                    )
                })?;
            Some(IdempotencyKey {
                key: store_key(&sender, key),
                fingerprint: fingerprint(&sender, &tag, &value),
                expires: SystemTime::now() + spec.idempotency_window,
            })
        }
    };
    if let Some(k) = &idempotency {
        let earlier = match rest.pending.key(&k.key) {
            Some(found) => Some(found),
            None => rest
                .queue
                .store
                .idempotency_lookup(&k.key)
                .await
                .map_err(Error::store)?,
        };
        if let Some((id, fp)) = earlier {
            return replay(&ctx, &spec, &id, &fp, &k.fingerprint).await;
        }
    }

    let id = super::new_tx_id();
    let ingress = StoredIngress::Http(StoredHttp {
        listener: spec.name.clone(),
        peer: Some(conn.peer),
        local: Some(conn.local),
        tls: conn.tls.as_ref().map(|(version, cipher)| StoredTls {
            version: version.clone(),
            cipher: cipher.clone(),
        }),
        principal,
        remote_host: req.remote_host.clone(),
        local_host: req.local_host.clone(),
        blobs: Default::default(),
    });
    let origin = Origin {
        sender: sender.clone(),
        tag,
        ingress,
        signals: Default::default(),
    };
    let placeholder = BlobId(String::new());
    let tx = submission.transaction(&origin, &mail_from, rcpt, &placeholder, None);
    let limits = &spec.limits;
    let store = &rest.queue.store;
    let body = match req.body {
        None => {
            store.admit().await.map_err(Error::store)?;
            PendingBody::Raw(Slot::new(store.create_blob().await.map_err(Error::store)?))
        }
        Some(BodyRequest::Inline(text)) => {
            if text.len() as u64 > limits.max_message_size {
                return Err(too_large("body.inline", limits.max_message_size));
            }
            PendingBody::Raw(inline_blob(rest, text).await?)
        }
        Some(BodyRequest::ReuseUri(uri)) => {
            PendingBody::Raw(reuse(&ctx, "body.reuse_uri", &uri).await?)
        }
        Some(BodyRequest::MessageBuilder(v)) => {
            let parsed = builder::parse(&v)?;
            let mut slots = std::collections::BTreeMap::new();
            // At once: the store's writer commits concurrent writes
            // together.
            let stored = futures::future::try_join_all(parsed.inline.into_iter().map(
                |(name, content)| async move {
                    Ok::<_, Error>((name, inline_blob(rest, content).await?))
                },
            ))
            .await?;
            slots.extend(stored);
            for (field, name, uri) in parsed.reused {
                slots.insert(name, reuse(&ctx, &field, &uri).await?);
            }
            for name in parsed.created {
                store.admit().await.map_err(Error::store)?;
                slots.insert(
                    name,
                    Slot::new(store.create_blob().await.map_err(Error::store)?),
                );
            }
            PendingBody::Builder {
                spec: parsed.spec,
                slots,
            }
        }
    };
    let mut state = pending::State {
        tx,
        submission,
        body,
        idempotency,
        phase: Phase::Open,
    };
    let location = view::location(&spec, &id);
    if state.body.is_complete() {
        return match pending::commit(rest, &id, &mut state).await? {
            Created::New(_) => {
                // Version 1 as created; the scheduler may be further
                // already, which the client's next read shows.
                let read = view::pending(&id, &state, &spec);
                // What the store holds at version 1: created leased, its
                // first attempt counts from the start.
                let read = koukan_rest::TxRead {
                    // The commit recorded the builder's blobs in the ingress.
                    body: Some(view::stored_body(&spec, &id, &state.tx)),
                    attempt_count: Some(u32::from(state.tx.lease.is_some())),
                    ..read
                };
                Ok(view::reply(
                    StatusCode::CREATED,
                    "1",
                    &read,
                    &[(header::LOCATION, location)],
                ))
            }
            Created::Existing { id, fingerprint } => {
                let mine = state
                    .idempotency
                    .as_ref()
                    .map(|k| k.fingerprint.clone())
                    .unwrap_or_default();
                replay(&ctx, &spec, &id, &fingerprint, &mine).await
            }
        };
    }
    let key = state
        .idempotency
        .as_ref()
        .map(|k| (k.key.clone(), k.fingerprint.clone()));
    let read = view::pending(&id, &state, &spec);
    let p = PendingTx::new(id.clone(), sender, state, limits.pending_timeout);
    match rest.pending.insert(
        p.clone(),
        key.as_ref().map(|(k, f)| (k.as_str(), f.as_str())),
        limits.max_pending,
    ) {
        Ok(()) => {}
        Err(e) => {
            let mut st = p.state.lock().await;
            pending::discard(rest, &p, &mut st, Phase::Cancelled).await;
            return match e {
                InsertError::Full => Err(Error::kind(
                    ErrorKind::Unavailable,
                    "too many transactions waiting for their body; try again later",
                )),
                InsertError::Existing { id, fingerprint } => {
                    let mine = key.map(|(_, f)| f).unwrap_or_default();
                    replay(&ctx, &spec, &id, &fingerprint, &mine).await
                }
            };
        }
    }
    if !spec.session_uri.is_empty() {
        // Other replicas redirect this transaction's uploads here.
        let _ = rest
            .queue
            .store
            .register_replica(
                &pending::owner(&id),
                &spec.session_uri,
                limits.pending_timeout,
            )
            .await;
    }
    Ok(view::reply(
        StatusCode::CREATED,
        &view::pending_etag(p.version()),
        &read,
        &[(header::LOCATION, location)],
    ))
}

/// The answer to a POST whose idempotency key was used before.
async fn replay(
    ctx: &ListenerCtx,
    spec: &crate::config::listener::HttpListenerSpec,
    id: &TxId,
    earlier: &str,
    mine: &str,
) -> Result<Response, Error> {
    if earlier != mine {
        return Err(Error::field(
            ErrorKind::IdempotencyMismatch,
            IDEMPOTENCY_KEY,
            "this key was used with a different request",
        ));
    }
    let location = view::location(spec, id);
    let replayed = (
        header::HeaderName::from_static("idempotent-replayed"),
        "true".to_owned(),
    );
    let (etag, read) = super::read::current(ctx, spec, id).await?;
    Ok(view::reply(
        StatusCode::CREATED,
        &etag,
        &read,
        &[(header::LOCATION, location), replayed],
    ))
}

fn too_large(field: &str, max: u64) -> Error {
    Error::field(
        ErrorKind::TooLarge,
        field,
        format!("larger than the listener's max_message_size ({max} bytes)"),
    )
}

async fn inline_blob(rest: &super::Rest, text: String) -> Result<Slot, Error> {
    let store = &rest.queue.store;
    store.admit().await.map_err(Error::store)?;
    let len = text.len() as u64;
    let blob = store
        .put_blob(bytes::Bytes::from(text))
        .await
        .map_err(Error::store)?;
    Ok(Slot::complete(blob, len, true))
}

/// The finalized body or blob `uri` names, from the store or a pending
/// transaction of this replica.
async fn reuse(ctx: &ListenerCtx, field: &str, uri: &str) -> Result<Slot, Error> {
    let bad = |m: String| Error::field(ErrorKind::InvalidField, field, m);
    let target = parse_blob_uri(uri).ok_or_else(|| {
        bad(format!(
            "{uri:?} is not /transactions/{{tx}}/body or /transactions/{{tx}}/blob/{{id}}"
        ))
    })?;
    let (tx, blob_name) = match &target {
        BlobRef::Body { tx } => (TxId(tx.clone()), None),
        BlobRef::Blob { tx, blob } => (TxId(tx.clone()), Some(blob.clone())),
    };
    let store = &ctx.rest.queue.store;
    let blob = if let Some(p) = ctx.rest.pending.get(&tx) {
        let st = p.state.lock().await;
        let slot = match (&st.body, &blob_name) {
            (PendingBody::Raw(s), None) => Some(s),
            (PendingBody::Builder { slots, .. }, Some(name)) => slots.get(name),
            _ => None,
        };
        match slot {
            Some(s) if s.finalized => s.blob.clone(),
            Some(_) => return Err(bad(format!("{uri}: not finalized yet"))),
            None => return Err(bad(format!("{uri}: no such body or blob"))),
        }
    } else {
        let rec = match store.get_transaction(&tx).await {
            Ok(rec) => rec,
            Err(koukan_storage::StoreError::NotFound(_)) => {
                return Err(bad(format!("{uri}: no such transaction")));
            }
            Err(e) => return Err(Error::store(e)),
        };
        match (&rec.tx.ingress, &blob_name) {
            (_, None) => rec.tx.body.clone(),
            (StoredIngress::Http(h), Some(name)) => h
                .blobs
                .get(name)
                .cloned()
                .ok_or_else(|| bad(format!("{uri}: no such blob")))?,
            _ => return Err(bad(format!("{uri}: no such blob"))),
        }
    };
    let info = store.blob_info(&blob).await.map_err(|e| match e {
        koukan_storage::StoreError::NotFound(_) => bad(format!("{uri}: its data is gone")),
        e => Error::store(e),
    })?;
    if !info.finalized {
        return Err(bad(format!("{uri}: not finalized yet")));
    }
    Ok(Slot::complete(blob, info.length, false))
}

/// The store's key for a client's `Idempotency-Key`: qualified by the
/// sender, so that two senders' keys never meet, and hashed, so that
/// every key the header allows fits the store's limit
/// ([`IdempotencyKey::MAX_LEN`] characters) whatever the sender's name.
fn store_key(sender: &str, key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{sender}\0{key}").as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A digest of what makes two POSTs the same request: the sender, the
/// tag and the JSON entity (canonical: serde_json sorts object keys).
fn fingerprint(sender: &str, tag: &str, entity: &serde_json::Value) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(sender.as_bytes());
    ctx.update(b"\0");
    ctx.update(tag.as_bytes());
    ctx.update(b"\0");
    ctx.update(entity.to_string().as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An envelope address: an RFC 5321 mailbox without brackets (`""` is
/// the null reverse-path, for `mail_from` only).
fn stored_mailbox(
    field: &str,
    m: &koukan_rest::Mailbox,
    null_ok: bool,
) -> Result<StoredMailbox, Error> {
    let bad = |f: String, msg: &str| Error::field(ErrorKind::InvalidField, &f, msg);
    if m.m.is_empty() {
        if !null_ok {
            return Err(bad(format!("{field}.m"), "a recipient cannot be empty"));
        }
    } else if !valid_address(&m.m) {
        return Err(bad(
            format!("{field}.m"),
            "not a valid address (local-part@domain)",
        ));
    }
    let mut params = Vec::new();
    for (i, p) in m.e.iter().enumerate() {
        let ok_kw = !p.k.is_empty()
            && p.k.len() <= 64
            && p.k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok_kw {
            return Err(bad(format!("{field}.e[{i}].k"), "not an ESMTP keyword"));
        }
        if let Some(v) = &p.p
            && (v.is_empty() || v.bytes().any(|b| b <= b' ' || b == b'=' || b == 0x7f))
        {
            return Err(bad(format!("{field}.e[{i}].p"), "not an ESMTP value"));
        }
        params.push(StoredParam {
            keyword: p.k.clone(),
            value: p.p.clone(),
        });
    }
    Ok(StoredMailbox {
        address: m.m.clone(),
        params,
    })
}

/// `local@domain`: no whitespace, controls or brackets, both parts
/// present, within SMTP's lengths. Deliberately not a full RFC 5321
/// parser: the upstream has the last word; this keeps out what would
/// break the SMTP command line.
fn valid_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.is_empty()
        && domain.len() <= 255
        && a.chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !"<>(),;\\".contains(c))
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in [
            "a@b",
            "a.b+c@example.com",
            "\"x\"@example.com",
            "ü@bücher.de",
        ] {
            assert!(valid_address(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "@b",
            "a@",
            "a b@c",
            "a@b\r\nRCPT",
            "<a@b>",
            "a@.b",
            "a@b.",
            "a@b..c",
        ] {
            assert!(!valid_address(bad), "{bad}");
        }
    }

    #[test]
    fn every_allowed_key_fits_the_store() {
        let longest = "k".repeat(MAX_KEY_LEN);
        let sender = "s".repeat(300);
        let k = store_key(&sender, &longest);
        assert!(k.chars().count() <= IdempotencyKey::MAX_LEN, "{k}");
        assert_ne!(store_key("a", "k"), store_key("b", "k"));
        assert_ne!(store_key("a", "k"), store_key("a", "l"));
        assert_eq!(store_key("a", "k"), store_key("a", "k"));
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = serde_json::json!({"mail_from": {"m": "a@b"}, "rcpt_to": [{"m": "c@d"}]});
        let b = serde_json::json!({"rcpt_to": [{"m": "c@d"}], "mail_from": {"m": "a@b"}});
        let c = serde_json::json!({"mail_from": {"m": "a@b"}, "rcpt_to": [{"m": "c@e"}]});
        assert_eq!(fingerprint("s", "", &a), fingerprint("s", "", &b));
        assert_ne!(fingerprint("s", "", &a), fingerprint("s", "", &c));
        assert_ne!(fingerprint("s", "", &a), fingerprint("s", "t", &a));
        assert_ne!(fingerprint("s", "", &a), fingerprint("t", "", &a));
    }
}

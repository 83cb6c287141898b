//! Between the chain's model and the store's: envelope addresses, replies
//! and session facts, and the reply a client gets for a storage error.

use std::net::SocketAddr;
use std::sync::Arc;

use koukan_chain::{Mailbox, Response, SessionInfo};
use koukan_storage::{StoreError, StoredMailbox, StoredParam, StoredResponse, StoredSession};

pub fn stored_mailbox(m: &Mailbox) -> StoredMailbox {
    StoredMailbox {
        address: m.address.clone(),
        params: m
            .params
            .iter()
            .map(|p| StoredParam {
                keyword: p.keyword.clone(),
                value: p.value.clone(),
            })
            .collect(),
    }
}

pub fn mailbox(m: &StoredMailbox) -> Mailbox {
    let mut b = Mailbox::new(m.address.clone());
    for p in &m.params {
        b = b.with_param(&p.keyword, p.value.as_deref());
    }
    b
}

/// The null reverse-path `<>`, as stored.
pub fn null_mailbox() -> StoredMailbox {
    StoredMailbox {
        address: String::new(),
        params: Vec::new(),
    }
}

/// A reply as the store keeps it.
pub fn stored_response(r: &Response) -> StoredResponse {
    StoredResponse {
        code: r.code,
        text: r.text.clone(),
    }
}

/// The client-facing reply for a storage failure.
pub fn storage_error_reply(e: &StoreError) -> Response {
    match e {
        StoreError::Full(_) => Response::new(452, "4.3.1 insufficient system storage"),
        _ => Response::new(451, "4.3.0 temporary storage failure, try again later"),
    }
}

/// The session facts a stored transaction keeps.
pub fn stored_session(session: &SessionInfo) -> StoredSession {
    StoredSession {
        listener: session.listener.clone(),
        peer: Some(session.peer.to_string()),
        ehlo_host: session.ehlo_host.clone(),
        tls: session
            .tls
            .as_ref()
            .map(|t| format!("{} {}", t.version, t.cipher)),
        auth_user: session.auth_user.clone(),
    }
}

/// The session of a transaction replayed from the store.
pub fn replayed_session(s: &StoredSession) -> Arc<SessionInfo> {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    Arc::new(SessionInfo {
        listener: s.listener.clone(),
        peer: s
            .peer
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(unspecified),
        local: unspecified,
        ehlo_host: s.ehlo_host.clone(),
        esmtp: true,
        tls: None,
        auth_user: s.auth_user.clone(),
    })
}

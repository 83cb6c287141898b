//! Between the chain's model and the store's: envelope addresses, replies
//! where a transaction came from and its signals, and the reply a client
//! gets for a storage error.

use std::sync::Arc;

use koukan_chain::{
    HttpInfo, Ingress, Mailbox, Response, SessionInfo, StoredInfo, TlsInfo, TxContext,
};
use koukan_storage::{
    StoreError, StoredHttp, StoredIngress, StoredMailbox, StoredParam, StoredResponse, StoredSmtp,
    StoredTls, TxRecord,
};

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

/// Where a transaction came from, as the store keeps it: the first ingress
/// (a transaction the scheduler replays and an output chain stores again
/// keeps the one it was first stored from).
pub fn stored_ingress(ingress: &Ingress) -> StoredIngress {
    let tls = |t: &Option<TlsInfo>| {
        t.as_ref().map(|t| StoredTls {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
        })
    };
    match ingress.original() {
        Some(Ingress::Smtp(s)) => StoredIngress::Smtp(StoredSmtp {
            listener: s.listener.clone(),
            peer: Some(s.peer),
            local: Some(s.local),
            ehlo_host: s.ehlo_host.clone(),
            esmtp: s.esmtp,
            tls: tls(&s.tls),
            auth_user: s.auth_user.clone(),
        }),
        Some(Ingress::Http(h)) => StoredIngress::Http(StoredHttp {
            listener: h.listener.clone(),
            peer: Some(h.peer),
            local: Some(h.local),
            tls: tls(&h.tls),
            principal: h.principal.clone(),
            remote_host: None,
            local_host: None,
            blobs: Default::default(),
        }),
        // `original` is never a stored one; none is the proxy's own.
        Some(Ingress::Stored(_)) | None => StoredIngress::Generated,
    }
}

/// The ingress the scheduler replays a stored transaction with: the facts
/// it was stored with, its id, the attempt, and its signals.
pub fn replayed_ingress(record: &TxRecord) -> Ingress {
    // A record written before addresses were kept may lack them.
    let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let tls = |t: &Option<StoredTls>| {
        t.as_ref().map(|t| TlsInfo {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
        })
    };
    let original = match &record.tx.ingress {
        StoredIngress::Smtp(s) => Some(Ingress::Smtp(Arc::new(SessionInfo {
            listener: s.listener.clone(),
            peer: s.peer.unwrap_or(unspecified),
            local: s.local.unwrap_or(unspecified),
            ehlo_host: s.ehlo_host.clone(),
            esmtp: s.esmtp,
            tls: tls(&s.tls),
            auth_user: s.auth_user.clone(),
        }))),
        StoredIngress::Http(h) => Some(Ingress::Http(Arc::new(HttpInfo {
            listener: h.listener.clone(),
            peer: h.peer.unwrap_or(unspecified),
            local: h.local.unwrap_or(unspecified),
            tls: tls(&h.tls),
            principal: h.principal.clone(),
        }))),
        StoredIngress::Generated => None,
    };
    Ingress::Stored(Arc::new(StoredInfo::new(
        record.id.0.clone(),
        record.attempt_count,
        original,
        record.tx.signals.clone(),
    )))
}

/// The signals a stored transaction keeps: those it was stored with, if
/// it is being stored again, and what this chain's filters attached (which
/// win over an older value of the same name).
pub fn stored_signals(ctx: &TxContext) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut signals = ctx
        .ingress
        .stored()
        .map(|s| s.signals.clone())
        .unwrap_or_default();
    signals.extend(ctx.signals.to_json());
    signals
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use koukan_chain::Signal;
    use koukan_storage::TxId;

    use std::time::SystemTime;

    use koukan_storage::{BlobId, NewTransaction};

    use super::*;

    fn record(tx_ingress: StoredIngress, signals: BTreeMap<String, serde_json::Value>) -> TxRecord {
        let now = SystemTime::now();
        TxRecord {
            id: TxId("t1".into()),
            tx: NewTransaction {
                sender: "s".into(),
                tag: "t".into(),
                chain: "out".into(),
                mail_from: StoredMailbox {
                    address: String::new(),
                    params: vec![],
                },
                rcpt_to: vec![],
                ingress: tx_ingress,
                body: BlobId("b".into()),
                retry: false,
                notification: false,
                lease: None,
                prior_attempt: None,
                signals,
            },
            created: now,
            last_update: now,
            version: 1,
            attempt_count: 2,
            next_attempt: None,
            final_attempt_reason: None,
            lease_owner: None,
            lease_expires: None,
            cancelled: false,
            last_responses: None,
            attempts: vec![],
        }
    }

    /// Stored and replayed, an ingress keeps every fact; stored again
    /// from the replay, it is the same record.
    #[test]
    fn ingress_round_trips_through_the_store() {
        let smtp = Ingress::Smtp(Arc::new(SessionInfo {
            listener: "submission".into(),
            peer: "198.51.100.7:50123".parse().unwrap(),
            local: "192.0.2.10:587".parse().unwrap(),
            ehlo_host: Some("client.example".into()),
            esmtp: false,
            tls: Some(TlsInfo {
                version: "TLSv1.2".into(),
                cipher: "ECDHE-RSA-AES128-GCM-SHA256".into(),
            }),
            auth_user: Some("app".into()),
        }));
        let http = Ingress::Http(Arc::new(HttpInfo {
            listener: "api".into(),
            peer: "[2001:db8::1]:4000".parse().unwrap(),
            local: "[2001:db8::2]:443".parse().unwrap(),
            tls: None,
            principal: Some("svc".into()),
        }));
        for ingress in [smtp, http] {
            let stored = stored_ingress(&ingress);
            let replayed = replayed_ingress(&record(stored.clone(), BTreeMap::new()));
            let info = replayed.stored().unwrap();
            assert_eq!((info.id.as_str(), info.attempt), ("t1", 2));
            assert_eq!(replayed.peer(), ingress.peer());
            assert_eq!(replayed.local(), ingress.local());
            assert_eq!(replayed.tls(), ingress.tls());
            assert_eq!(replayed.auth_user(), ingress.auth_user());
            assert_eq!(replayed.listener(), ingress.listener());
            assert_eq!(
                replayed.smtp().map(|s| (s.esmtp, s.ehlo_host.clone())),
                ingress.smtp().map(|s| (s.esmtp, s.ehlo_host.clone()))
            );
            assert_eq!(stored_ingress(&replayed), stored);
        }
        let bounce = replayed_ingress(&record(StoredIngress::Generated, BTreeMap::new()));
        assert!(bounce.original().is_none());
        assert_eq!(stored_ingress(&bounce), StoredIngress::Generated);
    }

    struct Verdict(&'static str);

    impl Signal for Verdict {
        const NAME: &'static str = "policy";
        fn to_json(&self) -> serde_json::Value {
            serde_json::json!(self.0)
        }
    }

    /// Stored again (an output chain that stores), a transaction keeps the
    /// signals it had, and this chain's filters' win by name.
    #[test]
    fn signals_of_a_replay_are_kept_and_the_new_ones_win() {
        let old: BTreeMap<String, serde_json::Value> = [
            ("policy".to_owned(), serde_json::json!("old")),
            ("spf".to_owned(), serde_json::json!({"result": "pass"})),
        ]
        .into();
        let ctx = TxContext::new(
            "t1",
            replayed_ingress(&record(StoredIngress::Generated, old)),
            "s",
            "t",
        );
        ctx.signals.insert(Verdict("new")).unwrap();
        let signals = stored_signals(&ctx);
        assert_eq!(signals["policy"], serde_json::json!("new"));
        assert_eq!(signals["spf"], serde_json::json!({"result": "pass"}));
        assert_eq!(signals.len(), 2);
    }
}

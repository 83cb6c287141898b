//! What the store keeps. Plain data with serde, independent of the
//! in-memory transaction model of the filter chain.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Opaque transaction id (URL-safe, unique across replicas).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxId(pub String);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId(pub String);

/// A proxy process, as lease holder.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaId(pub String);

impl std::fmt::Display for TxId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    pub length: u64,
    pub finalized: bool,
    pub refcount: u64,
}

/// An ESMTP parameter as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredParam {
    pub keyword: String,
    pub value: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMailbox {
    /// Empty for the null reverse-path.
    pub address: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<StoredParam>,
}

/// An SMTP reply as stored (verbatim text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub code: u16,
    pub text: String,
}

/// TLS facts as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTls {
    pub version: String,
    pub cipher: String,
}

/// The SMTP session a stored transaction arrived on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSmtp {
    pub listener: String,
    pub peer: Option<SocketAddr>,
    #[serde(default)]
    pub local: Option<SocketAddr>,
    pub ehlo_host: Option<String>,
    #[serde(default = "yes")]
    pub esmtp: bool,
    pub tls: Option<StoredTls>,
    pub auth_user: Option<String>,
}

/// The HTTP request a stored transaction arrived on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredHttp {
    pub listener: String,
    pub peer: Option<SocketAddr>,
    #[serde(default)]
    pub local: Option<SocketAddr>,
    #[serde(default)]
    pub tls: Option<StoredTls>,
    #[serde(default)]
    pub principal: Option<String>,
}

fn yes() -> bool {
    true
}

/// Where a stored transaction came from: what the scheduler replays to its
/// output chain (trace headers, policy) and what a DSN may report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredIngress {
    Smtp(StoredSmtp),
    Http(StoredHttp),
    /// Made by the proxy itself (a bounce): no client.
    Generated,
}

/// The flat `session` object of records written before [`StoredIngress`]:
/// always SMTP, TLS as one "version cipher" string, and (bounces) an empty
/// listener with no peer.
#[derive(Deserialize)]
struct LegacySession {
    listener: String,
    peer: Option<String>,
    ehlo_host: Option<String>,
    tls: Option<String>,
    auth_user: Option<String>,
}

impl From<LegacySession> for StoredIngress {
    fn from(s: LegacySession) -> Self {
        if s.listener.is_empty() && s.peer.is_none() {
            return StoredIngress::Generated;
        }
        StoredIngress::Smtp(StoredSmtp {
            listener: s.listener,
            peer: s.peer.and_then(|p| p.parse().ok()),
            local: None,
            ehlo_host: s.ehlo_host,
            esmtp: true,
            tls: s.tls.map(|t| match t.split_once(' ') {
                Some((version, cipher)) => StoredTls {
                    version: version.to_owned(),
                    cipher: cipher.to_owned(),
                },
                None => StoredTls {
                    version: t,
                    cipher: String::new(),
                },
            }),
            auth_user: s.auth_user,
        })
    }
}

/// Reads [`NewTransaction::ingress`] in either form.
fn ingress_any_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StoredIngress, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Typed(StoredIngress),
        Legacy(LegacySession),
    }
    Ok(match Wire::deserialize(d)? {
        Wire::Typed(i) => i,
        Wire::Legacy(l) => l.into(),
    })
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTransaction {
    pub sender: String,
    pub tag: String,
    /// The output chain that delivers it.
    pub chain: String,
    pub mail_from: StoredMailbox,
    pub rcpt_to: Vec<StoredMailbox>,
    /// Records written before it have `session` (see [`LegacySession`]).
    #[serde(alias = "session", deserialize_with = "ingress_any_version")]
    pub ingress: StoredIngress,
    pub body: BlobId,
    /// Retries enabled (otherwise one attempt).
    pub retry: bool,
    /// A DSN goes back on final failure.
    pub notification: bool,
    /// Leased at creation to this replica, which runs it at once.
    pub lease: Option<(ReplicaId, std::time::Duration)>,
    /// An attempt already made before the transaction was stored (the
    /// exploder's cut-through while the client waited). The store records
    /// it as attempt 1 and schedules the next one at its `next_attempt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_attempt: Option<PriorAttempt>,
    /// What the filters that received it found (`koukan_chain::Signal`s),
    /// by signal name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub signals: BTreeMap<String, serde_json::Value>,
}

/// See [`NewTransaction::prior_attempt`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorAttempt {
    pub responses: AttemptResponses,
    pub finished: SystemTime,
    /// When the transaction becomes due. The scheduler decides at that
    /// point whether the prior outcome already settles it (a permanent
    /// failure, or retries exhausted) or whether to attempt again.
    pub next_attempt: SystemTime,
}

/// One finished attempt, as kept in [`TxRecord::attempts`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1-based.
    pub attempt: u32,
    pub finished: SystemTime,
    pub responses: AttemptResponses,
}

/// Where a transaction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxState {
    /// Waiting for its next attempt (or its first).
    Waiting,
    /// Leased: an attempt is running.
    Inflight,
    /// Done: `final_attempt_reason` says why.
    Final,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxRecord {
    pub id: TxId,
    pub tx: NewTransaction,
    pub created: SystemTime,
    pub last_update: SystemTime,
    /// Bumped on every write; watchers wait for a higher one.
    pub version: u64,
    /// Attempts started so far (the current one included).
    pub attempt_count: u32,
    pub next_attempt: Option<SystemTime>,
    pub final_attempt_reason: Option<String>,
    pub lease_owner: Option<ReplicaId>,
    pub lease_expires: Option<SystemTime>,
    pub cancelled: bool,
    /// Responses of the latest finished attempt, one per rcpt for `rcpt`.
    pub last_responses: Option<AttemptResponses>,
    /// Every finished attempt, oldest first (a prior attempt included).
    pub attempts: Vec<AttemptRecord>,
}

impl TxRecord {
    pub fn state(&self, now: SystemTime) -> TxState {
        if self.final_attempt_reason.is_some() {
            TxState::Final
        } else if self.lease_expires.is_some_and(|e| e > now) {
            TxState::Inflight
        } else {
            TxState::Waiting
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptResponses {
    pub mail: Option<StoredResponse>,
    pub rcpt: Vec<Option<StoredResponse>>,
    pub data: Option<StoredResponse>,
}

/// The end of one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptOutcome {
    pub responses: AttemptResponses,
    pub next: NextStep,
    /// False when the holder settled the transaction without delivering
    /// (its prior attempt already decided it): the claim's attempt count
    /// is taken back and no attempt is added to the history.
    pub attempted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NextStep {
    /// Try again at this time.
    RetryAt(SystemTime),
    /// Done for good.
    Final { reason: String },
}

/// What a cancel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// Not under a lease: final now, with the reason `cancelled`.
    Cancelled,
    /// Under a lease: flagged; the attempt in flight finishes (it may
    /// still deliver) and the holder records it as final.
    Requested,
    /// Already final: nothing changed (its reason stands).
    AlreadyFinal,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueCounts {
    pub waiting: u64,
    /// Of the waiting: due now.
    pub due: u64,
    pub inflight: u64,
    pub final_: u64,
    pub blobs: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the build before typed ingress wrote it (JSON, both
    /// stores): it still reads, its TLS string split into version and
    /// cipher, and a bounce's empty session read as generated.
    #[test]
    fn a_record_with_the_old_session_reads() {
        let old = r#"{"sender":"s","tag":"t","chain":"out",
            "mail_from":{"address":"a@example.com"},"rcpt_to":[{"address":"b@example.com"}],
            "session":{"listener":"submission","peer":"198.51.100.7:50123",
                "ehlo_host":"client.example","tls":"TLSv1.3 TLS13_AES_128_GCM_SHA256",
                "auth_user":"app"},
            "body":"b","retry":true,"notification":false,"lease":null}"#;
        let tx: NewTransaction = serde_json::from_str(old).unwrap();
        assert_eq!(
            tx.ingress,
            StoredIngress::Smtp(StoredSmtp {
                listener: "submission".into(),
                peer: Some("198.51.100.7:50123".parse().unwrap()),
                local: None,
                ehlo_host: Some("client.example".into()),
                esmtp: true,
                tls: Some(StoredTls {
                    version: "TLSv1.3".into(),
                    cipher: "TLS13_AES_128_GCM_SHA256".into(),
                }),
                auth_user: Some("app".into()),
            })
        );
        assert!(tx.signals.is_empty());

        let bounce = old.replace(
            r#""session":{"listener":"submission","peer":"198.51.100.7:50123",
                "ehlo_host":"client.example","tls":"TLSv1.3 TLS13_AES_128_GCM_SHA256",
                "auth_user":"app"}"#,
            r#""session":{"listener":"","peer":null,"ehlo_host":null,"tls":null,"auth_user":null}"#,
        );
        assert_ne!(bounce, old);
        let tx: NewTransaction = serde_json::from_str(&bounce).unwrap();
        assert_eq!(tx.ingress, StoredIngress::Generated);
    }

    #[test]
    fn typed_ingress_and_signals_round_trip() {
        let tx = NewTransaction {
            sender: "s".into(),
            tag: "t".into(),
            chain: "out".into(),
            mail_from: StoredMailbox {
                address: "a@example.com".into(),
                params: vec![],
            },
            rcpt_to: vec![],
            ingress: StoredIngress::Http(StoredHttp {
                listener: "api".into(),
                peer: Some("[2001:db8::1]:4000".parse().unwrap()),
                local: Some("[2001:db8::2]:443".parse().unwrap()),
                tls: None,
                principal: Some("svc".into()),
            }),
            body: BlobId("b".into()),
            retry: false,
            notification: false,
            lease: None,
            prior_attempt: None,
            signals: [(
                "message_parse".to_owned(),
                serde_json::json!({"defects": []}),
            )]
            .into(),
        };
        let json = serde_json::to_string(&tx).unwrap();
        assert!(
            json.contains(r#""ingress":{"http":{"listener":"api""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<NewTransaction>(&json).unwrap(), tx);
        let generated = NewTransaction {
            ingress: StoredIngress::Generated,
            signals: BTreeMap::new(),
            ..tx
        };
        let json = serde_json::to_string(&generated).unwrap();
        assert!(json.contains(r#""ingress":"generated""#), "{json}");
        assert!(!json.contains("signals"), "empty signals are left out");
        assert_eq!(
            serde_json::from_str::<NewTransaction>(&json).unwrap(),
            generated
        );
    }
}

//! What the store keeps. Plain data with serde, independent of the
//! in-memory transaction model of the filter chain.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Opaque transaction id (URL-safe, unique across replicas).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxId(pub String);

impl TxId {
    /// The longest id a caller may choose ([`CreateOptions::id`]).
    pub const MAX_LEN: usize = 128;

    /// Whether `s` may be a caller-chosen id: 1 to [`TxId::MAX_LEN`]
    /// characters of `[A-Za-z0-9_-]`, the alphabet of the ids stores pick.
    /// Ids appear in REST paths (so URL-safe, with nothing to escape), and
    /// the Redis store's version messages separate an id from what follows
    /// it by a space: an id outside this alphabet could be misread there.
    pub fn is_valid(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }
}

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

impl StoredResponse {
    /// Success, temporary or permanent failure, by the code alone: the same
    /// classification the chain applies to a live reply, so a stored
    /// attempt is judged as it was when it happened.
    pub fn class(&self) -> koukan_chain::ReplyClass {
        koukan_chain::ReplyClass::of(self.code)
    }
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
    /// `remote_host` as the request gave it (`[host, port]`), echoed back
    /// when the transaction is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<(String, u16)>,
    /// `local_host` likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_host: Option<(String, u16)>,
    /// The blobs of a message-builder body by the names the request gave
    /// them (`inline0`, its `create_id`s): what a read lists as the body's
    /// `blob_status`, and what a later request's `reuse_uri` finds. Empty
    /// for a raw body.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blobs: BTreeMap<String, BlobId>,
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
    pub final_attempt_reason: Option<FinalReason>,
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
    Final { reason: FinalReason },
}

/// Why a transaction is final. Stored, and shown by the admin API, as the
/// strings of the original Koukan (`as_str`), so that records, logs and
/// tools agree across the two implementations.
///
/// Strings earlier builds of this one wrote are still read: `cancelled`
/// (what a cancellation recorded before it became
/// [`FinalReason::DownstreamCancelled`], as in the original) reads as
/// `DownstreamCancelled`. Any other unknown string is an error
/// ([`UnknownFinalReason`]): no build wrote one, so it means a damaged
/// record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinalReason {
    /// `upstream response success`: delivered.
    UpstreamSuccess,
    /// `upstream response permfail`: the data response was permanent.
    UpstreamPermfail,
    /// `upstream mail_response permfail`
    UpstreamMailPermfail,
    /// `upstream rcpt_response permfail`
    UpstreamRcptPermfail,
    /// `exploder/oneshot all rcpts failed`
    AllRcptsFailed,
    /// `downstream timeout`
    DownstreamTimeout,
    /// `downstream cancelled`: cancelled through the store (the admin API,
    /// or a message whose storing was in doubt being withdrawn).
    DownstreamCancelled,
    /// `retry policy max attempts`
    RetryMaxAttempts,
    /// `retry policy deadline`
    RetryDeadline,
    /// `upstream temporary failure, retries disabled`: not in the original,
    /// which has no per-transaction switch for retries.
    UpstreamTempNoRetry,
}

/// A final reason string that is none of [`FinalReason`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown final reason {0:?}")]
pub struct UnknownFinalReason(pub String);

impl FinalReason {
    /// Every reason, for tests and documentation.
    pub const ALL: [FinalReason; 10] = [
        FinalReason::UpstreamSuccess,
        FinalReason::UpstreamPermfail,
        FinalReason::UpstreamMailPermfail,
        FinalReason::UpstreamRcptPermfail,
        FinalReason::AllRcptsFailed,
        FinalReason::DownstreamTimeout,
        FinalReason::DownstreamCancelled,
        FinalReason::RetryMaxAttempts,
        FinalReason::RetryDeadline,
        FinalReason::UpstreamTempNoRetry,
    ];

    /// What cancellation recorded before it wrote `downstream cancelled`.
    const LEGACY_CANCELLED: &'static str = "cancelled";

    pub fn as_str(self) -> &'static str {
        match self {
            FinalReason::UpstreamSuccess => "upstream response success",
            FinalReason::UpstreamPermfail => "upstream response permfail",
            FinalReason::UpstreamMailPermfail => "upstream mail_response permfail",
            FinalReason::UpstreamRcptPermfail => "upstream rcpt_response permfail",
            FinalReason::AllRcptsFailed => "exploder/oneshot all rcpts failed",
            FinalReason::DownstreamTimeout => "downstream timeout",
            FinalReason::DownstreamCancelled => "downstream cancelled",
            FinalReason::RetryMaxAttempts => "retry policy max attempts",
            FinalReason::RetryDeadline => "retry policy deadline",
            FinalReason::UpstreamTempNoRetry => "upstream temporary failure, retries disabled",
        }
    }

    /// Delivered: the only final state that sends no bounce.
    pub fn is_success(self) -> bool {
        self == FinalReason::UpstreamSuccess
    }
}

impl std::str::FromStr for FinalReason {
    type Err = UnknownFinalReason;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == Self::LEGACY_CANCELLED {
            return Ok(FinalReason::DownstreamCancelled);
        }
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownFinalReason(s.to_owned()))
    }
}

impl std::fmt::Display for FinalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FinalReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FinalReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Owned: a reason inside an escaped JSON string cannot be borrowed.
        let s = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a cancel did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// Not under a lease: final now, with the reason
    /// [`FinalReason::DownstreamCancelled`].
    Cancelled,
    /// Under a lease: flagged; the attempt in flight finishes (it may
    /// still deliver) and the holder records it as final.
    Requested,
    /// Already final: nothing changed (its reason stands).
    AlreadyFinal,
}

/// Options of [`Store::create_with`](crate::Store::create_with).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The id to give the transaction (the REST API hands its id out
    /// before the body is complete); it must satisfy [`TxId::is_valid`].
    /// `None`: the store picks one, as `create_transaction` does.
    pub id: Option<TxId>,
    /// Makes the creation idempotent: a second creation with the same
    /// unexpired key creates nothing and reports the first one.
    pub idempotency: Option<IdempotencyKey>,
    /// Keep the body readable until gc deletes the transaction, instead
    /// of deleting its data as soon as every transaction using it is
    /// final: for a body later requests may reuse (the REST API's
    /// `reuse_uri`).
    pub keep_body: bool,
}

/// See [`CreateOptions::idempotency`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The client's key: 1 to [`IdempotencyKey::MAX_LEN`] characters, any
    /// of them (NUL included). Keys are one namespace per store: the caller
    /// qualifies them, e.g. `"sender\0key"`, so that two clients' keys
    /// never meet.
    pub key: String,
    /// A digest of the request that created it, kept with the key, so
    /// that the caller can tell a retry (same fingerprint) from a
    /// different request reusing the key.
    pub fingerprint: String,
    /// The key is kept until then (by the store's clock; milliseconds,
    /// truncated): from then on it counts as absent. gc deletes expired
    /// keys, and a key whose transaction gc deletes goes with it.
    pub expires: SystemTime,
}

impl IdempotencyKey {
    /// The longest key, in characters.
    pub const MAX_LEN: usize = 255;
}

/// What [`Store::create_with`](crate::Store::create_with) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// A new transaction, with this id.
    New(TxId),
    /// The idempotency key was in use (and unexpired): nothing was
    /// created. `id` is the transaction the key's first use created,
    /// `fingerprint` the one stored with the key.
    Existing { id: TxId, fingerprint: String },
}

impl Created {
    /// The transaction's id, new or existing.
    pub fn id(&self) -> &TxId {
        match self {
            Created::New(id) | Created::Existing { id, .. } => id,
        }
    }
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
    use koukan_chain::ReplyClass;

    use super::*;

    #[test]
    fn final_reasons_are_the_original_strings() {
        let strings: Vec<&str> = FinalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            strings,
            [
                "upstream response success",
                "upstream response permfail",
                "upstream mail_response permfail",
                "upstream rcpt_response permfail",
                "exploder/oneshot all rcpts failed",
                "downstream timeout",
                "downstream cancelled",
                "retry policy max attempts",
                "retry policy deadline",
                "upstream temporary failure, retries disabled",
            ]
        );
        for r in FinalReason::ALL {
            assert_eq!(r.as_str().parse::<FinalReason>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<FinalReason>(&json).unwrap(), r);
            assert_eq!(r.is_success(), r == FinalReason::UpstreamSuccess);
        }
    }

    #[test]
    fn legacy_cancelled_reads_as_downstream_cancelled() {
        assert_eq!("cancelled".parse(), Ok(FinalReason::DownstreamCancelled));
        assert_eq!(
            serde_json::from_str::<FinalReason>("\"cancelled\"").unwrap(),
            FinalReason::DownstreamCancelled
        );
        // Written back in the current form.
        assert_eq!(
            FinalReason::DownstreamCancelled.as_str(),
            "downstream cancelled"
        );
    }

    #[test]
    fn unknown_final_reasons_are_refused() {
        for s in ["", "delivered", "Upstream response success", "cancelled "] {
            assert_eq!(
                s.parse::<FinalReason>(),
                Err(UnknownFinalReason(s.to_owned()))
            );
            let json = serde_json::to_string(s).unwrap();
            let e = serde_json::from_str::<FinalReason>(&json).unwrap_err();
            assert!(e.to_string().contains("unknown final reason"), "{e}");
        }
    }

    /// The record as the admin API shows it: the reason as its string.
    #[test]
    fn a_record_serializes_its_reason_as_the_string() {
        let next = NextStep::Final {
            reason: FinalReason::RetryDeadline,
        };
        assert_eq!(
            serde_json::to_value(&next).unwrap(),
            serde_json::json!({"Final": {"reason": "retry policy deadline"}})
        );
    }

    #[test]
    fn stored_responses_are_classed_by_their_code() {
        let class = |code| {
            StoredResponse {
                code,
                text: "x".into(),
            }
            .class()
        };
        assert_eq!(class(250), ReplyClass::Ok);
        assert_eq!(class(299), ReplyClass::Ok);
        assert_eq!(class(451), ReplyClass::Temp);
        assert_eq!(class(354), ReplyClass::Temp);
        assert_eq!(class(550), ReplyClass::Perm);
        assert_eq!(class(600), ReplyClass::Temp);
    }

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
                remote_host: None,
                local_host: None,
                blobs: BTreeMap::new(),
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

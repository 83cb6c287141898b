//! Encoding of times and transaction hashes.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;

use serde::{Deserialize, Serialize};

use crate::{
    AttemptRecord, AttemptResponses, NewTransaction, ReplicaId, StoreError, StoreResult, TxId,
    TxRecord,
};

/// One line of a transaction's `history` field (the finish script writes
/// the same shape).
#[derive(Serialize, Deserialize)]
pub(super) struct HistoryLine {
    pub attempt: u32,
    pub finished_ms: i64,
    pub responses: AttemptResponses,
}

impl HistoryLine {
    /// The line, newline included, as the history field holds it.
    pub fn encode(&self) -> StoreResult<String> {
        serde_json::to_string(self)
            .map(|j| j + "\n")
            .map_err(|e| StoreError::Internal(format!("encoding an attempt: {e}")))
    }
}

fn from_ms(ms: i64) -> Option<SystemTime> {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

fn history(raw: Option<String>) -> StoreResult<Vec<AttemptRecord>> {
    raw.unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let h: HistoryLine =
                serde_json::from_str(l).map_err(|e| bad("history", &e.to_string()))?;
            Ok(AttemptRecord {
                attempt: h.attempt,
                finished: from_ms(h.finished_ms)
                    .ok_or_else(|| bad("history", "time out of range"))?,
                responses: h.responses,
            })
        })
        .collect()
}

/// Milliseconds since the epoch, truncated toward it: the precision
/// every store keeps (and what sorted-set scores, doubles, hold exactly).
pub(super) fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// `t + d` in milliseconds; at least 1 ms later, so that a claim with a
/// zero TTL does not leave the transaction due at the claim's own `now`.
/// Saturates: a far-future time must not wrap into the past and make a
/// lease look expired.
pub(super) fn ms_after(t: SystemTime, d: Duration) -> i64 {
    let d = i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
    ms(t).saturating_add(d)
}

fn parse_time(field: &str, raw: &[u8]) -> StoreResult<SystemTime> {
    let ms: i64 = std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(field, "not a millisecond timestamp"))?;
    from_ms(ms).ok_or_else(|| bad(field, "out of range"))
}

fn bad(field: &str, why: &str) -> StoreError {
    StoreError::Internal(format!("redis transaction hash: field {field}: {why}"))
}

/// A hash read as field → raw value, from a flat `HGETALL` array (RESP2
/// and inside scripts) or a map (RESP3).
pub(super) fn fields(v: Value) -> StoreResult<HashMap<String, Vec<u8>>> {
    let pairs: Vec<(Value, Value)> = match v {
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(StoreError::Internal(
                    "redis returned an odd-length hash".into(),
                ));
            }
            let mut it = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        Value::Map(pairs) => pairs,
        other => {
            return Err(StoreError::Internal(format!(
                "redis returned {other:?} where a hash was expected"
            )));
        }
    };
    pairs
        .into_iter()
        .map(|(k, v)| Ok((string(k)?, bytes(v)?)))
        .collect()
}

pub(super) fn bytes(v: Value) -> StoreResult<Vec<u8>> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        other => Err(StoreError::Internal(format!(
            "redis returned {other:?} where a string was expected"
        ))),
    }
}

fn string(v: Value) -> StoreResult<String> {
    String::from_utf8(bytes(v)?)
        .map_err(|_| StoreError::Internal("redis returned a non-UTF-8 field name".into()))
}

/// Decodes a transaction hash (see the module docs for its fields).
pub(super) fn decode(mut f: HashMap<String, Vec<u8>>) -> StoreResult<TxRecord> {
    let text = |f: &mut HashMap<String, Vec<u8>>, name: &str| -> StoreResult<Option<String>> {
        f.remove(name)
            .map(|b| String::from_utf8(b).map_err(|_| bad(name, "not UTF-8")))
            .transpose()
    };
    let required = |v: Option<String>, name: &str| v.ok_or_else(|| bad(name, "missing"));
    let number = |v: String, name: &str| -> StoreResult<u64> {
        v.parse().map_err(|_| bad(name, "not a number"))
    };
    let time = |f: &mut HashMap<String, Vec<u8>>, name: &str| -> StoreResult<Option<SystemTime>> {
        f.remove(name).map(|b| parse_time(name, &b)).transpose()
    };

    let id = TxId(required(text(&mut f, "id")?, "id")?);
    let tx: NewTransaction = serde_json::from_str(&required(text(&mut f, "tx")?, "tx")?)
        .map_err(|e| bad("tx", &e.to_string()))?;
    let responses: Option<AttemptResponses> = text(&mut f, "responses")?
        .map(|j| serde_json::from_str(&j).map_err(|e| bad("responses", &e.to_string())))
        .transpose()?;
    let attempts = number(required(text(&mut f, "attempts")?, "attempts")?, "attempts")?;
    let history = history(text(&mut f, "history")?)?;
    Ok(TxRecord {
        id,
        tx,
        created: time(&mut f, "created")?.ok_or_else(|| bad("created", "missing"))?,
        last_update: time(&mut f, "updated")?.ok_or_else(|| bad("updated", "missing"))?,
        version: number(required(text(&mut f, "version")?, "version")?, "version")?,
        attempt_count: u32::try_from(attempts).map_err(|_| bad("attempts", "out of range"))?,
        next_attempt: time(&mut f, "next")?,
        final_attempt_reason: text(&mut f, "final")?
            .map(|r| r.parse())
            .transpose()
            .map_err(|e| bad("final", &format!("{e}")))?,
        lease_owner: text(&mut f, "owner")?.map(ReplicaId),
        lease_expires: time(&mut f, "expires")?,
        cancelled: f.contains_key("cancelled"),
        last_responses: responses,
        attempts: history,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_kept_in_milliseconds() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(ms(t), 1_700_000_000_123);
        let back = parse_time("t", ms(t).to_string().as_bytes()).unwrap();
        assert_eq!(back, UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        let before = UNIX_EPOCH - Duration::from_millis(5);
        assert_eq!(ms(before), -5);
        assert_eq!(parse_time("t", b"-5").unwrap(), before);
        assert!(parse_time("t", b"1e5").is_err());
    }

    #[test]
    fn lease_ends_at_least_a_millisecond_later() {
        let t = UNIX_EPOCH + Duration::from_millis(10);
        assert_eq!(ms_after(t, Duration::ZERO), 11);
        assert_eq!(ms_after(t, Duration::from_secs(2)), 2010);
        assert_eq!(ms_after(t, Duration::MAX), i64::MAX);
    }

    #[test]
    fn flat_and_map_hashes_decode_alike() {
        let flat = Value::Array(vec![
            Value::BulkString(b"a".to_vec()),
            Value::BulkString(b"1".to_vec()),
        ]);
        let map = Value::Map(vec![(
            Value::BulkString(b"a".to_vec()),
            Value::BulkString(b"1".to_vec()),
        )]);
        assert_eq!(fields(flat).unwrap(), fields(map).unwrap());
        assert!(fields(Value::Array(vec![Value::Nil])).is_err());
    }
}

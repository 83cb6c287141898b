//! Small conversions shared by the embedded store: times, ids, errors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::StoreError;

/// Milliseconds since the UNIX epoch, truncated toward the epoch. The
/// store keeps every time at this precision: what SQLite stores as an
/// INTEGER and what the suite expects from every backend.
pub(super) fn to_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

pub(super) fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// The store's own clock, for `created`, `last_update` and the leases of
/// calls that take no `now` (create, renew).
pub(super) fn wall_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// A lease length in milliseconds, at least 1: with a zero TTL a claimed
/// transaction would still be due at the claim's own `now`, and the same
/// claim could hand it out twice.
pub(super) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// `ms + ttl` without overflow (a far-future `now` must not wrap into the
/// past and make a lease look expired).
pub(super) fn expiry(ms: i64, ttl: i64) -> i64 {
    ms.saturating_add(ttl)
}

pub(super) fn to_i64(what: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Internal(format!("{what} {v} does not fit in i64")))
}

pub(super) fn to_u64(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Internal(format!("{what} {v} is negative")))
}

/// A fresh id: 128 random bits from the thread-local CSPRNG as 32
/// lowercase hex digits (URL-safe, no coordination needed between
/// processes, collision odds negligible).
pub(super) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Maps a SQLite error to the store's error kinds. `context` says which
/// operation failed, so the message is useful in a log without a trace.
pub(super) fn sql_error(context: &str, err: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    let message = format!("sqlite: {context}: {err}");
    match err.sqlite_error_code() {
        // SQLITE_FULL: the disk, or the configured max_page_count, is full.
        Some(C::DiskFull) => StoreError::Full(message),
        // Conditions that may clear up (lock held by another process, I/O
        // trouble, file made read-only, memory pressure): the client gets
        // a temporary failure and retries.
        Some(
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::SystemIoFailure
            | C::CannotOpen
            | C::ReadOnly
            | C::PermissionDenied
            | C::OutOfMemory
            | C::FileLockingProtocolFailed
            | C::NoLargeFileSupport,
        ) => StoreError::Unavailable(message),
        _ => StoreError::Internal(message),
    }
}

/// Recreates an error for each request of a failed batch (`StoreError` is
/// not `Clone`; every waiter gets its own copy).
pub(super) fn duplicate(err: &StoreError) -> StoreError {
    match err {
        StoreError::NotFound(s) => StoreError::NotFound(s.clone()),
        StoreError::LeaseLost(id) => StoreError::LeaseLost(id.clone()),
        StoreError::BlobConflict { blob, reason } => StoreError::BlobConflict {
            blob: blob.clone(),
            reason: reason.clone(),
        },
        StoreError::Unavailable(s) => StoreError::Unavailable(s.clone()),
        StoreError::Full(s) => StoreError::Full(s.clone()),
        StoreError::Internal(s) => StoreError::Internal(s.clone()),
        StoreError::Exists(s) => StoreError::Exists(s.clone()),
        StoreError::Invalid(s) => StoreError::Invalid(s.clone()),
        StoreError::NotAStore { path, found } => StoreError::NotAStore {
            path: path.clone(),
            found: found.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_round_trip() {
        for ms in [0, 1, 1_700_000_000_123, -1, -5_000] {
            assert_eq!(to_ms(from_ms(ms)), ms);
        }
        let t = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_999_999);
        assert_eq!(to_ms(t), 1_700_000_000_123);
    }

    #[test]
    fn ttl_is_at_least_one_ms() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 1);
        assert_eq!(ttl_ms(Duration::from_secs(2)), 2000);
        assert_eq!(expiry(i64::MAX - 1, 10), i64::MAX);
    }

    #[test]
    fn ids_are_hex_128_bit() {
        let id = new_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(new_id(), id);
    }
}

//! `Content-Range: bytes first-last/total` for ranged blob PUTs (request)
//! and the stored state of a blob (reply).

/// A range of a PUT (`bytes 0-6/*`, `bytes 7-12/13`), or what a blob holds
/// (`bytes 0-12/13`; `total` unknown while it is not finalized).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    /// Inclusive. A range always holds at least one byte.
    pub last: u64,
    pub total: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("not of the form \"bytes first-last/total\" (total a number or *)")]
    Syntax,
    #[error("last byte before first")]
    Backwards,
    #[error("range ends beyond the total length")]
    BeyondTotal,
    #[error("range ends beyond the largest length (2^64 - 1 bytes)")]
    TooLong,
}

impl ContentRange {
    /// Bytes the range covers.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn parse(s: &str) -> Result<Self, RangeError> {
        let rest = s.trim().strip_prefix("bytes ").ok_or(RangeError::Syntax)?;
        let (span, total) = rest.split_once('/').ok_or(RangeError::Syntax)?;
        let (first, last) = span.split_once('-').ok_or(RangeError::Syntax)?;
        let num = |s: &str| -> Result<u64, RangeError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RangeError::Syntax);
            }
            s.parse().map_err(|_| RangeError::Syntax)
        };
        let first = num(first)?;
        let last = num(last)?;
        let total = match total {
            "*" => None,
            t => Some(num(t)?),
        };
        if last < first {
            return Err(RangeError::Backwards);
        }
        // `last + 1` (the length a range reaches) must be a u64.
        if last == u64::MAX {
            return Err(RangeError::TooLong);
        }
        if total.is_some_and(|t| last >= t) {
            return Err(RangeError::BeyondTotal);
        }
        Ok(Self { first, last, total })
    }

    /// The reply header for a blob holding `length` bytes, of which
    /// `total` is the final length if known. `None` for an empty blob:
    /// a range cannot describe zero bytes (the original rendered the
    /// impossible `bytes 0--1/…`); an empty blob's reply has no
    /// Content-Range, only `X-Blob-Length: 0`.
    pub fn stored(length: u64, total: Option<u64>) -> Option<String> {
        if length == 0 {
            return None;
        }
        Some(match total {
            Some(t) => format!("bytes 0-{}/{t}", length - 1),
            None => format!("bytes 0-{}/*", length - 1),
        })
    }
}

impl std::fmt::Display for ContentRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.total {
            Some(t) => write!(f, "bytes {}-{}/{t}", self.first, self.last),
            None => write!(f, "bytes {}-{}/*", self.first, self.last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in ["bytes 0-6/*", "bytes 7-12/13", "bytes 0-0/1"] {
            assert_eq!(ContentRange::parse(s).unwrap().to_string(), s);
        }
        let r = ContentRange::parse("bytes 7-12/13").unwrap();
        assert_eq!((r.first, r.last, r.total, r.len()), (7, 12, Some(13), 6));
    }

    #[test]
    fn refuses_bad_ranges() {
        for (s, e) in [
            ("bytes 0-6", RangeError::Syntax),
            ("items 0-6/*", RangeError::Syntax),
            ("bytes -6/*", RangeError::Syntax),
            ("bytes 0-+6/*", RangeError::Syntax),
            ("bytes 6-0/*", RangeError::Backwards),
            ("bytes 0-13/13", RangeError::BeyondTotal),
            ("bytes 0-99999999999999999999/*", RangeError::Syntax),
            ("bytes 0-18446744073709551615/*", RangeError::TooLong),
            ("bytes 5-18446744073709551615/*", RangeError::TooLong),
        ] {
            assert_eq!(ContentRange::parse(s), Err(e), "{s}");
        }
    }

    #[test]
    fn stored_state() {
        assert_eq!(ContentRange::stored(13, Some(13)).unwrap(), "bytes 0-12/13");
        assert_eq!(ContentRange::stored(7, None).unwrap(), "bytes 0-6/*");
        assert_eq!(ContentRange::stored(0, None), None);
    }
}

//! The message-data line length limit (`Limits::max_data_line_length`).
//!
//! Message data streams through in chunks and is never split into lines
//! (see `data`), so the limit is checked by counting: [`LineLimit`] keeps
//! only the length of the line in progress, whatever the chunk boundaries,
//! and memory stays constant however long a line is.

/// Counts the octets of the current message line, including its line end,
/// across chunks. A line ends at LF (CRLF, or a bare LF, which the data
/// receivers pass through as content); the last line of a BDAT message
/// need not end at all and counts all the same.
#[derive(Clone, Debug)]
pub(crate) struct LineLimit {
    max: usize,
    /// Octets of the line in progress (since the last LF).
    current: usize,
}

/// A line went past the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message line longer than {max} octets")]
pub(crate) struct LineTooLong {
    pub max: usize,
}

impl LineLimit {
    /// `max` is the longest line accepted, in octets including CRLF.
    pub fn new(max: usize) -> Self {
        Self { max, current: 0 }
    }

    /// Counts the next octets of the message (as the chain will see them:
    /// after dot-unstuffing). Fails as soon as a line exceeds the limit,
    /// even before its end has arrived.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), LineTooLong> {
        // Every octet of every message passes here. When the line in
        // progress plus all of `data` fits in the limit, no line can go
        // over it and only the length after the last line end matters:
        // one vectorised search from the end (with the default 1 MiB limit
        // and 64 KiB chunks, always).
        if self.current.saturating_add(data.len()) <= self.max {
            match memchr::memrchr(b'\n', data) {
                Some(lf) => self.current = data.len() - lf - 1,
                None => self.current += data.len(),
            }
            return Ok(());
        }
        let mut start = 0;
        for lf in memchr::memchr_iter(b'\n', data) {
            self.add(lf + 1 - start)?;
            self.current = 0;
            start = lf + 1;
        }
        self.add(data.len() - start)
    }

    fn add(&mut self, octets: usize) -> Result<(), LineTooLong> {
        self.current = self.current.saturating_add(octets);
        if self.current > self.max {
            return Err(LineTooLong { max: self.max });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_counts_the_line_end_and_spans_chunks() {
        // 10 octets with CRLF: exactly the limit.
        let mut l = LineLimit::new(10);
        assert_eq!(l.feed(b"12345678\r\n"), Ok(()));
        // The same split anywhere, including between CR and LF.
        for split in 0..=10 {
            let line = b"12345678\r\n";
            let mut l = LineLimit::new(10);
            assert_eq!(l.feed(&line[..split]), Ok(()), "split {split}");
            assert_eq!(l.feed(&line[split..]), Ok(()), "split {split}");
            // Counting starts again after the LF.
            assert_eq!(l.feed(b"abcdefgh\r\n"), Ok(()));
        }
        // 11 octets: one over, refused at the CR already.
        let mut l = LineLimit::new(10);
        assert_eq!(l.feed(b"123456789"), Ok(()));
        assert_eq!(l.feed(b"\r"), Ok(()));
        assert_eq!(l.feed(b"\n"), Err(LineTooLong { max: 10 }));
        let mut l = LineLimit::new(10);
        assert_eq!(l.feed(b"12345678901"), Err(LineTooLong { max: 10 }));
    }

    #[test]
    fn an_unterminated_last_line_counts_and_bare_lf_ends_a_line() {
        let mut l = LineLimit::new(10);
        assert_eq!(l.feed(b"short\r\n0123456789"), Ok(()));
        assert_eq!(l.feed(b"x"), Err(LineTooLong { max: 10 }));
        let mut l = LineLimit::new(10);
        assert_eq!(l.feed(b"123456789\n123456789\n"), Ok(()));
        // A bare CR is content, not a line end.
        let mut l = LineLimit::new(10);
        assert_eq!(l.feed(b"12345\r6789\r\n"), Err(LineTooLong { max: 10 }));
    }

    #[test]
    fn ten_megabytes_in_many_chunks_without_buffering() {
        let mut l = LineLimit::new(1024 * 1024);
        let block = vec![b'x'; 64 * 1024];
        let mut result = Ok(());
        let mut fed = 0;
        while fed < 10 * 1024 * 1024 && result.is_ok() {
            result = l.feed(&block);
            fed += block.len();
        }
        assert_eq!(result, Err(LineTooLong { max: 1024 * 1024 }));
        // Refused at the chunk that crossed the limit, not at the end.
        assert_eq!(fed, 1024 * 1024 + 64 * 1024);
    }

    /// The whole-chunk shortcut and the line-by-line count agree with a
    /// plain octet-by-octet count, for random lines, limits and chunkings.
    #[test]
    fn agrees_with_counting_octet_by_octet() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        for _ in 0..500 {
            let max = 2 + next(300);
            let mut message = Vec::new();
            for _ in 0..next(40) {
                message.extend(std::iter::repeat_n(b'a', next(max as u64 + 20)));
                message.extend_from_slice(if next(2) == 0 { b"\r\n" } else { b"\n" });
            }
            let (mut current, mut want) = (0usize, Ok(()));
            for &b in &message {
                current += 1;
                if current > max {
                    want = Err(LineTooLong { max });
                    break;
                }
                if b == b'\n' {
                    current = 0;
                }
            }
            let mut l = LineLimit::new(max);
            let mut got = Ok(());
            let mut rest = &message[..];
            while !rest.is_empty() && got.is_ok() {
                let (chunk, tail) = rest.split_at(1 + next(rest.len() as u64));
                got = l.feed(chunk);
                rest = tail;
            }
            assert_eq!(
                got,
                want,
                "max {max}, message {:?}",
                String::from_utf8_lossy(&message)
            );
        }
    }
}

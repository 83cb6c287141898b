//! Streaming encoder for the DATA command (RFC 5321 4.5.2).
//!
//! The body arrives in arbitrary pieces, so every decision that depends on
//! a neighbouring byte carries state across calls: whether the next byte
//! starts a line (a leading `.` must be doubled) and whether the previous
//! piece ended with a CR whose LF may be the first byte of the next piece.
//!
//! Line endings are canonicalised: a bare LF or a bare CR becomes CRLF.
//! RFC 5321 2.3.8 forbids sending bare CR/LF, and passing them through is
//! what makes "SMTP smuggling" possible (a receiver reading `\n.\n` or
//! `\r.\r` as the end of data while we do not). After canonicalisation the
//! only end-of-data sequence on the wire is the one [`DotStuffer::finish`]
//! writes.

/// Per-message encoder state; feed every piece through
/// [`DotStuffer::encode`] in order, then call [`DotStuffer::finish`] once.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the wire form of `input` to `out`. A trailing CR is held
    /// back until the next byte (or [`DotStuffer::finish`]) shows whether it
    /// is part of a CRLF.
    pub fn encode(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        // Stuffing and canonicalisation rarely add much; reserve a little
        // slack so a typical piece needs one allocation.
        out.reserve(input.len() + input.len() / 64 + 4);
        while !input.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if input[0] == b'\n' {
                    input = &input[1..];
                }
                // Otherwise it was a bare CR, now a line break; the current
                // byte starts the next line and is handled below.
                continue;
            }
            if self.at_line_start && input[0] == b'.' {
                out.push(b'.');
            }
            // Copy the run up to the next line-ending byte in one go.
            let end = input
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(input.len());
            if end > 0 {
                out.extend_from_slice(&input[..end]);
                self.at_line_start = false;
                input = &input[end..];
                continue;
            }
            match input[0] {
                b'\r' => self.pending_cr = true,
                _ => {
                    // Bare LF.
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                }
            }
            input = &input[1..];
        }
    }

    /// Completes the last line if the body did not end with a line break
    /// and appends the end-of-data marker.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            self.at_line_start = true;
            out.extend_from_slice(b"\r\n");
        }
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pieces: &[&[u8]]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for p in pieces {
            s.encode(p, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn plain_body() {
        assert_eq!(encode(&[b"a\r\nb\r\n"]), b"a\r\nb\r\n.\r\n");
    }

    #[test]
    fn empty_body() {
        assert_eq!(encode(&[]), b".\r\n");
        assert_eq!(encode(&[b"", b""]), b".\r\n");
    }

    #[test]
    fn leading_dots_are_doubled() {
        assert_eq!(
            encode(&[b".a\r\n..b\r\nc.d\r\n.\r\n"]),
            b"..a\r\n...b\r\nc.d\r\n..\r\n.\r\n"
        );
    }

    #[test]
    fn dot_after_chunk_boundary() {
        assert_eq!(encode(&[b"a\r\n", b".foo\r\n"]), b"a\r\n..foo\r\n.\r\n");
        assert_eq!(encode(&[b"a\r", b"\n.foo\r\n"]), b"a\r\n..foo\r\n.\r\n");
        assert_eq!(
            encode(&[b"a\r", b"\n", b".", b"foo"]),
            b"a\r\n..foo\r\n.\r\n"
        );
    }

    #[test]
    fn missing_final_crlf_is_added() {
        assert_eq!(encode(&[b"a\r\nno newline"]), b"a\r\nno newline\r\n.\r\n");
        assert_eq!(encode(&[b"a\r"]), b"a\r\n.\r\n");
    }

    #[test]
    fn bare_line_endings_are_canonicalised() {
        assert_eq!(encode(&[b"a\nb\rc\r\n"]), b"a\r\nb\r\nc\r\n.\r\n");
        // Smuggling attempts become stuffed lines, not an end of data.
        assert_eq!(encode(&[b"x\n.\ny\r\n"]), b"x\r\n..\r\ny\r\n.\r\n");
        assert_eq!(encode(&[b"x\r.\ry\r\n"]), b"x\r\n..\r\ny\r\n.\r\n");
        // A CR at the end of one piece followed by a non-LF.
        assert_eq!(encode(&[b"x\r", b".y\r\n"]), b"x\r\n..y\r\n.\r\n");
        assert_eq!(encode(&[b"x\r", b"\r\n"]), b"x\r\n\r\n.\r\n");
    }

    #[test]
    fn every_split_point_gives_the_same_output() {
        let body: &[u8] = b"From: a\r\n.hidden\r\n\r\n..two\r\nbare\nend\r.x";
        let whole = encode(&[body]);
        for i in 0..=body.len() {
            for j in i..=body.len() {
                assert_eq!(
                    encode(&[&body[..i], &body[i..j], &body[j..]]),
                    whole,
                    "split at {i},{j}"
                );
            }
        }
    }
}

//! Body encoders that work chunk by chunk (so a blob never has to be in
//! memory whole) and the scan that picks a part's transfer encoding.
//!
//! Every encoder writes its output *without* a line break after the last
//! line: in a multipart that break belongs to the boundary delimiter that
//! follows (RFC 2046 §5.1.1).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Hard limit on a line, without its CRLF (RFC 5322 §2.1.1).
pub(crate) const MAX_LINE: usize = 998;
/// Raw bytes per base64 line: 57 bytes → 76 characters (RFC 2045 §6.8).
pub(crate) const B64_LINE_RAW: usize = 57;
/// Characters per quoted-printable line before the soft break `=`.
const QP_LINE: usize = 75;

/// Content transfer encoding of a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cte {
    SevenBit,
    QuotedPrintable,
    Base64,
}

impl Cte {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cte::SevenBit => "7bit",
            Cte::QuotedPrintable => "quoted-printable",
            Cte::Base64 => "base64",
        }
    }
}

/// What the encoding choice needs to know about a content, gathered over
/// its chunks.
#[derive(Debug)]
pub(crate) struct Scan {
    len: u64,
    ascii: bool,
    /// NUL is not allowed in 7bit data (RFC 2045 §2.7).
    nul: bool,
    line: usize,
    max_line: usize,
    /// A CR not followed by LF, or an LF not preceded by CR.
    bare_break: bool,
    prev: u8,
    /// `=_` occurs: our boundaries start with it, so such content is never
    /// written as it is (base64 and QP output cannot contain `=_`).
    boundary_like: bool,
    /// Estimated quoted-printable size.
    qp_len: u64,
    utf8_carry: Vec<u8>,
    utf8_ok: bool,
}

impl Scan {
    pub(crate) fn new() -> Scan {
        Scan {
            len: 0,
            ascii: true,
            nul: false,
            line: 0,
            max_line: 0,
            bare_break: false,
            prev: 0,
            boundary_like: false,
            qp_len: 0,
            utf8_carry: Vec::new(),
            utf8_ok: true,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.len += chunk.len() as u64;
        for &b in chunk {
            match b {
                b'\n' => {
                    if self.prev != b'\r' {
                        self.bare_break = true;
                        self.qp_len += 3;
                    } else {
                        // CRLF: a hard break of two characters (the CR was
                        // counted as 3 below, take back 1).
                        self.qp_len = self.qp_len.saturating_sub(1);
                    }
                    self.line = 0;
                }
                b'\r' => {
                    if self.prev == b'\r' {
                        self.bare_break = true;
                    }
                    self.qp_len += 3;
                }
                _ => {
                    if self.prev == b'\r' {
                        self.bare_break = true;
                        self.line = 0;
                    }
                    self.line += 1;
                    self.max_line = self.max_line.max(self.line);
                    self.qp_len += if (b'!'..=b'~').contains(&b) && b != b'=' || b == b' ' {
                        1
                    } else {
                        3
                    };
                }
            }
            if b >= 0x80 {
                self.ascii = false;
            }
            if b == 0 {
                self.nul = true;
            }
            if self.prev == b'=' && b == b'_' {
                self.boundary_like = true;
            }
            self.prev = b;
        }
        if self.utf8_ok {
            self.check_utf8(chunk);
        }
    }

    fn check_utf8(&mut self, chunk: &[u8]) {
        let joined;
        let data = if self.utf8_carry.is_empty() {
            chunk
        } else {
            let mut v = std::mem::take(&mut self.utf8_carry);
            v.extend_from_slice(chunk);
            joined = v;
            &joined[..]
        };
        match std::str::from_utf8(data) {
            Ok(_) => {}
            Err(e) if e.error_len().is_none() => {
                self.utf8_carry = data[e.valid_up_to()..].to_vec();
            }
            Err(_) => self.utf8_ok = false,
        }
    }

    fn finish(&mut self) {
        if self.prev == b'\r' {
            self.bare_break = true;
        }
        if !self.utf8_carry.is_empty() {
            self.utf8_ok = false;
        }
    }

    /// Whether the content is valid UTF-8 (only meaningful after all
    /// chunks were pushed).
    pub(crate) fn utf8_ok(&mut self) -> bool {
        self.finish();
        self.utf8_ok
    }

    /// Fit to be written as it is: ASCII without NUL, lines within 998, CRLF line
    /// breaks only, nothing that looks like our boundaries. `at_end` is
    /// for the body of a single-part message, whose last line must end in
    /// CRLF (a part in a multipart needs not: the delimiter's CRLF follows).
    pub(crate) fn seven_bit(&mut self, at_end: bool) -> bool {
        self.finish();
        self.ascii
            && !self.nul
            && self.max_line <= MAX_LINE
            && !self.bare_break
            && !self.boundary_like
            && (!at_end || self.len == 0 || self.prev == b'\n')
    }

    /// Quoted-printable (readable where the text is mostly ASCII) unless it
    /// would be more than 25% bigger than base64 (mostly non-Latin text).
    pub(crate) fn text_encoding(&mut self, at_end: bool) -> Cte {
        if self.seven_bit(at_end) {
            return Cte::SevenBit;
        }
        let qp = self.qp_len + 3 * (self.qp_len / QP_LINE as u64);
        let b64 = self.len.div_ceil(3) * 4 + 2 * self.len.div_ceil(B64_LINE_RAW as u64);
        if qp * 4 <= b64 * 5 {
            Cte::QuotedPrintable
        } else {
            Cte::Base64
        }
    }
}

/// Base64 in lines of 76 characters, kept consistent across chunks.
pub(crate) struct Base64Lines {
    carry: Vec<u8>,
    first: bool,
}

impl Base64Lines {
    pub(crate) fn new() -> Base64Lines {
        Base64Lines {
            carry: Vec::with_capacity(B64_LINE_RAW),
            first: true,
        }
    }

    fn line(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        if !self.first {
            out.extend_from_slice(b"\r\n");
        }
        self.first = false;
        let start = out.len();
        out.resize(start + raw.len().div_ceil(3) * 4, 0);
        let n = STANDARD
            .encode_slice(raw, &mut out[start..])
            .unwrap_or_default();
        out.truncate(start + n);
    }

    pub(crate) fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        if !self.carry.is_empty() {
            let need = B64_LINE_RAW - self.carry.len();
            let take = need.min(data.len());
            self.carry.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.carry.len() < B64_LINE_RAW {
                return;
            }
            let line = std::mem::take(&mut self.carry);
            self.line(&line, out);
            self.carry = line;
            self.carry.clear();
        }
        let mut lines = data.chunks_exact(B64_LINE_RAW);
        for l in &mut lines {
            self.line(l, out);
        }
        self.carry.extend_from_slice(lines.remainder());
    }

    pub(crate) fn finish(mut self, out: &mut Vec<u8>) {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.line(&line, out);
        }
    }
}

/// Quoted-printable (RFC 2045 §6.7) of arbitrary bytes, exact on decoding:
/// CRLF pairs become hard line breaks, bare CR / LF are escaped, trailing
/// whitespace on a line is escaped, lines are at most 76 characters.
pub(crate) struct QuotedPrintable {
    line: usize,
    pending_ws: Option<u8>,
    pending_cr: bool,
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

impl QuotedPrintable {
    pub(crate) fn new() -> QuotedPrintable {
        QuotedPrintable {
            line: 0,
            pending_ws: None,
            pending_cr: false,
        }
    }

    fn emit(&mut self, token: &[u8], out: &mut Vec<u8>) {
        if self.line + token.len() > QP_LINE {
            out.extend_from_slice(b"=\r\n");
            self.line = 0;
        }
        out.extend_from_slice(token);
        self.line += token.len();
    }

    fn escaped(&mut self, b: u8, out: &mut Vec<u8>) {
        let t = [b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]];
        self.emit(&t, out);
    }

    /// The pending whitespace is followed by more text on its line.
    fn flush_ws_literal(&mut self, out: &mut Vec<u8>) {
        if let Some(ws) = self.pending_ws.take() {
            self.emit(&[ws], out);
        }
    }

    /// The pending whitespace ends a line: escape it so no transport
    /// strips it.
    fn flush_ws_escaped(&mut self, out: &mut Vec<u8>) {
        if let Some(ws) = self.pending_ws.take() {
            self.escaped(ws, out);
        }
    }

    pub(crate) fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        for &b in data {
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    self.flush_ws_escaped(out);
                    out.extend_from_slice(b"\r\n");
                    self.line = 0;
                    continue;
                }
                self.flush_ws_literal(out);
                self.escaped(b'\r', out);
            }
            match b {
                b'\r' => self.pending_cr = true,
                b' ' | b'\t' => {
                    self.flush_ws_literal(out);
                    self.pending_ws = Some(b);
                }
                _ => {
                    self.flush_ws_literal(out);
                    if (b'!'..=b'~').contains(&b) && b != b'=' {
                        self.emit(&[b], out);
                    } else {
                        self.escaped(b, out);
                    }
                }
            }
        }
    }

    pub(crate) fn finish(mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            self.flush_ws_literal(out);
            self.escaped(b'\r', out);
        }
        self.flush_ws_escaped(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qp(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = QuotedPrintable::new();
        for c in data.chunks(chunk.max(1)) {
            e.push(c, &mut out);
        }
        e.finish(&mut out);
        out
    }

    /// A reference decoder, independent of the encoder.
    fn qp_decode(enc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < enc.len() {
            match enc[i] {
                b'=' if enc.get(i + 1..i + 3) == Some(b"\r\n") => i += 3,
                b'=' => {
                    let h = std::str::from_utf8(&enc[i + 1..i + 3]).unwrap();
                    out.push(u8::from_str_radix(h, 16).unwrap());
                    i += 3;
                }
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    #[test]
    fn qp_is_exact_and_chunking_does_not_matter() {
        let samples: [&[u8]; 6] = [
            b"plain ascii\r\nsecond line \r\nthird\t",
            b"bare\nlf and bare\rcr and \r\r\n end",
            "grüße, ☃ and = signs ==".as_bytes(),
            &[b'x'; 300],
            b"trailing space \r",
            b"\r",
        ];
        for s in samples {
            let whole = qp(s, s.len());
            for chunk in [1, 2, 3, 7] {
                assert_eq!(qp(s, chunk), whole, "chunk {chunk} of {s:?}");
            }
            assert_eq!(qp_decode(&whole), s);
            for line in whole.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(line.len() <= 76, "{:?}", String::from_utf8_lossy(line));
                assert!(!line.ends_with(b" ") && !line.ends_with(b"\t"));
                assert!(
                    line.iter()
                        .all(|b| (b' '..=b'~').contains(b) || *b == b'\t')
                );
            }
            assert!(!whole.windows(2).any(|w| w == b"=_"));
        }
    }

    #[test]
    fn base64_lines_are_consistent_across_chunks() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut whole = Vec::new();
        let mut e = Base64Lines::new();
        e.push(&data, &mut whole);
        e.finish(&mut whole);
        for chunk in [1, 10, 56, 57, 58, 200] {
            let mut out = Vec::new();
            let mut e = Base64Lines::new();
            for c in data.chunks(chunk) {
                e.push(c, &mut out);
            }
            e.finish(&mut out);
            assert_eq!(out, whole, "chunk {chunk}");
        }
        let text = String::from_utf8(whole).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert!(lines[..lines.len() - 1].iter().all(|l| l.len() == 76));
        assert_eq!(STANDARD.decode(lines.concat()).unwrap(), data);
    }

    #[test]
    fn scan_chooses_encodings() {
        let enc = |s: &[u8], at_end: bool| {
            let mut sc = Scan::new();
            for c in s.chunks(3) {
                sc.push(c);
            }
            sc.text_encoding(at_end)
        };
        assert_eq!(enc(b"hello\r\nworld", false), Cte::SevenBit);
        assert_eq!(enc(b"hello\r\nworld", true), Cte::QuotedPrintable);
        assert_eq!(enc(b"hello\r\nworld\r\n", true), Cte::SevenBit);
        assert_eq!(enc(b"", true), Cte::SevenBit);
        assert_eq!(enc(b"hello\nworld", false), Cte::QuotedPrintable);
        assert_eq!(enc(b"a=_b", false), Cte::QuotedPrintable);
        assert_eq!(enc(b"nul\x00byte", false), Cte::QuotedPrintable);
        assert_eq!(enc(&[b'a'; 999], false), Cte::QuotedPrintable);
        assert_eq!(enc(&[b'a'; 998], false), Cte::SevenBit);
        assert_eq!(enc("grüße".as_bytes(), false), Cte::QuotedPrintable);
        let german = "Grüße aus München, bis später!\r\n".repeat(20);
        assert_eq!(enc(german.as_bytes(), false), Cte::QuotedPrintable);
        assert_eq!(enc("ПриветПриветПривет".as_bytes(), false), Cte::Base64);
        let mut sc = Scan::new();
        sc.push(&"é".as_bytes()[..1]);
        sc.push(&"é".as_bytes()[1..]);
        assert!(sc.utf8_ok());
        let mut sc = Scan::new();
        sc.push(b"\xff");
        assert!(!sc.utf8_ok());
        let mut sc = Scan::new();
        sc.push(&"é".as_bytes()[..1]);
        assert!(!sc.utf8_ok());
    }
}

//! `message_parse` filter: reads the complete message's header block
//! (RFC 5322) and records what is wrong with it as the
//! [`MessageDefects`] signal, for later filters and the stored record;
//! optionally refuses a message that has any defect.
//!
//! A whole-message filter (see [`koukan_chain::body`]): it holds the body
//! back until the last chunk, reads the header block from the spool (at
//! most `max_header_bytes`, never the body), then lets the message go on.
//! Its own parser rather than a MIME library: those are lenient by design
//! and repair what this filter is there to report.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use koukan_chain::body::{
    HeaderEnd, Message, MessageFilter, SpoolOptions, Verdict, WholeMessageLayer,
};
use koukan_chain::{Response, Signal, TxContext};
use serde::Serialize;

/// RFC 5322 2.1.1: a line is at most 998 octets, CRLF excluded.
pub const MAX_LINE: usize = 998;

/// The header block read when no limit is configured.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 256 * 1024;

/// At most this many defects are listed (the count says how many there
/// were): a message of ten thousand bad lines is not a ten-thousand-entry
/// record.
pub const MAX_LISTED: usize = 32;

/// Fields RFC 5322 3.6 allows at most once, as they are reported.
const SINGLE: [&str; 11] = [
    "Date",
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
];

/// Fields a message must have: Date and From (RFC 5322 3.6), and
/// Message-ID, which it SHOULD have (3.6.4) and without which duplicates
/// cannot be detected downstream.
const REQUIRED: [&str; 3] = ["Date", "From", "Message-ID"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageParseConfig {
    pub max_header_bytes: usize,
    /// The data reply for a message with a defect; none: defects are only
    /// recorded.
    pub reject: Option<Response>,
    pub spool: SpoolOptions,
}

impl Default for MessageParseConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            reject: None,
            spool: SpoolOptions::default(),
        }
    }
}

/// One thing wrong with the header block. `line` is 1-based, counted in
/// the header block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Defect {
    MissingHeader {
        header: &'static str,
    },
    DuplicateHeader {
        header: &'static str,
        count: usize,
    },
    LineTooLong {
        line: usize,
        length: usize,
    },
    /// Neither `name: value` (a name of printable ASCII, no space) nor a
    /// continuation of the field before it.
    BadHeaderSyntax {
        line: usize,
    },
    /// A CR or LF that is not part of a CRLF.
    BareLineEnd {
        line: usize,
    },
    /// No blank line within the limit; fields past it were not checked.
    HeaderBlockTooLong {
        limit: usize,
    },
}

/// What `message_parse` found: the signal it attaches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MessageDefects {
    /// The first [`MAX_LISTED`] defects.
    pub defects: Vec<Defect>,
    /// All of them.
    pub count: usize,
    /// Octets of the header block read.
    pub header_bytes: usize,
    pub header_fields: usize,
}

impl MessageDefects {
    fn push(&mut self, d: Defect) {
        self.count += 1;
        if self.defects.len() < MAX_LISTED {
            self.defects.push(d);
        }
    }

    pub fn is_clean(&self) -> bool {
        self.count == 0
    }
}

impl Signal for MessageDefects {
    const NAME: &'static str = "message_parse";

    fn to_json(&self) -> serde_json::Value {
        // Plain data: serializing it cannot fail.
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// RFC 5322 3.6.8 field name: printable ASCII but the colon.
fn is_field_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|b| (33..=126).contains(b) && *b != b':')
}

/// The defects of a header block (`bytes` as [`HeaderBlock`] holds them:
/// lines with their CRLF, no blank line).
///
/// [`HeaderBlock`]: koukan_chain::body::HeaderBlock
pub fn defects(bytes: &[u8], end: HeaderEnd, limit: usize) -> MessageDefects {
    let mut found = MessageDefects {
        header_bytes: bytes.len(),
        ..Default::default()
    };
    let mut lines: Vec<&[u8]> = bytes.split_inclusive(|b| *b == b'\n').collect();
    // Lines are CRLF-terminated; a block cut at the limit ends inside a
    // line, which is not judged.
    if end == HeaderEnd::TooLong && lines.last().is_some_and(|l| !l.ends_with(b"\n")) {
        lines.pop();
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut in_field = false;
    for (i, raw) in lines.into_iter().enumerate() {
        let n = i + 1;
        let line = raw
            .strip_suffix(b"\r\n")
            .or_else(|| raw.strip_suffix(b"\n"))
            .unwrap_or(raw);
        // A bare LF ended this line: split on LF, only CRLF is a line end.
        if (!raw.ends_with(b"\r\n") && raw.ends_with(b"\n")) || line.contains(&b'\r') {
            found.push(Defect::BareLineEnd { line: n });
        }
        if line.len() > MAX_LINE {
            found.push(Defect::LineTooLong {
                line: n,
                length: line.len(),
            });
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            if !in_field {
                found.push(Defect::BadHeaderSyntax { line: n });
            }
            continue;
        }
        match line.iter().position(|b| *b == b':') {
            Some(colon) if is_field_name(&line[..colon]) => {
                in_field = true;
                found.header_fields += 1;
                let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
                *counts.entry(name).or_default() += 1;
            }
            _ => {
                in_field = false;
                found.push(Defect::BadHeaderSyntax { line: n });
            }
        }
    }
    let count = |h: &str| counts.get(&h.to_ascii_lowercase()).copied().unwrap_or(0);
    if end == HeaderEnd::TooLong {
        found.push(Defect::HeaderBlockTooLong { limit });
    } else {
        // A field past the limit might be there: only a whole block shows
        // one missing.
        for header in REQUIRED {
            if count(header) == 0 {
                found.push(Defect::MissingHeader { header });
            }
        }
    }
    for header in SINGLE {
        let c = count(header);
        if c > 1 {
            found.push(Defect::DuplicateHeader { header, count: c });
        }
    }
    found
}

/// The filter's decision logic; [`layer`] puts it in a chain.
pub struct MessageParse {
    config: Arc<MessageParseConfig>,
}

impl MessageFilter for MessageParse {
    fn check<'a>(&'a self, ctx: &'a TxContext, message: &'a Message) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let limit = self.config.max_header_bytes;
            let header = match message.header_block(limit).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(tx = %ctx.id, error = %e, "reading the spooled header failed");
                    return Verdict::Reject(Response::new(
                        451,
                        "4.3.0 reading the message failed, try again later",
                    ));
                }
            };
            let found = defects(&header.bytes, header.end, limit);
            let clean = found.is_clean();
            if !clean {
                tracing::debug!(tx = %ctx.id, defects = ?found.defects, "message defects");
            }
            if let Err(e) = ctx.signals.insert(found) {
                // Two signal types named alike: a bug of this build.
                tracing::error!(tx = %ctx.id, error = %e, "message_parse signal not recorded");
            }
            match &self.config.reject {
                Some(reply) if !clean => Verdict::Reject(reply.clone()),
                _ => Verdict::Accept,
            }
        })
    }
}

/// The `message_parse` layer of one transaction.
pub fn layer(
    config: Arc<MessageParseConfig>,
    ctx: Arc<TxContext>,
) -> WholeMessageLayer<MessageParse> {
    let spool = Arc::new(config.spool.clone());
    WholeMessageLayer::new(Arc::new(MessageParse { config }), ctx, spool)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
From: a@example.com\r\nMessage-ID: <1@example.com>\r\nSubject: hi\r\n\tthere\r\n";

    fn blank() -> HeaderEnd {
        HeaderEnd::Blank { body_offset: 0 }
    }

    #[test]
    fn a_good_header_block_has_no_defect() {
        let d = defects(GOOD, blank(), 1000);
        assert!(d.is_clean(), "{d:?}");
        assert_eq!(d.header_fields, 4);
        assert_eq!(d.header_bytes, GOOD.len());
    }

    #[test]
    fn missing_and_duplicate_fields() {
        let d = defects(b"Subject: a\r\nsubject: b\r\nTo: x\r\n", blank(), 1000);
        assert_eq!(
            d.defects,
            [
                Defect::MissingHeader { header: "Date" },
                Defect::MissingHeader { header: "From" },
                Defect::MissingHeader {
                    header: "Message-ID"
                },
                Defect::DuplicateHeader {
                    header: "Subject",
                    count: 2
                },
            ]
        );
        // Repeatable fields may repeat.
        let mut block = GOOD.to_vec();
        block.extend_from_slice(b"Received: a\r\nReceived: b\r\n");
        assert!(defects(&block, blank(), 1000).is_clean());
    }

    #[test]
    fn syntax_line_length_and_line_ends() {
        let mut block = GOOD.to_vec();
        block.extend_from_slice(b"no colon here\r\n");
        block.extend_from_slice(b"Bad Name: x\r\n");
        block.extend_from_slice(b": empty name\r\n");
        block.extend_from_slice(format!("X-Long: {}\r\n", "a".repeat(MAX_LINE)).as_bytes());
        block.extend_from_slice(b"X-Bare: a\nX-Cr: b\rc\r\n");
        let d = defects(&block, blank(), 1 << 20);
        assert_eq!(
            d.defects,
            [
                Defect::BadHeaderSyntax { line: 6 },
                Defect::BadHeaderSyntax { line: 7 },
                Defect::BadHeaderSyntax { line: 8 },
                Defect::LineTooLong {
                    line: 9,
                    length: MAX_LINE + 8
                },
                Defect::BareLineEnd { line: 10 },
                Defect::BareLineEnd { line: 11 },
            ]
        );
        // A continuation line with no field before it.
        let d = defects(b" folded\r\nFrom: a\r\n", blank(), 100);
        assert_eq!(d.defects[0], Defect::BadHeaderSyntax { line: 1 });
    }

    #[test]
    fn a_cut_block_is_too_long_and_not_judged_for_missing_fields() {
        let d = defects(b"Subject: a\r\nX-Cut: parti", HeaderEnd::TooLong, 24);
        assert_eq!(d.defects, [Defect::HeaderBlockTooLong { limit: 24 }]);
        assert_eq!(d.header_fields, 1, "the cut line is not judged");
    }

    #[test]
    fn the_list_is_bounded_and_the_count_is_not() {
        let block = "bad\r\n".repeat(100);
        let d = defects(block.as_bytes(), HeaderEnd::EndOfMessage, 1 << 20);
        assert_eq!(d.count, 103);
        assert_eq!(d.defects.len(), MAX_LISTED);
    }

    #[test]
    fn signal_json() {
        let d = defects(b"From: a\r\n", blank(), 100);
        let j = d.to_json();
        assert_eq!(j["count"], 2);
        assert_eq!(
            j["defects"][0],
            serde_json::json!({"kind": "missing_header", "header": "Date"})
        );
    }

    /// Through a chain: the signal is attached for later filters; with
    /// `reject` set a defective message gets the reply and nothing goes
    /// inward; a clean one goes through whole.
    #[tokio::test]
    async fn as_a_filter() {
        use koukan_chain::{
            Ingress, Mailbox, SessionInfo, TerminalService, TxUpdate, UpdateResponse, boxed,
            call_caught,
        };
        use std::sync::Mutex;
        use tower::Layer;

        struct Keep(Arc<Mutex<Vec<u8>>>);
        impl koukan_chain::Terminal for Keep {
            fn update(&mut self, u: TxUpdate) -> BoxFuture<'_, UpdateResponse> {
                if let Some(b) = &u.body {
                    self.0.lock().unwrap().extend_from_slice(&b.data);
                }
                let r = UpdateResponse::fill(&u, &Response::new(250, "ok"));
                Box::pin(async move { r })
            }
        }
        let no = Response::new(550, "5.6.0 message header malformed");
        for (msg, reject, code, inward) in [
            (&b"Subject: x\r\n\r\nbody\r\n"[..], None, 250, true),
            (
                &b"Subject: x\r\n\r\nbody\r\n"[..],
                Some(no.clone()),
                550,
                false,
            ),
            (
                &[GOOD, &b"\r\nbody\r\n"[..]].concat()[..],
                Some(no.clone()),
                250,
                true,
            ),
        ] {
            let addr = "127.0.0.1:25".parse().unwrap();
            let ctx = Arc::new(TxContext::new(
                "t",
                Ingress::Smtp(Arc::new(SessionInfo {
                    listener: "in".into(),
                    peer: addr,
                    local: addr,
                    ehlo_host: None,
                    esmtp: true,
                    tls: None,
                    auth_user: None,
                })),
                "",
                "",
            ));
            let got = Arc::new(Mutex::new(Vec::new()));
            let config = Arc::new(MessageParseConfig {
                reject: reject.clone(),
                ..Default::default()
            });
            let mut svc = boxed(
                layer(config, ctx.clone()).layer(boxed(TerminalService::new(Keep(got.clone())))),
            );
            call_caught(&mut svc, TxUpdate::mail(Mailbox::new("a@b")))
                .await
                .unwrap();
            let (head, tail) = msg.split_at(5);
            let r = call_caught(&mut svc, TxUpdate::body(head.to_vec(), false))
                .await
                .unwrap();
            assert_eq!(r.data, None, "held back");
            assert!(got.lock().unwrap().is_empty(), "nothing inward yet");
            let r = call_caught(&mut svc, TxUpdate::body(tail.to_vec(), true))
                .await
                .unwrap();
            assert_eq!(r.data.unwrap().code, code);
            assert_eq!(&got.lock().unwrap()[..] == msg, inward);
            let signal = ctx
                .signals
                .get::<MessageDefects>()
                .expect("signal attached");
            assert_eq!(signal.is_clean(), code == 250 && reject.is_some());
        }
    }
}

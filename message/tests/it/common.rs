//! Shared helpers: an in-memory blob source, rendering into a Vec, line
//! checks and a mail-parser view of a message tree.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use koukan_message::{BlobSource, RenderOptions, Rendered, Spec, render};
use mail_parser::{MessageParser, MimeHeaders, PartType};
use serde_json::Value;

/// Blobs held in memory, keyed as the renderer asks for them.
#[derive(Default)]
pub struct MemBlobs(pub HashMap<String, Vec<u8>>);

impl MemBlobs {
    pub fn with(items: &[(&str, &[u8])]) -> MemBlobs {
        MemBlobs(
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        )
    }
}

impl BlobSource for MemBlobs {
    fn len<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<u64>> {
        Box::pin(async move {
            self.0
                .get(id)
                .map(|b| b.len() as u64)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, id.to_owned()))
        })
    }
    fn read<'a>(
        &'a self,
        id: &'a str,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'a, io::Result<Bytes>> {
        Box::pin(async move {
            let b = self
                .0
                .get(id)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, id.to_owned()))?;
            let start = (offset as usize).min(b.len());
            let end = (start + max).min(b.len());
            Ok(Bytes::copy_from_slice(&b[start..end]))
        })
    }
}

/// Deterministic options: fixed clock, seeded boundaries.
pub fn opts() -> RenderOptions {
    RenderOptions {
        hostname: "router.test".into(),
        now: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        seed: Some(7),
    }
}

pub fn spec(v: Value) -> Spec {
    Spec::from_json(&v).unwrap_or_else(|e| panic!("spec {v}: {e}"))
}

pub async fn render_vec(spec: &Spec, blobs: &dyn BlobSource) -> (Vec<u8>, Rendered) {
    let mut out = Vec::new();
    let r = render(spec, blobs, &opts(), &mut out)
        .await
        .unwrap_or_else(|e| panic!("render: {e}"));
    assert_eq!(r.length, out.len() as u64);
    (out, r)
}

/// Every line ends in CRLF and is at most 998 octets; header lines (the
/// message's and every part's) are at most `header_max`.
pub fn check_lines(msg: &[u8], header_max: usize) {
    assert!(msg.ends_with(b"\r\n"), "message must end in CRLF");
    let mut in_headers = true;
    let mut pos = 0;
    while pos < msg.len() {
        let end = msg[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| pos + i)
            .expect("line without CRLF at the end");
        let line = &msg[pos..end];
        assert!(
            !line.contains(&b'\n') && !line.contains(&b'\r'),
            "bare CR/LF in {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(line.len() <= 998, "line of {} octets", line.len());
        if in_headers {
            if line.is_empty() {
                in_headers = false;
            } else {
                assert!(
                    line.len() <= header_max,
                    "header line of {} > {header_max}: {:?}",
                    line.len(),
                    String::from_utf8_lossy(line)
                );
            }
        } else if line.starts_with(b"--=_K") {
            // A delimiter: part headers follow (unless it closes).
            in_headers = !line.ends_with(b"--");
        }
        pos = end + 2;
    }
}

/// One node of the MIME tree as mail-parser sees it.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct View {
    pub content_type: String,
    pub cte: Option<String>,
    pub disposition: Option<String>,
    pub filename: Option<String>,
    pub content_id: Option<String>,
    pub content: Option<Vec<u8>>,
    pub children: Vec<View>,
}

pub fn view(raw: &[u8]) -> View {
    let msg = MessageParser::default()
        .parse(raw)
        .expect("mail-parser parses it");
    view_part(&msg, 0)
}

fn view_part(msg: &mail_parser::Message<'_>, id: u32) -> View {
    let part = msg.part(id).expect("part");
    let content_type = part
        .content_type()
        .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")))
        .unwrap_or_else(|| "text/plain".into());
    let raw_cid = part
        .headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case("content-id"))
        .map(|h| {
            String::from_utf8_lossy(
                &msg.raw_message[h.offset_start as usize..h.offset_end as usize],
            )
            .trim()
            .to_owned()
        });
    let (content, children) = match &part.body {
        PartType::Multipart(ids) => (None, ids.iter().map(|&i| view_part(msg, i)).collect()),
        PartType::Text(t) | PartType::Html(t) => (Some(t.as_bytes().to_vec()), vec![]),
        PartType::Binary(b) | PartType::InlineBinary(b) => (Some(b.to_vec()), vec![]),
        PartType::Message(m) => (None, vec![view_part(m, 0)]),
    };
    View {
        content_type,
        cte: part.content_transfer_encoding().map(str::to_owned),
        disposition: part.content_disposition().map(|d| d.ctype().to_owned()),
        filename: part
            .content_disposition()
            .and_then(|d| d.attribute("filename"))
            .map(str::to_owned),
        content_id: raw_cid,
        content,
        children,
    }
}

/// The leaves of a view, depth first.
pub fn leaves(v: &View) -> Vec<&View> {
    if v.children.is_empty() {
        vec![v]
    } else {
        v.children.iter().flat_map(leaves).collect()
    }
}

/// The content types of a view, as an indented outline.
pub fn outline(v: &View) -> String {
    fn go(v: &View, depth: usize, out: &mut String) {
        out.push_str(&format!("{}{}\n", "  ".repeat(depth), v.content_type));
        for c in &v.children {
            go(c, depth + 1, out);
        }
    }
    let mut s = String::new();
    go(v, 0, &mut s);
    s
}

/// The message's header block (up to the empty line).
pub fn header_block(msg: &[u8]) -> String {
    let end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    String::from_utf8(msg[..end + 2].to_vec()).expect("headers are UTF-8")
}

//! MIME → spec JSON, the receive side (behaviour spec §2.3).

use std::borrow::Cow;

use bytes::Bytes;
use mail_parser::parsers::MessageStream;
use mail_parser::{Header, HeaderName, HeaderValue as MpValue, Message, MessageParser, PartType};
use serde_json::{Map, Value, json};

use crate::text::{date_of, flatten_addresses};

/// Containers deeper than this (the message itself is depth 0) are not
/// descended into: such a part becomes one leaf with its raw body.
pub const MAX_DEPTH: usize = 10;

/// The `receive_parsing` default for `max_inline`.
pub const DEFAULT_MAX_INLINE: usize = 65536;

/// The outcome of [`parse`].
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// `{"parts": <tree>, "text_body": […], "related_attachments": […],
    /// "file_attachments": […]}` (empty stanzas left out).
    pub json: Value,
    /// The contents not inlined, by the ids the JSON gives them
    /// (`create_id` `"0"`, `"1"`, … in tree order).
    pub blobs: Vec<(String, Bytes)>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not an RFC 5322 message: no header fields found")]
    NoHeaders,
}

/// Parses a message into the JSON of §2.3.
///
/// The message is held in memory whole (mail-parser works on a slice), and
/// so are the decoded contents it returns; the caller bounds `raw` (the
/// SMTP SIZE limit). Text parts (`text/*`, charset- and transfer-decoded)
/// are inlined as long as the running total of inlined UTF-8 bytes stays
/// below `max_inline`; other contents, and text past that, become blobs.
/// Malformed input gives a best-effort tree (mail-parser's recovery), never
/// a panic; only input without any header field is an error.
pub fn parse(raw: &[u8], max_inline: usize) -> Result<Parsed, ParseError> {
    let parser = MessageParser::new();
    let msg = parser.parse(raw).ok_or(ParseError::NoHeaders)?;
    let mut walk = Walk {
        parser: &parser,
        max_inline,
        inlined: 0,
        blobs: Vec::new(),
    };
    let root = walk.message(&msg, 0);
    let mut out = Map::new();
    let (text, related, attach) = flatten(&root);
    for (key, list) in [
        ("text_body", text),
        ("related_attachments", related),
        ("file_attachments", attach),
    ] {
        if !list.is_empty() {
            out.insert(
                key.into(),
                Value::Array(list.into_iter().map(flat_part).collect()),
            );
        }
    }
    out.insert("parts".into(), root);
    Ok(Parsed {
        json: Value::Object(out),
        blobs: walk.blobs,
    })
}

struct Walk<'p> {
    parser: &'p MessageParser,
    max_inline: usize,
    inlined: usize,
    blobs: Vec<(String, Bytes)>,
}

/// What the enclosing part implies for a part without Content-Type.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parent {
    Other,
    Digest,
}

impl Walk<'_> {
    /// The node of a whole message (its root part).
    fn message(&mut self, msg: &Message<'_>, depth: usize) -> Value {
        self.part(msg, 0, depth, Parent::Other)
    }

    fn part(&mut self, msg: &Message<'_>, idx: usize, depth: usize, parent: Parent) -> Value {
        let Some(part) = msg.parts.get(idx) else {
            return json!({"headers": [], "content_type": "text/plain", "content": {"inline": ""}});
        };
        let raw: &[u8] = &msg.raw_message;
        let mut node = Map::new();
        node.insert("headers".into(), headers(&part.headers, raw));
        let ct = content_type(&part.headers, parent);
        node.insert("content_type".into(), Value::String(ct.clone()));

        let body_raw = raw
            .get(part.offset_body as usize..part.offset_end as usize)
            .unwrap_or_default();

        if ct == "text/rfc822-headers" {
            let text = body_bytes(&part.body, body_raw);
            let block = self
                .parser
                .parse_headers(&text[..])
                .map(|m| {
                    let hs = m.parts.first().map(|p| &p.headers[..]).unwrap_or_default();
                    headers(hs, &m.raw_message)
                })
                .unwrap_or_else(|| Value::Array(Vec::new()));
            node.insert("parts".into(), json!([{"headers": block}]));
            return Value::Object(node);
        }
        if depth < MAX_DEPTH
            && let Some(children) = self.children(msg, &part.body, &ct, body_raw, depth)
        {
            node.insert("parts".into(), Value::Array(children));
            return Value::Object(node);
        }
        let content = self.leaf(&ct, &part.body, body_raw);
        node.insert("content".into(), content);
        Value::Object(node)
    }

    /// The child nodes of a container, or `None` when the part is a leaf.
    fn children(
        &mut self,
        msg: &Message<'_>,
        body: &PartType<'_>,
        ct: &str,
        body_raw: &[u8],
        depth: usize,
    ) -> Option<Vec<Value>> {
        if ct.starts_with("multipart/") {
            let PartType::Multipart(ids) = body else {
                return None;
            };
            let parent = if ct == "multipart/digest" {
                Parent::Digest
            } else {
                Parent::Other
            };
            return Some(
                ids.iter()
                    .map(|&id| self.part(msg, id as usize, depth + 1, parent))
                    .collect(),
            );
        }
        if !ct.starts_with("message/") {
            return None;
        }
        if ct == "message/delivery-status" || ct == "message/global-delivery-status" {
            // RFC 3464: blocks of header fields separated by empty lines.
            let bytes = body_bytes(body, body_raw);
            let blocks = header_blocks(&bytes)
                .into_iter()
                .map(|block| {
                    let hs = self
                        .parser
                        .parse_headers(block)
                        .map(|m| {
                            let hs = m.parts.first().map(|p| &p.headers[..]).unwrap_or_default();
                            headers(hs, &m.raw_message)
                        })
                        .unwrap_or_else(|| Value::Array(Vec::new()));
                    let content = self.text_leaf(String::new());
                    json!({"headers": hs, "content_type": "text/plain", "content": content})
                })
                .collect();
            return Some(blocks);
        }
        match body {
            PartType::Message(m) => Some(vec![self.message(m, depth + 1)]),
            _ => {
                let bytes = body_bytes(body, body_raw);
                let nested = self.parser.parse(&bytes[..])?;
                Some(vec![self.message(&nested, depth + 1)])
            }
        }
    }

    fn leaf(&mut self, ct: &str, body: &PartType<'_>, body_raw: &[u8]) -> Value {
        if ct.starts_with("text/") {
            let text = match body {
                PartType::Text(t) | PartType::Html(t) => t.to_string(),
                _ => String::from_utf8_lossy(&body_bytes(body, body_raw)).into_owned(),
            };
            self.text_leaf(text)
        } else {
            let bytes = Bytes::from(body_bytes(body, body_raw).into_owned());
            self.blob(bytes)
        }
    }

    fn text_leaf(&mut self, text: String) -> Value {
        if self.inlined + text.len() < self.max_inline {
            self.inlined += text.len();
            json!({"inline": text})
        } else {
            self.blob(Bytes::from(text.into_bytes()))
        }
    }

    fn blob(&mut self, bytes: Bytes) -> Value {
        let id = self.blobs.len().to_string();
        self.blobs.push((id.clone(), bytes));
        json!({"create_id": id})
    }
}

/// A part's decoded content as bytes; for containers (at the depth limit)
/// the raw body.
fn body_bytes<'a>(body: &'a PartType<'_>, body_raw: &'a [u8]) -> Cow<'a, [u8]> {
    match body {
        PartType::Text(t) | PartType::Html(t) => Cow::Borrowed(t.as_bytes()),
        PartType::Binary(b) | PartType::InlineBinary(b) => Cow::Borrowed(b),
        PartType::Message(_) | PartType::Multipart(_) => Cow::Borrowed(body_raw),
    }
}

/// Splits at empty lines (CRLF or LF), dropping empty blocks.
fn header_blocks(bytes: &[u8]) -> Vec<&[u8]> {
    let mut blocks = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < bytes.len() {
        let end = bytes[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| pos + i + 1);
        let line = &bytes[pos..end];
        if line == b"\n" || line == b"\r\n" {
            if pos > start {
                blocks.push(&bytes[start..pos]);
            }
            start = end;
        }
        pos = end;
    }
    if start < bytes.len() && bytes[start..].iter().any(|b| !b.is_ascii_whitespace()) {
        blocks.push(&bytes[start..]);
    }
    blocks
}

/// `type/subtype`, lower case; the RFC 2045 default when the header is
/// missing or unusable.
fn content_type(hs: &[Header<'_>], parent: Parent) -> String {
    let parsed = hs
        .iter()
        .find(|h| h.name == HeaderName::ContentType)
        .and_then(|h| h.value.as_content_type());
    match parsed {
        Some(ct) => match ct.subtype() {
            Some(sub) if !sub.is_empty() && !ct.ctype().is_empty() => {
                format!("{}/{}", ct.ctype(), sub).to_ascii_lowercase()
            }
            _ => "text/plain".into(),
        },
        None if parent == Parent::Digest => "message/rfc822".into(),
        None => "text/plain".into(),
    }
}

fn raw_of<'a>(h: &Header<'_>, raw: &'a [u8]) -> &'a [u8] {
    raw.get(h.offset_start as usize..h.offset_end as usize)
        .unwrap_or_default()
}

/// The header value as text: unfolded, RFC 2047 words decoded.
fn unstructured(h: &Header<'_>, raw: &[u8]) -> String {
    let bytes = raw_of(h, raw);
    match MessageStream::new(bytes).parse_unstructured() {
        MpValue::Text(t) => t.trim().to_owned(),
        MpValue::TextList(l) => l.join(" ").trim().to_owned(),
        _ => String::new(),
    }
}

fn headers(hs: &[Header<'_>], raw: &[u8]) -> Value {
    Value::Array(
        hs.iter()
            .map(|h| {
                let name = h.name.as_str().to_ascii_lowercase();
                let value = header_value(&name, h, raw);
                json!([name, value])
            })
            .collect(),
    )
}

fn header_value(name: &str, h: &Header<'_>, raw: &[u8]) -> Value {
    match name {
        "from" | "to" | "cc" | "bcc" => {
            let list = match &h.value {
                MpValue::Address(a) => flatten_addresses(a),
                _ => Vec::new(),
            };
            Value::Array(
                list.into_iter()
                    .map(|a| {
                        json!({
                            "display_name": a.display_name.unwrap_or_default(),
                            "address": a.address,
                        })
                    })
                    .collect(),
            )
        }
        "date" => match &h.value {
            MpValue::DateTime(dt) if dt.is_valid() => {
                let d = date_of(dt);
                json!({"unix_secs": d.unix_secs, "tz_offset": d.tz_offset})
            }
            _ => Value::String(unstructured(h, raw)),
        },
        // A string, not the builder's list (§9 item 27; the builder takes
        // both).
        "message-id" => {
            let s = unstructured(h, raw);
            let s = s.strip_prefix('<').unwrap_or(&s);
            let s = s.strip_suffix('>').unwrap_or(s);
            Value::String(s.to_owned())
        }
        "content-type" | "content-disposition" => match &h.value {
            MpValue::ContentType(ct) => {
                let value = match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_owned(),
                }
                .to_ascii_lowercase();
                let params: Map<String, Value> = ct
                    .attributes()
                    .unwrap_or_default()
                    .iter()
                    .map(|a| {
                        (
                            a.name.to_ascii_lowercase(),
                            Value::String(a.value.to_string()),
                        )
                    })
                    .collect();
                json!([value, params])
            }
            _ => Value::String(unstructured(h, raw)),
        },
        _ => Value::String(unstructured(h, raw)),
    }
}

fn str_of<'v>(v: &'v Value, key: &str) -> &'v str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn kids(v: &Value) -> &[Value] {
    v.get("parts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The §2.3 flattening of the tree into the builder's three stanzas.
fn flatten(root: &Value) -> (Vec<&Value>, Vec<&Value>, Vec<&Value>) {
    let ct = |v: &Value| str_of(v, "content_type").to_owned();
    let mut text = Vec::new();
    let mut related: Option<Vec<&Value>> = None;
    let mut attach = Vec::new();
    let mut next = Some(root);

    // S/MIME (RFC 1847): the signed content is the first child.
    if let Some(n) = next.filter(|n| ct(n) == "multipart/signed") {
        next = kids(n).first();
    }
    if let Some(n) = next.filter(|n| ct(n) == "multipart/mixed") {
        attach = kids(n).iter().skip(1).collect();
        next = kids(n).first();
    }
    if let Some(n) = next.filter(|n| ct(n) == "multipart/related") {
        related = Some(kids(n).iter().skip(1).collect());
        match kids(n).first() {
            Some(first) if ct(first) == "text/html" => {
                text.push(first);
                next = None;
            }
            first => next = first,
        }
    }
    if let Some(n) = next.filter(|n| ct(n) == "multipart/alternative") {
        match kids(n).first() {
            Some(first) if ct(first) == "text/plain" => {
                text.push(first);
                next = kids(n).get(1);
            }
            // Where the original gave up (first alternative not text/plain):
            // the builder's own shape, alternative[related[body, parts…]
            // or body, more alternatives…] (§2.2), read back as
            // text_body = [body, alternatives…].
            _ => {
                for (i, alt) in kids(n).iter().enumerate() {
                    let t = ct(alt);
                    if i == 0 && t == "multipart/related" && related.is_none() {
                        related = Some(kids(alt).iter().skip(1).collect());
                        if let Some(body) = kids(alt).first().filter(|b| is_body(&ct(b))) {
                            text.push(body);
                        }
                    } else if is_body(&t) {
                        text.push(alt);
                    }
                }
                next = None;
            }
        }
    }
    if related.is_none()
        && let Some(n) = next.filter(|n| ct(n) == "multipart/related")
    {
        related = Some(kids(n).iter().skip(1).collect());
        next = kids(n).first();
    }
    if let Some(n) = next.filter(|n| is_body(&ct(n))) {
        text.push(n);
    }
    (text, related.unwrap_or_default(), attach)
}

fn is_body(content_type: &str) -> bool {
    matches!(content_type, "text/plain" | "text/html")
}

/// A flattened part: its content type, the filename of an attachment
/// disposition, the Content-ID as it is, and its content (containers have
/// none).
fn flat_part(node: &Value) -> Value {
    let mut out = Map::new();
    out.insert(
        "content_type".into(),
        Value::String(str_of(node, "content_type").to_owned()),
    );
    let hs = node
        .get("headers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for h in hs {
        let (Some(k), Some(v)) = (h.get(0).and_then(Value::as_str), h.get(1)) else {
            continue;
        };
        match k {
            "content-disposition" if !out.contains_key("filename") => {
                if v.get(0).and_then(Value::as_str) == Some("attachment")
                    && let Some(name) = v.get(1).and_then(|p| p.get("filename"))
                {
                    out.insert("filename".into(), name.clone());
                }
            }
            "content-id" if !out.contains_key("content_id") => {
                out.insert("content_id".into(), v.clone());
            }
            _ => {}
        }
    }
    if let Some(c) = node.get("content") {
        out.insert("content".into(), c.clone());
    }
    Value::Object(out)
}

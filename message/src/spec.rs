//! The message-builder spec (behaviour spec §2.1): its types, the JSON
//! reader with field paths for errors, and the validation shared by the
//! reader and the renderer.

use std::collections::HashSet;
use std::fmt;

use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// At most this many header fields in a spec.
pub const MAX_HEADERS: usize = 100;
/// At most this many parts, counted over `text_body`, `related_attachments`
/// and `file_attachments`.
pub const MAX_PARTS: usize = 100;
/// At most this many addresses in one address header.
pub const MAX_ADDRESSES: usize = 1000;
/// At most this many ids in one message-id / in-reply-to / references header.
pub const MAX_IDS: usize = 1000;
/// Longest header value (a string header, a display name, an address, an
/// id, a filename, a content id), in bytes.
pub const MAX_VALUE_LEN: usize = 16 * 1024;
/// Longest header field name, in bytes (RFC 5322 recommends 78 columns for
/// a whole line; the name plus ": " must leave room for a value).
pub const MAX_NAME_LEN: usize = 76;
/// Longest message id (without `<>`) and `content_id`, in bytes: an id is
/// not folded, so it must fit on a line with its header name.
pub const MAX_ID_LEN: usize = 512;
/// Longest blob id (`create_id`) and `reuse_uri`, in bytes.
pub const MAX_BLOB_REF_LEN: usize = 1024;

/// A message-builder spec: the `message_builder` object of a transaction
/// body (behaviour spec §2.1).
///
/// Read it with [`Spec::from_json`] (or serde, which goes through the same
/// code): unknown keys and `null` values are refused and every error names
/// the offending field. Serializing writes the original wire form
/// (message ids always as lists, addresses as objects) without the empty
/// stanzas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Spec {
    /// Header fields, rendered in this order (except `bcc`, which is never
    /// rendered: it is for the envelope only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Header>,
    /// `[0]` is the main body, `[1..]` its alternatives.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub text_body: Vec<Part>,
    /// Parts the main body refers to (`multipart/related`), e.g. images
    /// of an HTML body.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub related_attachments: Vec<Part>,
    /// Attachments (`multipart/mixed`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub file_attachments: Vec<Part>,
}

/// One header field; JSON `[name, value]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The field name, spelled as it is to be rendered. Its kind (and so
    /// the form of `value`) is chosen case-insensitively, see [`HeaderKind`].
    pub name: String,
    pub value: HeaderValue,
}

/// A header value, typed by the header's name ([`HeaderKind::of`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum HeaderValue {
    /// `from`, `to`, `cc`, `bcc`, `reply-to`, `sender`.
    Addresses(Vec<Address>),
    /// `date`.
    Date(Date),
    /// `message-id`, `in-reply-to`, `references`: ids without `<>`.
    Ids(Vec<String>),
    /// Any other header: unstructured text, RFC 2047-encoded when it is
    /// not ASCII.
    Text(String),
}

/// The kinds of header value; which one a header has depends on its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    Addresses,
    Date,
    Ids,
    Text,
}

impl HeaderKind {
    /// The kind of the header `name` (case-insensitive).
    pub fn of(name: &str) -> HeaderKind {
        match name.to_ascii_lowercase().as_str() {
            "from" | "to" | "cc" | "bcc" | "reply-to" | "sender" => HeaderKind::Addresses,
            "date" => HeaderKind::Date,
            "message-id" | "in-reply-to" | "references" => HeaderKind::Ids,
            _ => HeaderKind::Text,
        }
    }

    fn expected(self) -> &'static str {
        match self {
            HeaderKind::Addresses => "an address list",
            HeaderKind::Date => "a date object",
            HeaderKind::Ids => "a list of message ids",
            HeaderKind::Text => "a string",
        }
    }
}

/// A mailbox: JSON `{"display_name": "Alice", "address": "alice@example.com"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Address {
    /// Optional; an empty string counts as absent (the parser emits `""`
    /// for mailboxes without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// RFC 5322 addr-spec without angle brackets; UTF-8 is allowed
    /// (RFC 6532) and makes the message need SMTPUTF8.
    pub address: String,
}

/// A date: JSON `{"unix_secs": 1709750551, "tz_offset": -28800}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Date {
    pub unix_secs: i64,
    /// Seconds east of UTC, a whole number of minutes; default 0.
    pub tz_offset: i32,
}

/// One MIME leaf part.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Part {
    /// `type/subtype`, no parameters; `text/*` parts get `charset=utf-8`.
    pub content_type: String,
    pub content: Content,
    /// Rendered verbatim as the `Content-ID` value (no brackets added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    /// Rendered as `Content-Disposition: attachment; filename=…` (or
    /// `inline; filename=…` for related parts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
}

/// Where a part's content comes from; JSON `{"inline": …}`,
/// `{"create_id": …}` or `{"reuse_uri": …}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// The content itself (its UTF-8 bytes).
    Inline(String),
    /// A blob the client uploads (`PUT …/blob/{id}`).
    CreateId(String),
    /// A finalized blob of another transaction.
    ReuseUri(String),
}

/// A part's blob reference, see [`Spec::blobs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobRef<'a> {
    Create(&'a str),
    Reuse(&'a str),
}

impl BlobRef<'_> {
    /// The key the renderer passes to a [`BlobSource`](crate::BlobSource):
    /// the blob id, or the URI for a reused blob.
    pub fn key(&self) -> &str {
        match self {
            BlobRef::Create(id) | BlobRef::Reuse(id) => id,
        }
    }
}

/// A spec that cannot be used, naming the field: `path` is relative to the
/// `message_builder` object, e.g. `text_body[0].content` or
/// `headers[2][1][0].address` (`""` for the object itself).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {problem}", if path.is_empty() { "message_builder" } else { path.as_str() })]
pub struct SpecError {
    pub path: String,
    pub problem: String,
}

fn err<T>(path: impl Into<String>, problem: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError {
        path: path.into(),
        problem: problem.into(),
    })
}

/// The three part stanzas, in the order parts are counted (§1.4).
pub(crate) const STANZAS: [&str; 3] = ["text_body", "related_attachments", "file_attachments"];

impl Spec {
    /// Reads and validates the `message_builder` JSON object.
    ///
    /// Accepted on input beyond the typed form, for applications written
    /// for the original (and for feeding the parser's output back): a
    /// `blob_status` key (ignored), a string for an address header
    /// (parsed as an RFC 5322 address list), a string for `date` (an RFC
    /// 5322 date) and a string for the id headers (`"abc@xyz"` as the
    /// parser emits it, or `"<a@x> <b@y>"`).
    pub fn from_json(v: &Value) -> Result<Spec, SpecError> {
        let Some(obj) = v.as_object() else {
            return err("", "must be a JSON object");
        };
        let mut spec = Spec::default();
        for (key, value) in obj {
            match key.as_str() {
                // Status echoed by the server in REST_READ; stripped on input.
                "blob_status" => continue,
                "headers" | "text_body" | "related_attachments" | "file_attachments" => {}
                _ => return err(key.as_str(), "unknown key"),
            }
            let Some(items) = value.as_array() else {
                return err(key.as_str(), "must be a list");
            };
            if key == "headers" {
                if items.len() > MAX_HEADERS {
                    return err("headers", format!("more than {MAX_HEADERS} headers"));
                }
                spec.headers = items
                    .iter()
                    .enumerate()
                    .map(|(i, h)| read_header(&format!("headers[{i}]"), h))
                    .collect::<Result<_, _>>()?;
            } else {
                if items.len() > MAX_PARTS {
                    return err(key.as_str(), format!("more than {MAX_PARTS} parts"));
                }
                let parts = items
                    .iter()
                    .enumerate()
                    .map(|(i, p)| read_part(&format!("{key}[{i}]"), p))
                    .collect::<Result<Vec<_>, _>>()?;
                match key.as_str() {
                    "text_body" => spec.text_body = parts,
                    "related_attachments" => spec.related_attachments = parts,
                    _ => spec.file_attachments = parts,
                }
            }
        }
        spec.validate()?;
        Ok(spec)
    }

    /// All parts with their path (`text_body[0]`), in counting order.
    pub(crate) fn parts(&self) -> impl Iterator<Item = (String, &Part)> {
        let stanzas = [
            &self.text_body,
            &self.related_attachments,
            &self.file_attachments,
        ];
        STANZAS.into_iter().zip(stanzas).flat_map(|(name, parts)| {
            parts
                .iter()
                .enumerate()
                .map(move |(i, p)| (format!("{name}[{i}]"), p))
        })
    }

    fn parts_mut(&mut self) -> impl Iterator<Item = &mut Part> {
        self.text_body
            .iter_mut()
            .chain(self.related_attachments.iter_mut())
            .chain(self.file_attachments.iter_mut())
    }

    /// The blob references (`create_id` / `reuse_uri`) in part order;
    /// inline contents are not blobs.
    pub fn blobs(&self) -> Vec<BlobRef<'_>> {
        self.text_body
            .iter()
            .chain(&self.related_attachments)
            .chain(&self.file_attachments)
            .filter_map(|p| match &p.content {
                Content::Inline(_) => None,
                Content::CreateId(id) => Some(BlobRef::Create(id)),
                Content::ReuseUri(uri) => Some(BlobRef::Reuse(uri)),
            })
            .collect()
    }

    /// The REST convention for inline contents (§1.4): every `inline`
    /// content becomes `{"create_id": "inline<N>"}`, N being the part's
    /// index counted across `text_body`, `related_attachments`,
    /// `file_attachments` in that order (all parts count, not only the
    /// inline ones). Returns `(blob id, content)` for the server to store
    /// as finalized blobs. [`Spec::from_json`] refuses a `create_id` that
    /// would collide with one of these ids.
    pub fn normalize_inline(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (n, part) in self.parts_mut().enumerate() {
            if let Content::Inline(text) = &mut part.content {
                let id = inline_id(n);
                let text = std::mem::take(text);
                part.content = Content::CreateId(id.clone());
                out.push((id, text));
            }
        }
        out
    }

    /// Checks everything [`Spec::from_json`] checks beyond the JSON shape;
    /// the renderer calls it too, so a spec built in code is held to the
    /// same rules.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.headers.len() > MAX_HEADERS {
            return err("headers", format!("more than {MAX_HEADERS} headers"));
        }
        let n_parts =
            self.text_body.len() + self.related_attachments.len() + self.file_attachments.len();
        if n_parts > MAX_PARTS {
            return err("", format!("more than {MAX_PARTS} parts"));
        }
        if self.headers.is_empty() && n_parts == 0 {
            return err("", "nothing to render: no headers and no parts");
        }
        let mut seen_single = HashSet::new();
        for (i, h) in self.headers.iter().enumerate() {
            validate_header(&format!("headers[{i}]"), h, &mut seen_single)?;
        }
        let mut ids = HashSet::new();
        let inline_ids: HashSet<String> = self
            .parts()
            .enumerate()
            .filter(|(_, (_, p))| matches!(p.content, Content::Inline(_)))
            .map(|(n, _)| inline_id(n))
            .collect();
        for (path, part) in self.parts() {
            validate_part(&path, part)?;
            if let Content::CreateId(id) = &part.content {
                if inline_ids.contains(id) {
                    return err(
                        format!("{path}.content.create_id"),
                        "collides with the id given to an inline content",
                    );
                }
                if !ids.insert(id.as_str()) {
                    return err(
                        format!("{path}.content.create_id"),
                        "blob id used by an earlier part",
                    );
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn inline_id(n: usize) -> String {
    format!("inline{n}")
}

impl<'de> Deserialize<'de> for Spec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Spec::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Header {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.name)?;
        t.serialize_element(&self.value)?;
        t.end()
    }
}

impl fmt::Display for HeaderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected())
    }
}

// ---------------------------------------------------------------------
// JSON reading

fn object<'v>(path: &str, v: &'v Value, what: &str) -> Result<&'v Map<String, Value>, SpecError> {
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => err(path, "must not be null"),
        _ => err(path, format!("must be {what}")),
    }
}

fn string<'v>(path: &str, v: &'v Value) -> Result<&'v str, SpecError> {
    match v {
        Value::String(s) => Ok(s),
        Value::Null => err(path, "must not be null"),
        _ => err(path, "must be a string"),
    }
}

fn read_header(path: &str, v: &Value) -> Result<Header, SpecError> {
    let pair = match v {
        Value::Array(a) if a.len() == 2 => a,
        Value::Null => return err(path, "must not be null"),
        _ => return err(path, "must be a [name, value] pair"),
    };
    let name = string(&format!("{path}[0]"), &pair[0])?.to_owned();
    let vpath = format!("{path}[1]");
    let v = &pair[1];
    if v.is_null() {
        return err(vpath, "must not be null");
    }
    let kind = HeaderKind::of(&name);
    let value = match (kind, v) {
        (HeaderKind::Addresses, Value::Array(items)) => {
            if items.len() > MAX_ADDRESSES {
                return err(vpath, format!("more than {MAX_ADDRESSES} addresses"));
            }
            HeaderValue::Addresses(
                items
                    .iter()
                    .enumerate()
                    .map(|(j, a)| read_address(&format!("{vpath}[{j}]"), a))
                    .collect::<Result<_, _>>()?,
            )
        }
        (HeaderKind::Addresses, Value::String(s)) => {
            HeaderValue::Addresses(crate::text::parse_address_list(s).ok_or_else(|| SpecError {
                path: vpath.clone(),
                problem: "not an RFC 5322 address list".into(),
            })?)
        }
        (HeaderKind::Date, Value::Object(m)) => HeaderValue::Date(read_date(&vpath, m)?),
        (HeaderKind::Date, Value::String(s)) => {
            HeaderValue::Date(crate::text::parse_date(s).ok_or_else(|| SpecError {
                path: vpath.clone(),
                problem: "not an RFC 5322 date".into(),
            })?)
        }
        (HeaderKind::Ids, Value::Array(items)) => {
            if items.len() > MAX_IDS {
                return err(vpath, format!("more than {MAX_IDS} ids"));
            }
            HeaderValue::Ids(
                items
                    .iter()
                    .enumerate()
                    .map(|(j, id)| string(&format!("{vpath}[{j}]"), id).map(str::to_owned))
                    .collect::<Result<_, _>>()?,
            )
        }
        (HeaderKind::Ids, Value::String(s)) => HeaderValue::Ids(crate::text::split_ids(s)),
        (HeaderKind::Text, Value::String(s)) => HeaderValue::Text(s.clone()),
        (kind, _) => return err(vpath, format!("must be {kind}")),
    };
    Ok(Header { name, value })
}

fn read_address(path: &str, v: &Value) -> Result<Address, SpecError> {
    let m = object(path, v, "an address object")?;
    let mut display_name = None;
    let mut address = None;
    for (k, val) in m {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "display_name" => display_name = Some(string(&p, val)?.to_owned()),
            "address" => address = Some(string(&p, val)?.to_owned()),
            _ => return err(p, "unknown key"),
        }
    }
    let Some(address) = address else {
        return err(format!("{path}.address"), "missing");
    };
    Ok(Address {
        display_name: display_name.filter(|n| !n.is_empty()),
        address,
    })
}

fn read_date(path: &str, m: &Map<String, Value>) -> Result<Date, SpecError> {
    let mut unix_secs = None;
    let mut tz_offset = 0;
    for (k, val) in m {
        let p = format!("{path}.{k}");
        if val.is_null() {
            return err(p, "must not be null");
        }
        match k.as_str() {
            "unix_secs" => match val.as_i64() {
                Some(s) => unix_secs = Some(s),
                None => return err(p, "must be an integer"),
            },
            "tz_offset" => match val.as_i64().and_then(|t| i32::try_from(t).ok()) {
                Some(t) => tz_offset = t,
                None => return err(p, "must be an integer (seconds east of UTC)"),
            },
            _ => return err(p, "unknown key"),
        }
    }
    let Some(unix_secs) = unix_secs else {
        return err(format!("{path}.unix_secs"), "missing");
    };
    Ok(Date {
        unix_secs,
        tz_offset,
    })
}

fn read_part(path: &str, v: &Value) -> Result<Part, SpecError> {
    let m = object(path, v, "a part object")?;
    let mut content_type = None;
    let mut content = None;
    let mut content_id = None;
    let mut filename = None;
    for (k, val) in m {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "content_type" => content_type = Some(string(&p, val)?.to_owned()),
            "content" => content = Some(read_content(&p, val)?),
            "content_id" => content_id = Some(string(&p, val)?.to_owned()),
            "filename" => filename = Some(string(&p, val)?.to_owned()),
            _ => return err(p, "unknown key"),
        }
    }
    let Some(content_type) = content_type else {
        return err(format!("{path}.content_type"), "missing");
    };
    let Some(content) = content else {
        return err(format!("{path}.content"), "missing");
    };
    Ok(Part {
        content_type,
        content,
        content_id,
        filename,
    })
}

fn read_content(path: &str, v: &Value) -> Result<Content, SpecError> {
    let m = object(
        path,
        v,
        "an object with one of inline, create_id, reuse_uri",
    )?;
    let mut it = m.iter();
    let (Some((k, val)), None) = (it.next(), it.next()) else {
        return err(
            path,
            "must have exactly one of the keys inline, create_id, reuse_uri",
        );
    };
    let p = format!("{path}.{k}");
    let s = string(&p, val)?.to_owned();
    match k.as_str() {
        "inline" => Ok(Content::Inline(s)),
        "create_id" => Ok(Content::CreateId(s)),
        "reuse_uri" => Ok(Content::ReuseUri(s)),
        _ => err(p, "unknown key (expected inline, create_id or reuse_uri)"),
    }
}

// ---------------------------------------------------------------------
// Validation

/// Header fields RFC 5322 §3.6 allows at most once.
const SINGLE: [&str; 11] = [
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
];

fn validate_header(
    path: &str,
    h: &Header,
    seen_single: &mut HashSet<String>,
) -> Result<(), SpecError> {
    let npath = format!("{path}[0]");
    let vpath = format!("{path}[1]");
    let name = &h.name;
    if name.is_empty() {
        return err(npath, "empty header name");
    }
    if name.len() > MAX_NAME_LEN {
        return err(npath, format!("header name longer than {MAX_NAME_LEN}"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !('!'..='~').contains(&c) || c == ':')
    {
        return err(
            npath,
            format!("invalid character {c:?} in header name (RFC 5322 ftext)"),
        );
    }
    let lower = name.to_ascii_lowercase();
    if lower == "mime-version" || lower.starts_with("content-") {
        return err(
            npath,
            "MIME structure headers are written by the renderer, not the spec",
        );
    }
    if SINGLE.contains(&lower.as_str()) && !seen_single.insert(lower.clone()) {
        return err(npath, "header may occur only once (RFC 5322 §3.6)");
    }
    let kind = HeaderKind::of(name);
    match (&h.value, kind) {
        (HeaderValue::Addresses(list), HeaderKind::Addresses) => {
            if list.len() > MAX_ADDRESSES {
                return err(vpath, format!("more than {MAX_ADDRESSES} addresses"));
            }
            for (j, a) in list.iter().enumerate() {
                let apath = format!("{vpath}[{j}]");
                if let Some(n) = &a.display_name {
                    check_text(&format!("{apath}.display_name"), n)?;
                }
                if let Err(problem) = crate::text::check_addr_spec(&a.address) {
                    return err(format!("{apath}.address"), problem);
                }
            }
        }
        (HeaderValue::Date(d), HeaderKind::Date) => {
            // Years 1900..=9999: what RFC 5322 dates and chrono both cover.
            if !(-2_208_988_800..=253_402_300_799).contains(&d.unix_secs) {
                return err(format!("{vpath}.unix_secs"), "out of range");
            }
            if d.tz_offset.abs() >= 24 * 3600 || d.tz_offset % 60 != 0 {
                return err(
                    format!("{vpath}.tz_offset"),
                    "must be a whole number of minutes within ±24h",
                );
            }
        }
        (HeaderValue::Ids(ids), HeaderKind::Ids) => {
            if ids.len() > MAX_IDS {
                return err(vpath, format!("more than {MAX_IDS} ids"));
            }
            for (j, id) in ids.iter().enumerate() {
                if let Err(problem) = crate::text::check_msg_id(id) {
                    return err(format!("{vpath}[{j}]"), problem);
                }
            }
        }
        (HeaderValue::Text(t), HeaderKind::Text) => check_text(&vpath, t)?,
        (_, kind) => return err(vpath, format!("must be {kind}")),
    }
    Ok(())
}

/// Header text: no CR/LF (they would end the field and start another:
/// header injection) and no other control characters but TAB.
fn check_text(path: &str, s: &str) -> Result<(), SpecError> {
    if s.len() > MAX_VALUE_LEN {
        return err(path, format!("longer than {MAX_VALUE_LEN} bytes"));
    }
    if let Some(c) = s.chars().find(|&c| c.is_control() && c != '\t') {
        let what = match c {
            '\r' | '\n' => "line break (CR/LF) not allowed in a header value",
            _ => "control character not allowed in a header value",
        };
        return err(path, format!("{what}: {c:?}"));
    }
    Ok(())
}

/// RFC 2045 token characters.
fn is_token_char(c: char) -> bool {
    c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c)
}

fn validate_part(path: &str, part: &Part) -> Result<(), SpecError> {
    let ct_path = format!("{path}.content_type");
    let ct = &part.content_type;
    let Some((ty, sub)) = ct.split_once('/') else {
        return err(ct_path, "must be type/subtype");
    };
    if ty.is_empty()
        || sub.is_empty()
        || !ty.chars().all(is_token_char)
        || !sub.chars().all(is_token_char)
        || ct.len() > 127
    {
        return err(
            ct_path,
            "must be type/subtype (RFC 2045 tokens, no parameters)",
        );
    }
    if ty.eq_ignore_ascii_case("multipart") {
        return err(
            ct_path,
            "multipart types are built by the renderer, not given as a part",
        );
    }
    match &part.content {
        Content::Inline(_) => {}
        Content::CreateId(id) => {
            let p = format!("{path}.content.create_id");
            if id.is_empty() || id.len() > MAX_BLOB_REF_LEN {
                return err(p, "must be 1 to 1024 bytes");
            }
            // The id goes into a URL path (`…/blob/{id}`).
            if let Some(c) = id
                .chars()
                .find(|&c| !c.is_ascii_graphic() || "/\\?#%".contains(c))
            {
                return err(p, format!("invalid character {c:?} in blob id"));
            }
        }
        Content::ReuseUri(uri) => {
            let p = format!("{path}.content.reuse_uri");
            if uri.is_empty() || uri.len() > MAX_BLOB_REF_LEN {
                return err(p, "must be 1 to 1024 bytes");
            }
            if let Some(c) = uri.chars().find(|c| !c.is_ascii_graphic()) {
                return err(p, format!("invalid character {c:?} in uri"));
            }
        }
    }
    if let Some(cid) = &part.content_id {
        let p = format!("{path}.content_id");
        check_text(&p, cid)?;
        if cid.is_empty() || !cid.is_ascii() || cid.len() > MAX_ID_LEN {
            return err(
                p,
                format!("must be non-empty ASCII of at most {MAX_ID_LEN} bytes"),
            );
        }
    }
    if let Some(name) = &part.filename {
        let p = format!("{path}.filename");
        check_text(&p, name)?;
        if name.is_empty() {
            return err(p, "must not be empty");
        }
    }
    Ok(())
}

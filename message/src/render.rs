//! Spec → RFC 5322 message, streaming (behaviour spec §2.2).

use std::io;
use std::ops::Deref;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use mail_builder::headers::address::Address as MbAddress;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::encode::{B64_LINE_RAW, Base64Lines, Cte, QuotedPrintable, Scan};
use crate::spec::{Content, HeaderValue, Part, Spec, SpecError};

/// Bytes read from a blob at a time: a multiple of 57, so each chunk is a
/// whole number of base64 lines.
pub const CHUNK: usize = 1024 * B64_LINE_RAW;

/// Where the renderer reads `create_id` / `reuse_uri` contents. The key is
/// the blob id, or the URI as given for `reuse_uri` (see
/// [`BlobRef::key`](crate::BlobRef::key)). Blobs must be finalized: the
/// renderer reads a text blob twice (once to choose its encoding, once to
/// write it) and expects the same bytes.
pub trait BlobSource: Send + Sync {
    /// The blob's length in bytes.
    fn len<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<u64>>;
    /// Up to `max` bytes from `offset` (fewer is fine; empty before the end
    /// is an error).
    fn read<'a>(&'a self, id: &'a str, offset: u64, max: usize)
    -> BoxFuture<'a, io::Result<Bytes>>;
}

/// A [`BlobSource`] with no blobs, for specs whose contents are all inline.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBlobs;

impl BlobSource for NoBlobs {
    fn len<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<u64>> {
        Box::pin(async move {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no blob {id:?}"),
            ))
        })
    }
    fn read<'a>(&'a self, id: &'a str, _: u64, _: usize) -> BoxFuture<'a, io::Result<Bytes>> {
        Box::pin(async move {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no blob {id:?}"),
            ))
        })
    }
}

/// What the renderer fills in and how it picks its random parts.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// Right-hand side of a generated Message-ID (`<random@hostname>`).
    pub hostname: String,
    /// Time of a generated Date header (written in UTC).
    pub now: SystemTime,
    /// `None`: boundaries and generated Message-IDs come from the OS random
    /// source. `Some(seed)`: they are a function of the seed (tests).
    pub seed: Option<u64>,
}

impl RenderOptions {
    /// Random boundaries, `now` = the current time.
    pub fn new(hostname: impl Into<String>) -> RenderOptions {
        RenderOptions {
            hostname: hostname.into(),
            now: SystemTime::now(),
            seed: None,
        }
    }
}

/// The outcome of [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// An address or message id has non-ASCII characters, written as UTF-8
    /// (RFC 6532): the message must be sent with SMTPUTF8 (RFC 6531).
    pub needs_smtputf8: bool,
    /// Bytes written.
    pub length: u64,
}

/// Why a spec could not be rendered. Output may have been written already
/// when this comes back; the caller discards it.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("invalid spec: {0}")]
    Spec(#[from] SpecError),
    /// `part` is the part's path, e.g. `file_attachments[0]`.
    #[error("{part}: blob {key:?}: {source}")]
    Blob {
        part: String,
        key: String,
        source: io::Error,
    },
    #[error("{part}: text/* content is not valid UTF-8")]
    NotUtf8 { part: String },
    #[error("{part}: blob {key:?} changed while it was being rendered")]
    BlobChanged { part: String, key: String },
    #[error("writing the message: {0}")]
    Write(io::Error),
}

// ---------------------------------------------------------------------
// Structure

#[derive(Clone, Copy, PartialEq, Eq)]
enum Disposition {
    None,
    Inline,
    Attachment,
}

struct Leaf<'a> {
    path: String,
    part: &'a Part,
    disposition: Disposition,
    cte: Cte,
}

enum Node {
    Leaf(usize),
    Multi {
        subtype: &'static str,
        boundary: String,
        children: Vec<Node>,
    },
}

struct Random(StdRng);

impl Random {
    fn new(opts: &RenderOptions) -> Random {
        Random(match opts.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        })
    }

    fn token(&mut self) -> String {
        format!("{:032x}", self.0.random::<u128>())
    }

    /// Starts with `=_`, which base64 and quoted-printable output cannot
    /// contain and 7bit content is checked not to contain: no part can
    /// hold a line that looks like the delimiter.
    fn boundary(&mut self) -> String {
        format!("=_K{}", self.token())
    }
}

/// The tree of §2.2: text_body[0], wrapped in related (with the related
/// parts), in alternative (with text_body[1..]), in mixed (with the
/// attachments).
fn structure<'a>(spec: &'a Spec, rnd: &mut Random) -> (Option<Node>, Vec<Leaf<'a>>) {
    let mut leaves = Vec::new();
    let mut leaf = |path: String, part: &'a Part, disposition: Disposition| {
        leaves.push(Leaf {
            path,
            part,
            disposition,
            cte: Cte::Base64,
        });
        Node::Leaf(leaves.len() - 1)
    };
    let plain = |p: &Part| {
        if p.filename.is_some() {
            Disposition::Attachment
        } else {
            Disposition::None
        }
    };
    let mut wrap = |content: Option<Node>, subtype, more: Vec<Node>| {
        let mut children: Vec<Node> = content.into_iter().collect();
        children.extend(more);
        Some(Node::Multi {
            subtype,
            boundary: rnd.boundary(),
            children,
        })
    };

    let mut content = spec
        .text_body
        .first()
        .map(|p| leaf("text_body[0]".into(), p, plain(p)));
    if !spec.related_attachments.is_empty() {
        let more = spec
            .related_attachments
            .iter()
            .enumerate()
            .map(|(i, p)| leaf(format!("related_attachments[{i}]"), p, Disposition::Inline))
            .collect();
        content = wrap(content, "related", more);
    }
    if spec.text_body.len() > 1 {
        let more = spec.text_body[1..]
            .iter()
            .enumerate()
            .map(|(i, p)| leaf(format!("text_body[{}]", i + 1), p, plain(p)))
            .collect();
        content = wrap(content, "alternative", more);
    }
    if !spec.file_attachments.is_empty() {
        let more = spec
            .file_attachments
            .iter()
            .enumerate()
            .map(|(i, p)| leaf(format!("file_attachments[{i}]"), p, plain(p)))
            .collect();
        content = wrap(content, "mixed", more);
    }
    (content, leaves)
}

fn is_text(ct: &str) -> bool {
    ct.split('/')
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("text"))
}

fn is_message(ct: &str) -> bool {
    ct.split('/')
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case("message"))
}

// ---------------------------------------------------------------------
// Headers

fn field(buf: &mut Vec<u8>, name: &str, value: &impl mail_builder::headers::Header) {
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b": ");
    value.write_header(buf, name.len() + 2);
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The spec's header fields (without bcc) plus a generated Date and
/// Message-ID when the spec has none; each field ends in CRLF.
fn top_headers(spec: &Spec, opts: &RenderOptions, rnd: &mut Random) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut utf8 = false;
    let mut has_date = false;
    let mut has_id = false;
    for h in &spec.headers {
        let lower = h.name.to_ascii_lowercase();
        match &h.value {
            // Bcc is for the envelope: rendering it would show every
            // recipient the blind copies (§9 item 27).
            _ if lower == "bcc" => {}
            HeaderValue::Addresses(list) if list.is_empty() => {}
            HeaderValue::Addresses(list) => {
                utf8 |= list.iter().any(|a| !a.address.is_ascii());
                let list = list
                    .iter()
                    .map(|a| MbAddress::new_address(a.display_name.as_deref(), a.address.as_str()))
                    .collect();
                field(&mut buf, &h.name, &MbAddress::new_list(list));
            }
            HeaderValue::Date(d) => {
                has_date = true;
                let text = chrono::FixedOffset::east_opt(d.tz_offset)
                    .and_then(|tz| {
                        chrono::DateTime::from_timestamp(d.unix_secs, 0)
                            .map(|t| t.with_timezone(&tz).to_rfc2822())
                    })
                    .unwrap_or_default();
                field(&mut buf, &h.name, &Raw::new(text));
            }
            HeaderValue::Ids(ids) if ids.is_empty() => {}
            HeaderValue::Ids(ids) => {
                has_id |= lower == "message-id";
                utf8 |= ids.iter().any(|id| !id.is_ascii());
                field(
                    &mut buf,
                    &h.name,
                    &MessageId::new_list(ids.iter().map(String::as_str)),
                );
            }
            HeaderValue::Text(t) => field(&mut buf, &h.name, &Text::new(t.as_str())),
        }
    }
    if !has_date {
        let secs = opts
            .now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let text = chrono::DateTime::from_timestamp(secs, 0)
            .map(|t| t.to_rfc2822())
            .unwrap_or_default();
        field(&mut buf, "Date", &Raw::new(text));
    }
    if !has_id {
        let host = if valid_hostname(&opts.hostname) {
            opts.hostname.as_str()
        } else {
            "localhost"
        };
        field(
            &mut buf,
            "Message-ID",
            &MessageId::new(format!("{}@{host}", rnd.token())),
        );
    }
    (buf, utf8)
}

fn leaf_headers(buf: &mut Vec<u8>, leaf: &Leaf<'_>) {
    let part = leaf.part;
    let mut ct = ContentType::new(part.content_type.as_str());
    if is_text(&part.content_type) {
        ct = ct.attribute("charset", "utf-8");
    }
    field(buf, "Content-Type", &ct);
    buf.extend_from_slice(b"Content-Transfer-Encoding: ");
    buf.extend_from_slice(leaf.cte.as_str().as_bytes());
    buf.extend_from_slice(b"\r\n");
    let disposition = match leaf.disposition {
        Disposition::None => None,
        Disposition::Inline => Some("inline"),
        Disposition::Attachment => Some("attachment"),
    };
    if let Some(d) = disposition {
        let mut cd = ContentType::new(d);
        if let Some(name) = &part.filename {
            cd = cd.attribute("filename", name.as_str());
        }
        field(buf, "Content-Disposition", &cd);
    }
    if let Some(cid) = &part.content_id {
        field(buf, "Content-ID", &Raw::new(cid.as_str()));
    }
}

/// Headers only, as the message [`render`] writes them would start (the
/// spec's fields without bcc, plus a generated Date / Message-ID when
/// missing), without MIME fields and without the empty line: the "original
/// headers" of a DSN (§4.6). Generated values are only the same as in a
/// rendering when `opts.seed` is set; a caller that needs both should put
/// Date and Message-ID into the spec first.
pub fn render_headers(spec: &Spec, opts: &RenderOptions) -> Result<Vec<u8>, SpecError> {
    spec.validate()?;
    Ok(top_headers(spec, opts, &mut Random::new(opts)).0)
}

// ---------------------------------------------------------------------
// Reading contents

enum Chunk<'a> {
    Slice(&'a [u8]),
    Shared(Bytes),
}

impl Deref for Chunk<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Slice(s) => s,
            Chunk::Shared(b) => b,
        }
    }
}

struct Reader<'a> {
    blobs: &'a dyn BlobSource,
    leaf: &'a Leaf<'a>,
    offset: u64,
    len: u64,
}

impl<'a> Reader<'a> {
    async fn open(
        blobs: &'a dyn BlobSource,
        leaf: &'a Leaf<'a>,
    ) -> Result<Reader<'a>, RenderError> {
        let len = match &leaf.part.content {
            Content::Inline(s) => s.len() as u64,
            Content::CreateId(key) | Content::ReuseUri(key) => {
                blobs.len(key).await.map_err(|e| blob_err(leaf, e))?
            }
        };
        Ok(Reader {
            blobs,
            leaf,
            offset: 0,
            len,
        })
    }

    async fn next(&mut self) -> Result<Option<Chunk<'a>>, RenderError> {
        if self.offset >= self.len {
            return Ok(None);
        }
        let want = (self.len - self.offset).min(CHUNK as u64) as usize;
        let chunk = match &self.leaf.part.content {
            Content::Inline(s) => {
                let start = self.offset as usize;
                Chunk::Slice(s.as_bytes().get(start..start + want).unwrap_or_default())
            }
            Content::CreateId(key) | Content::ReuseUri(key) => {
                let mut b = self
                    .blobs
                    .read(key, self.offset, want)
                    .await
                    .map_err(|e| blob_err(self.leaf, e))?;
                b.truncate(want);
                Chunk::Shared(b)
            }
        };
        if chunk.is_empty() {
            return Err(blob_err(
                self.leaf,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("blob ended at {} of {} bytes", self.offset, self.len),
                ),
            ));
        }
        self.offset += chunk.len() as u64;
        Ok(Some(chunk))
    }
}

fn key(leaf: &Leaf<'_>) -> String {
    match &leaf.part.content {
        Content::Inline(_) => "(inline)".into(),
        Content::CreateId(k) | Content::ReuseUri(k) => k.clone(),
    }
}

fn blob_err(leaf: &Leaf<'_>, source: io::Error) -> RenderError {
    RenderError::Blob {
        part: leaf.path.clone(),
        key: key(leaf),
        source,
    }
}

/// Reads a text or message part once to choose its encoding (and to check
/// that text is UTF-8 before anything is written).
async fn choose_encoding(
    blobs: &dyn BlobSource,
    leaf: &Leaf<'_>,
    at_end: bool,
) -> Result<Cte, RenderError> {
    let ct = &leaf.part.content_type;
    let text = is_text(ct);
    if !text && !is_message(ct) {
        return Ok(Cte::Base64);
    }
    let mut reader = Reader::open(blobs, leaf).await?;
    let mut scan = Scan::new();
    while let Some(chunk) = reader.next().await? {
        scan.push(&chunk);
    }
    if text {
        if !scan.utf8_ok() {
            return Err(RenderError::NotUtf8 {
                part: leaf.path.clone(),
            });
        }
        Ok(scan.text_encoding(at_end))
    } else if scan.seven_bit(at_end) {
        // message/*: RFC 2046 §5.2.1 allows no quoted-printable / base64;
        // base64 is still what keeps a non-7bit message intact.
        Ok(Cte::SevenBit)
    } else {
        Ok(Cte::Base64)
    }
}

// ---------------------------------------------------------------------
// Writing

struct Out<'w, W> {
    w: &'w mut W,
    written: u64,
    tail: [u8; 2],
}

impl<W: AsyncWrite + Unpin + Send> Out<'_, W> {
    async fn write(&mut self, b: &[u8]) -> Result<(), RenderError> {
        if b.is_empty() {
            return Ok(());
        }
        self.w.write_all(b).await.map_err(RenderError::Write)?;
        self.written += b.len() as u64;
        self.tail = match b {
            [.., x, y] => [*x, *y],
            [y] => [self.tail[1], *y],
            [] => self.tail,
        };
        Ok(())
    }

    fn ends_with_crlf(&self) -> bool {
        self.tail == *b"\r\n"
    }
}

enum Segment {
    Bytes(Vec<u8>),
    Leaf(usize),
}

fn lay_out(node: &Node, leaves: &[Leaf<'_>], buf: &mut Vec<u8>, segs: &mut Vec<Segment>) {
    match node {
        Node::Leaf(i) => {
            leaf_headers(buf, &leaves[*i]);
            buf.extend_from_slice(b"\r\n");
            segs.push(Segment::Bytes(std::mem::take(buf)));
            segs.push(Segment::Leaf(*i));
        }
        Node::Multi {
            subtype,
            boundary,
            children,
        } => {
            let ct =
                ContentType::new(format!("multipart/{subtype}")).attribute("boundary", boundary);
            field(buf, "Content-Type", &ct);
            buf.extend_from_slice(b"\r\n");
            for (k, child) in children.iter().enumerate() {
                if k > 0 {
                    buf.extend_from_slice(b"\r\n");
                }
                buf.extend_from_slice(b"--");
                buf.extend_from_slice(boundary.as_bytes());
                buf.extend_from_slice(b"\r\n");
                lay_out(child, leaves, buf, segs);
            }
            buf.extend_from_slice(b"\r\n--");
            buf.extend_from_slice(boundary.as_bytes());
            buf.extend_from_slice(b"--");
        }
    }
}

async fn write_leaf<W: AsyncWrite + Unpin + Send>(
    blobs: &dyn BlobSource,
    leaf: &Leaf<'_>,
    at_end: bool,
    out: &mut Out<'_, W>,
) -> Result<(), RenderError> {
    let mut reader = Reader::open(blobs, leaf).await?;
    let check = is_text(&leaf.part.content_type) || leaf.cte == Cte::SevenBit;
    let mut scan = Scan::new();
    let mut buf = Vec::new();
    let mut b64 = Base64Lines::new();
    let mut qp = QuotedPrintable::new();
    while let Some(chunk) = reader.next().await? {
        if check {
            scan.push(&chunk);
        }
        match leaf.cte {
            Cte::SevenBit => out.write(&chunk).await?,
            Cte::QuotedPrintable => qp.push(&chunk, &mut buf),
            Cte::Base64 => b64.push(&chunk, &mut buf),
        }
        drop(chunk);
        out.write(&buf).await?;
        buf.clear();
    }
    match leaf.cte {
        Cte::SevenBit => {}
        Cte::QuotedPrintable => qp.finish(&mut buf),
        Cte::Base64 => b64.finish(&mut buf),
    }
    out.write(&buf).await?;
    let changed = check
        && match leaf.cte {
            Cte::SevenBit => !scan.seven_bit(at_end),
            _ => !scan.utf8_ok() && is_text(&leaf.part.content_type),
        };
    if changed {
        return Err(RenderError::BlobChanged {
            part: leaf.path.clone(),
            key: key(leaf),
        });
    }
    Ok(())
}

/// Renders `spec` as an RFC 5322 message with CRLF line endings into
/// `out`, reading blob contents from `blobs` a [`CHUNK`] at a time (an
/// attachment is never held whole; each write is at most a few hundred
/// KiB). See the crate documentation for the structure and encodings.
pub async fn render<W: AsyncWrite + Unpin + Send>(
    spec: &Spec,
    blobs: &dyn BlobSource,
    opts: &RenderOptions,
    out: &mut W,
) -> Result<Rendered, RenderError> {
    spec.validate()?;
    let mut rnd = Random::new(opts);
    let (root, mut leaves) = structure(spec, &mut rnd);
    let (mut head, needs_smtputf8) = top_headers(spec, opts, &mut rnd);
    let single = matches!(root, Some(Node::Leaf(_)));
    for leaf in &mut leaves {
        leaf.cte = choose_encoding(blobs, leaf, single).await?;
    }

    let mut segs = Vec::new();
    match &root {
        Some(node) => {
            head.extend_from_slice(b"MIME-Version: 1.0\r\n");
            lay_out(node, &leaves, &mut head, &mut segs);
        }
        None => head.extend_from_slice(b"\r\n"),
    }
    if !head.is_empty() {
        segs.push(Segment::Bytes(head));
    }

    let mut out = Out {
        w: out,
        written: 0,
        tail: [0; 2],
    };
    for seg in segs {
        match seg {
            Segment::Bytes(b) => out.write(&b).await?,
            Segment::Leaf(i) => write_leaf(blobs, &leaves[i], single, &mut out).await?,
        }
    }
    match (&root, leaves.first()) {
        (Some(Node::Multi { .. }), _) => out.write(b"\r\n").await?,
        // A single part's body is the end of the message: its last line
        // needs a CRLF, which must not add to the content.
        (Some(Node::Leaf(_)), Some(leaf)) if !out.ends_with_crlf() => match leaf.cte {
            Cte::QuotedPrintable => out.write(b"=\r\n").await?,
            _ => out.write(b"\r\n").await?,
        },
        _ => {}
    }
    out.w.flush().await.map_err(RenderError::Write)?;
    Ok(Rendered {
        needs_smtputf8,
        length: out.written,
    })
}

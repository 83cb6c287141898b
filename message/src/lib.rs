#![forbid(unsafe_code)]
//! The message-builder JSON of Koukan's REST API (behaviour spec §2, §1.4).
//!
//! * [`Spec`]: the `message_builder` object a client sends instead of an
//!   RFC 5322 message — headers, a text body with alternatives, related
//!   parts, attachments; each part's content inline, or a blob
//!   (`create_id`, `reuse_uri`). [`Spec::from_json`] validates it and
//!   names the offending field ([`SpecError::path`]) so the server can
//!   answer 400; [`Spec::normalize_inline`] turns inline contents into the
//!   `inline<N>` blobs of §1.4; [`Spec::blobs`] lists what must be uploaded.
//! * [`render`]: spec → MIME, streaming: blob contents are read from a
//!   [`BlobSource`] a [`CHUNK`] at a time and encoded on the way to an
//!   `AsyncWrite`, so a 50 MB attachment is never in memory.
//!   [`render_headers`] gives the header block alone (DSN "original
//!   headers").
//! * [`parse`]: MIME → the JSON of §2.3 (the full part tree plus the
//!   flattened stanzas) and the non-inlined contents as blobs `"0"`, `"1"`,
//!   … . It holds the message in memory (mail-parser parses a slice).
//!
//! The JSON is the original's: applications written for it work
//! unchanged. Structure as in §2.2: `text_body[0]`, wrapped in
//! `multipart/related` with the related parts (`Content-Disposition:
//! inline`, `Content-ID` as given), in `multipart/alternative` with
//! `text_body[1..]`, in `multipart/mixed` with the attachments
//! (`Content-Disposition: attachment; filename=…` when a filename is
//! given).
//!
//! # Differences from the original, and why
//!
//! * **`bcc` is not rendered** (§9 item 27). It is accepted and validated
//!   but is for the envelope only: written into the message it would show
//!   every recipient the blind copies. [`render_headers`] leaves it out
//!   too.
//! * **Message ids: string or list.** The parser emits `message-id` as a
//!   string, the builder wanted a list; the builder now takes both, for
//!   all three id headers (`"abc@xyz"`, `"<a@x> <b@y>"` or `["a@x"]`), so
//!   the parser's output can be fed back. Likewise an address header may
//!   be an RFC 5322 string and `date` an RFC 5322 date string. Header
//!   kinds are chosen case-insensitively (`From` is an address header),
//!   and `reply-to` / `sender` are address headers too.
//! * **Validation instead of exceptions.** Unknown keys, `null`s, header
//!   entries that are not `[name, value]` (the original skipped them),
//!   invalid header names, CR/LF or other controls in any header value
//!   (header injection), invalid addr-specs, a `date` without
//!   `unix_secs`, a `content_type` that is not `type/subtype` (or is
//!   `multipart/*`), spec headers that would clash with the MIME structure
//!   (`MIME-Version`, `Content-*`), repeated single-instance headers
//!   (RFC 5322 §3.6), duplicate blob ids and an empty spec are all
//!   [`SpecError`]s naming the field, where the original answered 550
//!   "unexpected exception". Limits: [`MAX_HEADERS`], [`MAX_PARTS`],
//!   [`MAX_ADDRESSES`], [`MAX_IDS`], [`MAX_ID_LEN`], [`MAX_VALUE_LEN`].
//! * **Transfer encodings are chosen per part** (the original base64ed
//!   everything): `text/*` that is ASCII with CRLF line breaks and lines of
//!   at most 998 octets is sent as it is (`7bit`); other text is
//!   quoted-printable, or base64 when that is smaller (mostly non-Latin
//!   text), always `charset=utf-8`; bare CR or LF are preserved exactly
//!   (escaped in QP), so the parsed-back content equals the spec's.
//!   `message/*` parts are `7bit` when clean, else base64; everything else
//!   is base64 in 76-column lines. No output line exceeds 998 octets;
//!   header fields are folded at 78 columns where the text allows (by
//!   `mail-builder`: RFC 2047 words for non-ASCII text and display names,
//!   RFC 2231 for non-ASCII filenames).
//! * **SMTPUTF8.** Non-ASCII addresses (and message ids) are written as
//!   UTF-8 (RFC 6532) and reported in [`Rendered::needs_smtputf8`]; the
//!   SMTP client must then use SMTPUTF8 (or refuse the message).
//! * **Date and Message-ID are filled in** when the spec has none (the
//!   original relied on the client), from [`RenderOptions`].
//! * **Boundaries** start with `=_`, which cannot occur in base64 or
//!   quoted-printable output; 7bit content containing `=_` is QP-encoded
//!   instead, so a part can never contain its delimiter.
//! * Related parts keep their `filename` (`inline; filename=…`).
//! * Parser: the flattening also reads the builder's own shapes back
//!   (`alternative[related[html, …], plain]`, `alternative[html, plain]`),
//!   where the original found no text body at all, so builder → parser →
//!   builder keeps the message; a flattened part carries both `filename`
//!   and `content_id` when it has both (the original kept only whichever
//!   header came first); `message/global-delivery-status` is split into
//!   blocks like `message/delivery-status`; an unparseable `date` becomes
//!   its string instead of failing the whole parse. Values are otherwise
//!   as the original: lower-cased names, `display_name` `""` when absent,
//!   `content-id` verbatim (brackets included), other headers as decoded,
//!   unfolded strings. Malformed MIME is recovered the way mail-parser
//!   does, which is not always Python's way (a part whose headers run into
//!   its body without an empty line, for one).

mod encode;
mod parse;
mod render;
mod spec;
mod text;

pub use parse::{DEFAULT_MAX_INLINE, MAX_DEPTH, ParseError, Parsed, parse};
pub use render::{
    BlobSource, CHUNK, NoBlobs, RenderError, RenderOptions, Rendered, render, render_headers,
};
pub use spec::{
    Address, BlobRef, Content, Date, Header, HeaderKind, HeaderValue, MAX_ADDRESSES,
    MAX_BLOB_REF_LEN, MAX_HEADERS, MAX_ID_LEN, MAX_IDS, MAX_NAME_LEN, MAX_PARTS, MAX_VALUE_LEN,
    Part, Spec, SpecError,
};

//! The REST API's wire format: what the HTTP listener parses and answers,
//! and what the `rest_output` client sends to receiving applications and
//! reads back. One crate for both sides so the two cannot drift apart.
//!
//! The JSON is the original Koukan's (see the README's REST section):
//! mailboxes as `{"m", "e": [{"k", "p"}]}`, responses as
//! `{"code", "message"}`, read placeholders (`{}` for a field that is
//! present but not echoed), the body forms of requests and the
//! `blob_status` forms of replies. Parsing is strict as the original's
//! is (unknown keys, `null` values and empty lists are errors) but every
//! error names the field, so a client gets a 400 it can act on.
#![forbid(unsafe_code)]

pub mod error;
pub mod json;
pub mod range;
pub mod uri;

pub use error::{ApiError, ErrorKind};
pub use json::*;
pub use range::{ContentRange, RangeError};

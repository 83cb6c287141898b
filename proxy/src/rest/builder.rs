//! The message-builder body: the spec's parse (naming the field at
//! fault) and its rendering into the message that is stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use koukan_rest::ErrorKind;
use koukan_storage::{BlobId, Store};

use super::Error;
use super::pending::Slot;

/// A parsed spec.
pub struct Spec(());

/// A spec and its blobs: inline contents (stored as blobs named
/// `inline<N>`), blobs reused from earlier transactions (field, name,
/// uri), and blobs the client will PUT.
pub struct Parsed {
    pub spec: Spec,
    pub inline: Vec<(String, String)>,
    pub reused: Vec<(String, String, String)>,
    pub created: Vec<String>,
}

pub fn parse(_v: &serde_json::Value, _max_depth: usize) -> Result<Parsed, Error> {
    Err(Error::field(
        ErrorKind::InvalidField,
        "body.message_builder",
        "message_builder bodies are not supported yet",
    ))
}

pub async fn render(
    _store: &Arc<dyn Store>,
    _spec: &Spec,
    _slots: &BTreeMap<String, Slot>,
    _hostname: &str,
) -> Result<BlobId, Error> {
    Err(Error::kind(
        ErrorKind::Internal,
        "message_builder bodies are not supported yet",
    ))
}

//! The message-builder body (`koukan-message`): the spec's parse, naming
//! the field at fault, and its rendering, streamed from the blobs in the
//! store into the message that is stored.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use koukan_message::{BlobRef, BlobSource, RenderOptions};
use koukan_rest::ErrorKind;
use koukan_storage::{BlobId, Store};
use tokio::io::AsyncReadExt;

use super::Error;
use super::pending::Slot;

/// A parsed spec, its inline contents already turned into blob
/// references (`inline<N>`).
pub struct Spec(koukan_message::Spec);

/// A spec and its blobs by the key its parts use: inline contents (to
/// store as blobs), blobs reused from earlier transactions (field, key,
/// uri), and blobs the client will PUT.
pub struct Parsed {
    pub spec: Spec,
    pub inline: Vec<(String, String)>,
    pub reused: Vec<(String, String, String)>,
    pub created: Vec<String>,
}

const FIELD: &str = "body.message_builder";
/// The rendered message goes to the store in pieces of this size.
const PIECE: usize = 1 << 20;

pub fn parse(v: &serde_json::Value) -> Result<Parsed, Error> {
    let mut spec = koukan_message::Spec::from_json(v).map_err(|e| {
        let field = if e.path.is_empty() {
            FIELD.to_owned()
        } else {
            format!("{FIELD}.{}", e.path)
        };
        Error::field(ErrorKind::InvalidField, &field, e.problem)
    })?;
    let inline = spec.normalize_inline();
    let mut reused = Vec::new();
    let mut created = Vec::new();
    for b in spec.blobs() {
        match b {
            BlobRef::Create(id) => {
                if !inline.iter().any(|(n, _)| n == id) && !created.iter().any(|c| c == id) {
                    created.push(id.to_owned());
                }
            }
            BlobRef::Reuse(uri) => {
                if !reused.iter().any(|(_, k, _)| k == uri) {
                    reused.push((FIELD.to_owned(), uri.to_owned(), uri.to_owned()));
                }
            }
        }
    }
    Ok(Parsed {
        spec: Spec(spec),
        inline,
        reused,
        created,
    })
}

/// The slots' blobs, read from the store in chunks.
struct StoreBlobs<'a> {
    store: &'a Arc<dyn Store>,
    slots: &'a BTreeMap<String, Slot>,
}

impl StoreBlobs<'_> {
    fn slot(&self, id: &str) -> io::Result<&Slot> {
        self.slots
            .get(id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no blob {id:?}")))
    }
}

impl BlobSource for StoreBlobs<'_> {
    fn len<'a>(&'a self, id: &'a str) -> BoxFuture<'a, io::Result<u64>> {
        Box::pin(async move { Ok(self.slot(id)?.len) })
    }

    fn read<'a>(
        &'a self,
        id: &'a str,
        offset: u64,
        max: usize,
    ) -> BoxFuture<'a, io::Result<Bytes>> {
        Box::pin(async move {
            let blob = &self.slot(id)?.blob;
            self.store
                .read_blob(blob, offset, max)
                .await
                .map_err(io::Error::other)
        })
    }
}

/// Renders the spec into a new finalized blob; returns it and whether the
/// message needs SMTPUTF8.
pub async fn render(
    store: &Arc<dyn Store>,
    spec: &Spec,
    slots: &BTreeMap<String, Slot>,
    hostname: &str,
) -> Result<(BlobId, bool), Error> {
    store.admit().await.map_err(Error::store)?;
    let source = StoreBlobs { store, slots };
    let opts = RenderOptions::new(if hostname.is_empty() {
        "koukan.invalid"
    } else {
        hostname
    });
    // The renderer writes into a pipe; its other end goes to the blob in
    // 1 MiB pieces, so the message is never whole in memory. A message
    // that fits one piece (the usual) is stored in one write.
    let (mut writer, mut reader) = tokio::io::duplex(64 << 10);
    let rendering = async {
        let r = koukan_message::render(&spec.0, &source, &opts, &mut writer).await;
        drop(writer);
        r
    };
    let copying = copy_into_blob(store, &mut reader);
    let (rendered, copied) = tokio::join!(rendering, copying);
    match (rendered, copied) {
        (Ok(r), Ok(blob)) => Ok((blob, r.needs_smtputf8)),
        (Err(e), copied) => {
            if let Some(blob) = match copied {
                Ok(b) => Some(b),
                Err((b, _)) => b,
            } {
                let _ = store.delete_blob(&blob).await;
            }
            Err(Error::field(
                ErrorKind::InvalidField,
                FIELD,
                format!("cannot build the message: {e}"),
            ))
        }
        (Ok(_), Err((blob, e))) => {
            if let Some(blob) = blob {
                let _ = store.delete_blob(&blob).await;
            }
            Err(Error::store(e))
        }
    }
}

/// Reads `reader` to its end into a new finalized blob, in pieces of
/// [`PIECE`]: one write for a message that fits one piece. On an error,
/// the blob it had started (if any), to delete.
async fn copy_into_blob<R: tokio::io::AsyncRead + Unpin>(
    store: &Arc<dyn Store>,
    reader: &mut R,
) -> Result<BlobId, (Option<BlobId>, koukan_storage::StoreError)> {
    let mut blob: Option<BlobId> = None;
    let mut offset = 0u64;
    loop {
        // Grown as the message comes: a small message allocates little (a
        // zeroed 1 MiB buffer per message was most of the REST path's
        // CPU).
        let mut buf = bytes::BytesMut::with_capacity(16 << 10);
        let mut eof = false;
        while buf.len() < PIECE {
            if buf.capacity() == buf.len() {
                buf.reserve(buf.len().min(PIECE - buf.len()).max(16 << 10));
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    return Err((blob, koukan_storage::StoreError::Internal(e.to_string())));
                }
            }
        }
        let data = buf.freeze();
        let id = match &blob {
            None if eof => return store.put_blob(data).await.map_err(|e| (None, e)),
            None => {
                let id = store.create_blob().await.map_err(|e| (None, e))?;
                blob = Some(id.clone());
                id
            }
            Some(id) => id.clone(),
        };
        offset = match store.append_blob(&id, offset, data, eof).await {
            Ok(n) => n,
            Err(e) => return Err((blob, e)),
        };
        if eof {
            return Ok(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Empty, one byte, exactly one piece, one piece and one byte, many
    /// pieces: each stored whole, finalized, byte for byte.
    #[tokio::test]
    async fn rendered_messages_are_stored_piece_by_piece() {
        let dir = crate::test_support::temp_dir();
        let store: Arc<dyn Store> = Arc::new(
            koukan_storage::embedded::EmbeddedStore::open(
                &dir.path().join("s.db"),
                koukan_storage::embedded::EmbeddedOptions::default(),
            )
            .unwrap(),
        );
        for len in [0, 1, PIECE, PIECE + 1, 3 * PIECE + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let (mut w, mut r) = tokio::io::duplex(4096);
            let writing = async {
                tokio::io::AsyncWriteExt::write_all(&mut w, &data)
                    .await
                    .unwrap();
                drop(w);
            };
            let (_, blob) = tokio::join!(writing, copy_into_blob(&store, &mut r));
            let blob = blob.unwrap_or_else(|(_, e)| panic!("{len}: {e}"));
            let info = store.blob_info(&blob).await.unwrap();
            assert!(info.finalized, "{len}");
            assert_eq!(info.length, len as u64);
            let mut got = Vec::new();
            loop {
                let chunk = store
                    .read_blob(&blob, got.len() as u64, 1 << 20)
                    .await
                    .unwrap();
                if chunk.is_empty() {
                    break;
                }
                got.extend_from_slice(&chunk);
            }
            assert!(got == data, "{len}: content differs");
        }
    }
}

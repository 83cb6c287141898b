//! A message body being written into a blob of the store.

use std::sync::Arc;

use koukan_chain::Mailbox;
use koukan_storage::{BlobId, PriorAttempt, Store, StoreError};

use super::convert::{null_mailbox, stored_mailbox};
use super::{Origin, Queue, Submission};

/// A message body being written into a blob. This is new mail: every
/// write asks the store to admit it first (refused below the storage
/// reserve, which is kept for delivery). A spool dropped without a
/// successful commit deletes its blob, so that an abandoned upload, or a
/// body the exploder delivered while the client waited, does not hold
/// space until gc.
#[derive(Default)]
pub struct Spool {
    blob: Option<(BlobId, u64)>,
    store: Option<Arc<dyn Store>>,
    committed: bool,
}

impl Spool {
    pub async fn append(
        &mut self,
        queue: &Queue,
        data: bytes::Bytes,
        last: bool,
    ) -> Result<(), StoreError> {
        queue.store.admit().await?;
        let (blob, offset) = match self.blob.take() {
            Some(b) => b,
            None => {
                let blob = queue.store.create_blob().await?;
                self.store = Some(queue.store.clone());
                (blob, 0)
            }
        };
        let appended = queue.store.append_blob(&blob, offset, data, last).await;
        // Kept even on failure: the drop deletes it.
        self.blob = Some((blob, offset));
        let len = appended?;
        self.blob = self.blob.take().map(|(b, _)| (b, len));
        Ok(())
    }

    /// Durably stores one transaction per recipient on the (finalized)
    /// body, each with the attempt already made for it, if any, as one
    /// write; returns their ids.
    pub async fn commit(
        &mut self,
        submission: &Submission,
        origin: &Origin,
        mail_from: Option<&Mailbox>,
        rcpts: Vec<(&Mailbox, Option<PriorAttempt>)>,
    ) -> Result<Vec<String>, StoreError> {
        let Some((blob, _)) = &self.blob else {
            return Err(StoreError::Internal("no body".into()));
        };
        let mail_from = mail_from.map_or_else(null_mailbox, stored_mailbox);
        let txs = rcpts
            .into_iter()
            .map(|(rcpt, prior)| {
                submission.transaction(origin, &mail_from, stored_mailbox(rcpt), blob, prior)
            })
            .collect();
        let queue = &submission.queue;
        queue.store.admit().await?;
        let ids = queue.store.create_transactions(txs).await?;
        self.committed = true;
        queue.wake();
        Ok(ids.into_iter().map(|id| id.0).collect())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let (Some((blob, _)), Some(store)) = (self.blob.take(), self.store.take()) else {
            return;
        };
        // A referenced blob (a commit whose outcome was unknown may still
        // have stored it) is left alone by the store; gc is the backstop
        // when there is no runtime to run this on.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.delete_blob(&blob).await {
                    tracing::debug!(blob = %blob, error = %e, "deleting an unused body failed; gc will");
                }
            });
        }
    }
}

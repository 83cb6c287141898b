//! A small pool of read connections, used from tokio's blocking threads.
//!
//! In WAL mode a reader sees the last commit and never waits for the
//! writer, so reads (bodies, records, counts) go around the writer queue
//! and do not delay group commits. A semaphore bounds the connections (and
//! the blocking threads) reads may occupy.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use super::EmbeddedOptions;
use super::schema::open_reader;
use crate::{StoreError, StoreResult};

pub(super) struct Readers {
    permits: Arc<Semaphore>,
    pool: Arc<Pool>,
}

struct Pool {
    path: PathBuf,
    opts: EmbeddedOptions,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: PathBuf, opts: EmbeddedOptions) -> Self {
        let size = opts.readers.max(1);
        Readers {
            permits: Arc::new(Semaphore::new(size)),
            pool: Arc::new(Pool {
                path,
                opts,
                idle: Mutex::new(Vec::with_capacity(size)),
            }),
        }
    }

    /// Runs `f` on a read connection in a blocking thread.
    pub(super) async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("sqlite reader pool closed".into()))?;
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            // Held until the read is done, even if the caller went away.
            let _permit = permit;
            let conn = pool.take()?;
            let result = f(&conn);
            pool.put(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("sqlite read task failed: {e}")))?
    }
}

impl Pool {
    fn take(&self) -> StoreResult<Connection> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_reader(&self.path, &self.opts),
        }
    }

    fn put(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}

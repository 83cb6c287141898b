//! Free space and the reserve kept for delivery (see the crate docs).
//!
//! Free space is what the store could still grow into: the file system's
//! available bytes (statvfs of the database's directory, so the WAL and
//! everything else on that disk counts) plus the database's own free
//! pages, less what the next checkpoint will add to the database file.
//! The free pages matter: deleted bodies leave free pages inside the file
//! that SQLite reuses but statvfs does not see, so without them prompt
//! collection would never re-open admission on a full disk. The checkpoint
//! matters too: pages written since the last one live only in the WAL, and
//! copying them into the database grows its file; if the disk cannot take
//! that, the checkpoint fails, the WAL can never be reused, and every later
//! write (claims included) fails. That is also why the WAL is kept small
//! next to the reserve ([`wal_pages`]). With `max_size_bytes` the room
//! under that cap bounds it too.

use std::path::{Path, PathBuf};

use crate::reserve::Gauge;
use crate::{StoreError, StoreResult};

/// The default reserve's ceiling.
pub const DEFAULT_RESERVE_MAX: u64 = 64 << 20;

/// The database's page figures, read on a connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pages {
    pub size: u64,
    pub count: u64,
    pub free: u64,
}

/// The `wal_autocheckpoint` for a reserve: the WAL (which the disk must
/// hold besides the database, and whose pages a checkpoint then adds to
/// the database file) stays within about a quarter of the reserve, at
/// SQLite's default of 1000 pages at most.
pub(super) fn wal_pages(reserve: u64, page_size: u64) -> u64 {
    if reserve == 0 {
        return 1000;
    }
    (reserve / 4 / page_size.max(512)).clamp(16, 1000)
}

pub(super) struct Space {
    /// The database file (its length, against its pages, is what the next
    /// checkpoint adds).
    db: PathBuf,
    /// The database's directory (what statvfs looks at).
    dir: PathBuf,
    pub(super) reserve: u64,
    cap: Option<u64>,
    /// Readings of the room: bytes the store may still write.
    gauge: Gauge<u64>,
}

/// statvfs of `dir`: (available to us, total size) in bytes.
fn statvfs(dir: &Path) -> StoreResult<(u64, u64)> {
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| StoreError::Unavailable(format!("statvfs {}: {e}", dir.display())))?;
    let unit = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    Ok((
        st.f_bavail.saturating_mul(unit),
        st.f_blocks.saturating_mul(unit),
    ))
}

impl Space {
    /// `reserve`: `None` for the default, `min(64 MiB, 10 %)` of the file
    /// system (or of `cap`, when smaller); `Some(0)` keeps no reserve.
    pub(super) fn new(db: &Path, reserve: Option<u64>, cap: Option<u64>) -> StoreResult<Self> {
        let dir = match db.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let reserve = match reserve {
            Some(r) => r,
            None => {
                let (_, total) = statvfs(&dir)?;
                let base = cap.map_or(total, |c| c.min(total));
                (base / 10).min(DEFAULT_RESERVE_MAX)
            }
        };
        Ok(Space {
            db: db.to_path_buf(),
            dir,
            reserve,
            cap,
            gauge: Gauge::default(),
        })
    }

    /// The last reading, less what was written since, if still fresh.
    pub(super) fn fresh_room(&self) -> Option<u64> {
        self.gauge
            .fresh()
            .map(|(room, written)| room.saturating_sub(written))
    }

    /// Counts `bytes` written (body data) against the last reading.
    pub(super) fn wrote(&self, bytes: u64) {
        self.gauge.wrote(bytes);
    }

    /// Takes a reading from the page figures (read by the caller on a
    /// connection) and the file system; returns the room. Call
    /// [`Space::start_measuring`] before reading the pages.
    pub(super) fn measure(&self, pages: Pages) -> StoreResult<u64> {
        let (avail, _) = statvfs(&self.dir)?;
        let file_len = std::fs::metadata(&self.db).map_or(0, |m| m.len());
        let checkpoint_growth = pages
            .count
            .saturating_mul(pages.size)
            .saturating_sub(file_len);
        let free_pages = pages.free.saturating_mul(pages.size);
        let mut room = avail
            .saturating_add(free_pages)
            .saturating_sub(checkpoint_growth);
        if let Some(cap) = self.cap {
            let used = pages
                .count
                .saturating_sub(pages.free)
                .saturating_mul(pages.size);
            room = room.min(cap.saturating_sub(used));
        }
        self.gauge.record(room);
        Ok(room)
    }

    /// Starts a reading: what is written from now on counts against it.
    pub(super) fn start_measuring(&self) {
        self.gauge.start_reading();
    }

    /// Admits new mail with `room` bytes free, or refuses it; logs once
    /// when the store goes below the reserve and once when it is back.
    pub(super) fn verdict(&self, room: u64) -> StoreResult<()> {
        let below = room < self.reserve;
        if self.gauge.set_below(below) {
            if below {
                tracing::warn!(
                    dir = %self.dir.display(), free = room, reserve = self.reserve,
                    "embedded store below its reserve: refusing new mail (452 4.3.1) \
                     until delivery frees space"
                );
            } else {
                tracing::info!(
                    dir = %self.dir.display(), free = room, reserve = self.reserve,
                    "embedded store above its reserve again: accepting new mail"
                );
            }
        }
        if below {
            return Err(StoreError::Full(format!(
                "below the storage reserve: {room} bytes free for the store in {}, \
                 reserve {} bytes",
                self.dir.display(),
                self.reserve
            )));
        }
        Ok(())
    }
}

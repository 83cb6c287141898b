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

/// The `wal_autocheckpoint` for a reserve and the space the store can use
/// at all (`size`: the file system, or the size cap). The WAL must fit on
/// the disk beside the database, and a checkpoint then adds its pages to
/// the database file: so it stays within about a quarter of the reserve,
/// and within an eighth of `size` whatever the reserve. Without that, a
/// log allowed to outgrow what the disk has left could never be
/// checkpointed once the disk is full, and no write would succeed again
/// even after space is freed: the growing log would take that space
/// first. At SQLite's default of 1000 pages at most.
pub(super) fn wal_pages(reserve: u64, size: u64, page_size: u64) -> u64 {
    let budget = match reserve {
        0 => size / 8,
        r => (r / 4).min(size / 8),
    };
    (budget / page_size.max(512)).clamp(16, 1000)
}

pub(super) struct Space {
    /// The database file (its length, against its pages, is what the next
    /// checkpoint adds).
    db: PathBuf,
    /// The database's directory (what statvfs looks at).
    dir: PathBuf,
    pub(super) reserve: u64,
    /// What the store could ever use: the file system's size, or the cap.
    pub(super) size: u64,
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
        let (_, total) = statvfs(&dir)?;
        let size = cap.map_or(total, |c| c.min(total));
        let reserve = reserve.unwrap_or_else(|| (size / 10).min(DEFAULT_RESERVE_MAX));
        Ok(Space {
            db: db.to_path_buf(),
            dir,
            reserve,
            size,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_fits_the_disk_with_or_without_a_reserve() {
        const MIB: u64 = 1 << 20;
        // Big disk, default-sized reserve: SQLite's default.
        assert_eq!(wal_pages(64 * MIB, 100 * 1024 * MIB, 4096), 1000);
        // A small reserve keeps the log to a quarter of it.
        assert_eq!(wal_pages(MIB, 100 * 1024 * MIB, 4096), 64);
        // No reserve: an eighth of the disk, not 1000 pages (4 MiB) on a
        // 4 MiB disk.
        assert_eq!(wal_pages(0, 4 * MIB, 4096), 128);
        assert_eq!(wal_pages(0, 100 * 1024 * MIB, 4096), 1000);
        // A reserve bigger than the disk allows: the disk decides.
        assert_eq!(wal_pages(8 * MIB, 4 * MIB, 4096), 128);
        // Never below 16 pages.
        assert_eq!(wal_pages(0, 64 * 1024, 4096), 16);
    }
}

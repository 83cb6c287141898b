//! What both backends keep for [`Store::admit`](crate::Store::admit): the
//! last reading of how much room the store has left, reused while it is
//! fresh (admission runs for every body chunk received), with the bytes
//! written since it was taken counted on top of it so that a fast writer
//! cannot run through the reserve in between; and whether the store is
//! below its reserve, so that each change is logged once, not per message.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a reading answers admissions before it is taken again.
pub(crate) const FRESH_FOR: Duration = Duration::from_millis(200);

/// `R` is what a backend reads (free bytes; Redis's memory figures).
#[derive(Debug, Default)]
pub(crate) struct Gauge<R> {
    last: Mutex<Option<(Instant, R)>>,
    /// Body bytes written since the last reading was started.
    written: AtomicU64,
    below: AtomicBool,
}

impl<R: Copy> Gauge<R> {
    /// The last reading while it is fresh, and the bytes written since.
    pub(crate) fn fresh(&self) -> Option<(R, u64)> {
        let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.filter(|(taken, _)| taken.elapsed() < FRESH_FOR)
            .map(|(_, r)| (r, self.written.load(Ordering::Relaxed)))
    }

    /// Starts a reading: what is written from now on counts against it
    /// (writes racing the reading may count twice, erring on the safe
    /// side).
    pub(crate) fn start_reading(&self) {
        self.written.store(0, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, reading: R) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), reading));
    }

    /// Counts body bytes written against the last reading.
    pub(crate) fn wrote(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records whether the store is below its reserve now; true when that
    /// changed (the caller logs it).
    pub(crate) fn set_below(&self, below: bool) -> bool {
        self.below.swap(below, Ordering::Relaxed) != below
    }
}

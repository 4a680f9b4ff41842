//! The clocks a backend measures time to live on: processing time and the engine's watermark.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::state::ttl::TtlTime;

/// `processing` holds this while the wall clock is used.
const SYSTEM_TIME: u64 = u64::MAX;

#[derive(Debug)]
struct Clocks {
    /// The processing time set by the engine, or [`SYSTEM_TIME`].
    processing: AtomicU64,
    /// The highest watermark the engine reported.
    watermark: AtomicU64,
}

/// A backend's two TTL clocks, shared by its handles and by its background cleanup (RocksDB's
/// compaction filter reads it from compaction threads). Clones share the clocks.
///
/// Processing time is the wall clock (milliseconds since the Unix epoch) until the engine sets
/// it ([`TtlClock::set_processing_time`]), which makes tests deterministic. Event time is the
/// watermark: 0 until the engine advances it, and never moving back.
///
/// ```
/// use statebackend::state::ttl::{TtlClock, TtlTime};
/// let clock = TtlClock::default();
/// clock.set_processing_time(1_000);
/// clock.advance_watermark(50);
/// clock.advance_watermark(40); // ignored: watermarks do not go back
/// assert_eq!(clock.now(TtlTime::ProcessingTime), 1_000);
/// assert_eq!(clock.now(TtlTime::EventTime), 50);
/// ```
#[derive(Debug, Clone)]
pub struct TtlClock {
    clocks: Arc<Clocks>,
}

impl Default for TtlClock {
    fn default() -> Self {
        Self {
            clocks: Arc::new(Clocks {
                processing: AtomicU64::new(SYSTEM_TIME),
                watermark: AtomicU64::new(0),
            }),
        }
    }
}

impl TtlClock {
    /// The current time on clock `time`, in milliseconds.
    #[inline]
    pub fn now(&self, time: TtlTime) -> u64 {
        match time {
            TtlTime::ProcessingTime => self.processing_time(),
            TtlTime::EventTime => self.clocks.watermark.load(Ordering::Relaxed),
        }
    }

    /// The processing time: the one set, or the wall clock.
    #[inline]
    pub fn processing_time(&self) -> u64 {
        match self.clocks.processing.load(Ordering::Relaxed) {
            SYSTEM_TIME => ticking_wall_clock_ms(),
            set => set,
        }
    }

    /// Sets processing time to `ms` (below `u64::MAX`) until set again or
    /// [`TtlClock::use_system_time`]. It may move back: that is the engine's choice.
    pub fn set_processing_time(&self, ms: u64) {
        self.clocks
            .processing
            .store(ms.min(SYSTEM_TIME - 1), Ordering::Relaxed);
    }

    /// Processing time follows the wall clock again.
    pub fn use_system_time(&self) {
        self.clocks.processing.store(SYSTEM_TIME, Ordering::Relaxed);
    }

    /// Advances the watermark to `ms` if that is later than the current one.
    pub fn advance_watermark(&self, ms: u64) {
        self.clocks.watermark.fetch_max(ms, Ordering::Relaxed);
    }

    /// The current watermark.
    pub fn watermark(&self) -> u64 {
        self.clocks.watermark.load(Ordering::Relaxed)
    }
}

/// Both clocks read at one moment: the time a snapshot's expiry is judged at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtlInstant {
    /// Processing time.
    pub processing: u64,
    /// The watermark.
    pub event: u64,
}

impl TtlInstant {
    /// The time on clock `time`.
    pub fn now(&self, time: TtlTime) -> u64 {
        match time {
            TtlTime::ProcessingTime => self.processing,
            TtlTime::EventTime => self.event,
        }
    }
}

impl TtlClock {
    /// Both clocks now.
    pub fn instant(&self) -> TtlInstant {
        TtlInstant {
            processing: self.processing_time(),
            event: self.watermark(),
        }
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(SYSTEM_TIME - 1)
    })
}

/// The wall clock in milliseconds as one background thread last read it (every millisecond).
///
/// Reading the system clock costs 20 ns or more (a system call where the VM's clock source has
/// no fast path): more than a heap backend's whole update. Every access to a state with a time
/// to live on processing time needs the time, so it reads this atomic instead. The thread
/// starts on the first read; until its first tick the clock is read directly.
#[inline]
fn ticking_wall_clock_ms() -> u64 {
    use std::sync::Once;
    use std::time::Duration;
    static NOW: AtomicU64 = AtomicU64::new(0);
    static START: Once = Once::new();
    START.call_once(|| {
        NOW.store(wall_clock_ms(), Ordering::Relaxed);
        // If the thread cannot start, reads fall back to the system clock (below).
        let _ = std::thread::Builder::new()
            .name("statebackend-ttl-clock".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_millis(1));
                    NOW.store(wall_clock_ms(), Ordering::Relaxed);
                }
            })
            .map_err(|_| NOW.store(0, Ordering::Relaxed));
    });
    match NOW.load(Ordering::Relaxed) {
        0 => wall_clock_ms(),
        now => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_clocks() {
        let clock = TtlClock::default();
        let other = clock.clone();
        other.set_processing_time(7);
        other.advance_watermark(9);
        assert_eq!(clock.now(TtlTime::ProcessingTime), 7);
        assert_eq!(clock.now(TtlTime::EventTime), 9);
        clock.use_system_time();
        assert!(other.now(TtlTime::ProcessingTime) > 1_600_000_000_000);
    }
}

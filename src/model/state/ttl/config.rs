//! What a state's time to live is: the duration, the time domain that measures it, when a
//! row's timestamp is refreshed, and whether an expired row that is still stored may be read.

use std::time::Duration;

/// When a row's timestamp is set to the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TtlUpdate {
    /// When the row is created or written (Flink's `OnCreateAndWrite`).
    OnCreateAndWrite = 1,
    /// Also when it is read (Flink's `OnReadAndWrite`): a read of a live row writes it back.
    OnReadAndWrite = 2,
}

/// Whether a read may return a row that has expired but is still stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TtlVisibility {
    /// Reads never return an expired row (Flink's `NeverReturnExpired`).
    NeverReturnExpired = 1,
    /// A read returns an expired row once, while no cleanup has dropped it yet, and drops it
    /// (Flink's `ReturnExpiredIfNotCleanedUp`).
    ReturnExpiredIfNotCleanedUp = 2,
}

/// The clock a state's time to live is measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TtlTime {
    /// The backend's processing-time clock ([`crate::state::ttl::TtlClock`]): wall-clock
    /// milliseconds unless the engine sets the time itself.
    ProcessingTime = 1,
    /// The engine's watermark ([`crate::state::ttl::TtlClock::advance_watermark`]): a row
    /// written when the watermark was `w` expires once the watermark reaches `w + ttl`.
    EventTime = 2,
}

impl TtlUpdate {
    /// The update type with byte code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TtlUpdate::OnCreateAndWrite),
            2 => Some(TtlUpdate::OnReadAndWrite),
            _ => None,
        }
    }
}

impl TtlVisibility {
    /// The visibility with byte code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TtlVisibility::NeverReturnExpired),
            2 => Some(TtlVisibility::ReturnExpiredIfNotCleanedUp),
            _ => None,
        }
    }
}

impl TtlTime {
    /// The time domain with byte code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(TtlTime::ProcessingTime),
            2 => Some(TtlTime::EventTime),
            _ => None,
        }
    }
}

/// A state's time to live, set on its descriptor (`with_ttl`) and recorded with the state in
/// checkpoints and savepoints.
///
/// A row (a value, reducing or aggregating state's value, a list element, a map entry)
/// carries the time it was last written (or read, with [`TtlUpdate::OnReadAndWrite`]) and
/// expires when the state's clock reaches that time plus [`StateTtlConfig::ttl_ms`].
///
/// ```
/// use std::time::Duration;
/// use statebackend::state::ttl::{StateTtlConfig, TtlTime, TtlUpdate};
/// let ttl = StateTtlConfig::new(Duration::from_secs(3600))
///     .with_update(TtlUpdate::OnReadAndWrite)
///     .with_time(TtlTime::EventTime);
/// assert_eq!(ttl.ttl_ms, 3_600_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateTtlConfig {
    /// The time to live in milliseconds (at least 1).
    pub ttl_ms: u64,
    /// When timestamps are refreshed.
    pub update: TtlUpdate,
    /// Whether expired rows that are still stored may be read.
    pub visibility: TtlVisibility,
    /// The clock.
    pub time: TtlTime,
}

impl StateTtlConfig {
    /// A time to live of `ttl` (whole milliseconds, at least 1), refreshed on create and write,
    /// never returning expired rows, on processing time: Flink's defaults.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            update: TtlUpdate::OnCreateAndWrite,
            visibility: TtlVisibility::NeverReturnExpired,
            time: TtlTime::ProcessingTime,
        }
    }

    /// This config with update type `update`.
    #[must_use]
    pub fn with_update(mut self, update: TtlUpdate) -> Self {
        self.update = update;
        self
    }

    /// This config with visibility `visibility`.
    #[must_use]
    pub fn with_visibility(mut self, visibility: TtlVisibility) -> Self {
        self.visibility = visibility;
        self
    }

    /// This config on clock `time`.
    #[must_use]
    pub fn with_time(mut self, time: TtlTime) -> Self {
        self.time = time;
        self
    }

    /// Whether a row stamped `timestamp` has expired at time `now`: its expiry time
    /// (`timestamp + ttl`, saturating) is at or before `now`, as in Flink.
    #[inline]
    pub fn expired(&self, timestamp: u64, now: u64) -> bool {
        timestamp.saturating_add(self.ttl_ms) <= now
    }

    /// Size of [`StateTtlConfig::to_bytes`].
    pub const ENCODED_BYTES: usize = 11;

    /// The stored form (`docs/savepoint-format.md` §2): ttl in ms (u64 LE), then the update
    /// type, visibility and time domain as one byte each (their codes).
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_BYTES] {
        let mut out = [0; Self::ENCODED_BYTES];
        out[..8].copy_from_slice(&self.ttl_ms.to_le_bytes());
        out[8] = self.update as u8;
        out[9] = self.visibility as u8;
        out[10] = self.time as u8;
        out
    }

    /// Parses [`StateTtlConfig::to_bytes`]; `None` for a wrong length, a zero ttl or an
    /// unknown code.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; Self::ENCODED_BYTES] = bytes.try_into().ok()?;
        let ttl_ms = u64::from_le_bytes(bytes[..8].try_into().ok()?);
        if ttl_ms == 0 {
            return None;
        }
        Some(Self {
            ttl_ms,
            update: TtlUpdate::from_code(bytes[8])?,
            visibility: TtlVisibility::from_code(bytes[9])?,
            time: TtlTime::from_code(bytes[10])?,
        })
    }

    /// As tools print it, e.g. `ttl 3600000 ms, processing time, on create and write, never
    /// return expired`.
    pub fn describe(&self) -> String {
        format!(
            "ttl {} ms, {}, {}, {}",
            self.ttl_ms,
            match self.time {
                TtlTime::ProcessingTime => "processing time",
                TtlTime::EventTime => "event time",
            },
            match self.update {
                TtlUpdate::OnCreateAndWrite => "on create and write",
                TtlUpdate::OnReadAndWrite => "on read and write",
            },
            match self.visibility {
                TtlVisibility::NeverReturnExpired => "never return expired",
                TtlVisibility::ReturnExpiredIfNotCleanedUp => "return expired if not cleaned up",
            }
        )
    }
}

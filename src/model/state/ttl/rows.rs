//! Time to live on encoded rows: which rows (or list elements) have expired, and how rows
//! change when a restore changes a state's time to live. One implementation for every place
//! that sees rows as bytes: snapshot and savepoint writers, RocksDB's compaction filter, and
//! restores.
//!
//! A state with a time to live stores [`super::TtlValue`]s, so its row values are (see
//! `docs/savepoint-format.md` §3):
//! - value, reducing, aggregating, and each map row: `timestamp u64 LE ++ codec(value)`;
//! - list: its elements concatenated, each `u32 LE length ++ timestamp u64 LE ++
//!   codec(element)`, the length counting the timestamp.

use crate::model::error::{Error, Result};
use crate::model::state::ttl::StateTtlConfig;
use crate::model::state::{StateInfo, StateKind};

/// What happens to one row under its state's time to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowExpiry {
    /// Nothing in it has expired (or it is not a well-formed row: decoding reports that).
    Live,
    /// All of it has expired: drop the row.
    Expired,
    /// Some list elements expired: the row with only the live ones.
    Trimmed(Vec<u8>),
}

/// Timestamp at the start of `bytes`, if they are long enough.
#[inline]
fn timestamp(bytes: &[u8]) -> Option<u64> {
    let head: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// Calls `f(start, end)` for each list element's bytes (after its length) in `row`; `false`
/// if the row is not well formed (a length overrunning it).
fn for_each_element(row: &[u8], mut f: impl FnMut(usize, usize)) -> bool {
    let mut at = 0;
    while at < row.len() {
        let Some(len) = row.get(at..at + 4) else {
            return false;
        };
        let start = at + 4;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(end) = start.checked_add(len).filter(|&end| end <= row.len()) else {
            return false;
        };
        f(start, end);
        at = end;
    }
    true
}

/// Whether row `value` of a `kind` state with time to live `ttl` has expired at `now`.
/// Allocates only to trim a list of which some elements expired: judging is a scan.
pub fn row_expiry(kind: StateKind, ttl: &StateTtlConfig, now: u64, value: &[u8]) -> RowExpiry {
    if kind != StateKind::List {
        return match timestamp(value) {
            Some(ts) if ttl.expired(ts, now) => RowExpiry::Expired,
            _ => RowExpiry::Live,
        };
    }
    let live = |start: usize, end: usize| {
        timestamp(&value[start..end]).is_none_or(|ts| !ttl.expired(ts, now))
    };
    let (mut total, mut kept) = (0usize, 0usize);
    let well_formed = for_each_element(value, |start, end| {
        total += 1;
        kept += usize::from(live(start, end));
    });
    if !well_formed || kept == total {
        RowExpiry::Live
    } else if kept == 0 {
        RowExpiry::Expired
    } else {
        let mut trimmed = Vec::with_capacity(value.len());
        for_each_element(value, |start, end| {
            if live(start, end) {
                trimmed.extend_from_slice(&value[start - 4..end]);
            }
        });
        RowExpiry::Trimmed(trimmed)
    }
}

/// How the rows of a restored state change when it is registered with another time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlChange {
    /// The rows stay as they are: both without TTL, or both with TTL on the same clock (a
    /// changed duration, update type or visibility applies to the stored timestamps).
    Keep,
    /// The rows get timestamps: TTL enabled, every row stamped with the registration time on
    /// the new clock. Also when the clock changes (processing ↔ event time): timestamps of one
    /// clock mean nothing on the other, so the rows start their lifetime again.
    Stamp {
        /// The timestamp every row (list element) gets.
        now: u64,
        /// Whether the rows carry timestamps now, to be replaced.
        replace: bool,
    },
    /// The rows lose their timestamps: TTL disabled.
    Strip,
}

impl TtlChange {
    /// The change from a state restored with `from` to one registered with `to`; `now` is the
    /// time on `to`'s clock.
    pub fn between(from: Option<&StateTtlConfig>, to: Option<&StateTtlConfig>, now: u64) -> Self {
        match (from, to) {
            (None, None) => TtlChange::Keep,
            (Some(a), Some(b)) if a.time == b.time => TtlChange::Keep,
            (Some(_), Some(_)) => TtlChange::Stamp { now, replace: true },
            (None, Some(_)) => TtlChange::Stamp {
                now,
                replace: false,
            },
            (Some(_), None) => TtlChange::Strip,
        }
    }

    /// [`TtlChange::apply`] for a row of state `info`, as every backend's restore needs it: a
    /// row that is not well formed is [`Error::Decode`] naming the state.
    ///
    /// # Errors
    /// [`Error::Decode`].
    pub fn apply_to_row(self, info: &StateInfo, value: &[u8]) -> Result<Vec<u8>> {
        self.apply(info.kind, value).ok_or_else(|| Error::Decode {
            state: info.name.clone(),
            message: "a row too short for its TTL timestamp".into(),
        })
    }

    /// Row `value` of a `kind` state after the change, or `None` if the row is not well formed
    /// (too short for its timestamp, or a list whose lengths overrun it).
    pub fn apply(self, kind: StateKind, value: &[u8]) -> Option<Vec<u8>> {
        let one = |bytes: &[u8], out: &mut Vec<u8>| -> Option<()> {
            match self {
                TtlChange::Keep => out.extend_from_slice(bytes),
                TtlChange::Stamp { now, replace } => {
                    out.extend_from_slice(&now.to_le_bytes());
                    out.extend_from_slice(if replace { bytes.get(8..)? } else { bytes });
                }
                TtlChange::Strip => out.extend_from_slice(bytes.get(8..)?),
            }
            Some(())
        };
        let mut out = Vec::with_capacity(value.len() + 8);
        if kind != StateKind::List {
            one(value, &mut out)?;
            return Some(out);
        }
        let mut elements = Vec::new();
        if !for_each_element(value, |start, end| elements.push((start, end))) {
            return None;
        }
        for (start, end) in elements {
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            one(&value[start..end], &mut out)?;
            let len = u32::try_from(out.len() - at - 4).ok()?;
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ttl(ms: u64) -> StateTtlConfig {
        StateTtlConfig::new(Duration::from_millis(ms))
    }

    fn stamped(ts: u64, value: &[u8]) -> Vec<u8> {
        let mut row = ts.to_le_bytes().to_vec();
        row.extend_from_slice(value);
        row
    }

    fn list(elements: &[Vec<u8>]) -> Vec<u8> {
        let mut row = Vec::new();
        for e in elements {
            row.extend_from_slice(&(e.len() as u32).to_le_bytes());
            row.extend_from_slice(e);
        }
        row
    }

    #[test]
    fn a_value_expires_when_its_time_plus_ttl_is_reached() {
        let row = stamped(100, b"v");
        assert_eq!(
            row_expiry(StateKind::Value, &ttl(10), 109, &row),
            RowExpiry::Live
        );
        assert_eq!(
            row_expiry(StateKind::Map, &ttl(10), 110, &row),
            RowExpiry::Expired
        );
        // A row too short for a timestamp is left for decoding to report.
        assert_eq!(
            row_expiry(StateKind::Value, &ttl(1), 1 << 40, b"abc"),
            RowExpiry::Live
        );
    }

    #[test]
    fn a_list_keeps_its_live_elements_in_order() {
        let row = list(&[
            stamped(1, b"a"),
            stamped(50, b"bb"),
            stamped(2, b"c"),
            stamped(60, b""),
        ]);
        let trimmed = list(&[stamped(50, b"bb"), stamped(60, b"")]);
        assert_eq!(
            row_expiry(StateKind::List, &ttl(10), 20, &row),
            RowExpiry::Trimmed(trimmed)
        );
        assert_eq!(
            row_expiry(StateKind::List, &ttl(10), 5, &row),
            RowExpiry::Live
        );
        assert_eq!(
            row_expiry(StateKind::List, &ttl(10), 70, &row),
            RowExpiry::Expired
        );
        // Lengths that overrun the row: left alone.
        let mut broken = row.clone();
        broken.truncate(row.len() - 3);
        assert_eq!(
            row_expiry(StateKind::List, &ttl(10), 70, &broken),
            RowExpiry::Live
        );
    }

    #[test]
    fn changes_stamp_and_strip_every_element() {
        let plain = list(&[b"a".to_vec(), b"bcd".to_vec()]);
        let change = TtlChange::between(None, Some(&ttl(5)), 77);
        let stamped_list = change.apply(StateKind::List, &plain).unwrap();
        assert_eq!(
            stamped_list,
            list(&[stamped(77, b"a"), stamped(77, b"bcd")])
        );
        let strip = TtlChange::between(Some(&ttl(5)), None, 0);
        assert_eq!(strip.apply(StateKind::List, &stamped_list).unwrap(), plain);
        assert_eq!(
            TtlChange::between(Some(&ttl(5)), Some(&ttl(9)), 1),
            TtlChange::Keep
        );
        let event = ttl(5).with_time(crate::model::state::ttl::TtlTime::EventTime);
        let restamp = TtlChange::between(Some(&ttl(5)), Some(&event), 3);
        assert_eq!(
            restamp
                .apply(StateKind::Value, &stamped(100, b"x"))
                .unwrap(),
            stamped(3, b"x")
        );
        assert_eq!(strip.apply(StateKind::Value, b"short"), None);
    }
}

//! State time to live: rows that expire a set time after they were last written.
//!
//! A state registered with a [`StateTtlConfig`] (`KeyedStateBackend::*_with_ttl`) stores
//! every value, list element and map entry as a [`TtlValue`]: the value and the time it was
//! written, on the state's clock ([`TtlClock`]: processing time or the engine's watermark).
//! Its handles ([`TtlValueState`] and friends) never return what has expired (unless the
//! visibility allows it once) and drop what they find expired. What nobody reads again goes
//! away in the background: RocksDB's compaction filter, the heap backend's incremental
//! cleanup, and the snapshot writers, which leave expired rows out of checkpoints and
//! savepoints ([`rows`], one byte-level rule for all of them).
//!
//! A state's TTL is recorded in checkpoints and savepoints with it. A restore may change it:
//! see [`TtlChange`] for what happens to the rows.

mod clock;
mod config;
mod expiring;
mod handles;
pub mod rows;
mod stamped;

pub use clock::{TtlClock, TtlInstant};
pub use config::{StateTtlConfig, TtlTime, TtlUpdate, TtlVisibility};
pub use expiring::ExpiringState;
pub use handles::{
    TtlAggregatingState, TtlListState, TtlMapState, TtlReducingState, TtlValueState,
};
pub use rows::{RowExpiry, TtlChange};
pub use stamped::TtlValue;

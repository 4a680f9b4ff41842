//! The state processor: savepoints and checkpoints as data, offline, with no job running, as
//! Flink's State Processor API offers them. Savepoints and heap checkpoints are read from
//! their canonical data files directly; a RocksDB checkpoint's instances go through a
//! temporary backend into such files first.
//!
//! - **Read** ([`SnapshotFiles`]): open a snapshot on any storage, iterate any state of any
//!   operator as typed values per key group (`read_values`, `read_lists`, `read_maps`, ...,
//!   through the descriptor's migrations when the state was written at an older schema
//!   version), and its operator state.
//! - **Write** ([`SavepointBuilder`]): bootstrap a savepoint from typed iterators for a chosen
//!   max parallelism and instance count; its data files are byte for byte those a backend
//!   holding the same state writes.
//! - **Rewrite** ([`SavepointRewrite`]): a new savepoint from an old one (never in place):
//!   drop or rename a state or an operator, change an operator's instance count, change a
//!   state's rows with a function ([`typed`]); verified, or removed again on failure.
//! - **Compare** ([`diff`]): rows added, removed and changed per operator and state, states
//!   recorded differently, operator state that differs.
//!
//! Everything is written through the writer the backends' savepoints use
//! ([`crate::PendingSavepoint`]), so there is one canonical encoding.

mod bootstrap;
mod diff;
mod read;
mod rewrite;
mod source;

pub use bootstrap::SavepointBuilder;
pub use diff::{SnapshotDiff, StateDiff, diff};
pub use read::typed;
pub use rewrite::{RewriteReport, SavepointRewrite};
pub use source::{RowFn, SnapshotFiles};

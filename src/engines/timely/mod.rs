//! Keyed state, checkpoints and rescaling inside timely-dataflow (feature `timely`).
//!
//! Timely has no fault tolerance of its own; its epochs play the role of Flink's barriers.
//! A job built with this module:
//!
//! 1. starts with [`Job::start`] on every worker: worker 0 decides what the job restores
//!    (the root's latest restorable checkpoint, a savepoint, or nothing: never a leftover
//!    working directory, and never nothing for a root whose checkpoints are all damaged
//!    unless the settings say so) and every worker restores the key groups it owns at the
//!    worker count it now runs at;
//! 2. routes records to the worker that owns their key group ([`KeyGroupRouting`]) and
//!    processes them in a keyed operator ([`Job::stateful`], logic in [`KeyedLogic`]) that
//!    owns the worker's backend and timers, with epochs as event time; what it emits is sent
//!    at its record's epoch (or its timer's timestamp), so stateful operators chain;
//! 3. takes a checkpoint when the operators' input frontier passes a checkpoint epoch: the
//!    state at exactly that epoch, uploaded in the background, acknowledged to worker 0,
//!    whose committer ([`Job::commit`]) completes the checkpoint once every instance has
//!    acknowledged it — the frontier of its input says when;
//! 4. records in each checkpoint the epoch the source resumes from, as operator state
//!    ([`Job::resume_epoch`] after a restore), and the source's own position if it keeps one
//!    ([`Job::source_position`]: offsets, handed out per worker at a restore).
//!
//! Output written through [`Job::commit_with_sink`] (a [`TransactionalSink`]) is committed
//! exactly once: pre-committed at each barrier, committed when its checkpoint completes, on
//! every worker; such a job takes a final checkpoint when its input ends.
//!
//! Records reach the logic in arrival order by default; [`Job::stateful_with`] with
//! [`Delivery::EpochOrder`] (or [`Delivery::EpochOrderBy`]) hands them over in epoch order,
//! each epoch once complete, for logic that depends on the order of a key's records.
//!
//! Epochs are event time: a record's epoch is its event time, the input frontier is the
//! watermark, and no record is late (there is no allowed lateness); a source whose data is out
//! of order chooses the epochs, and when it advances past one, itself.
//!
//! `examples/timely_windows` is a complete job, run across processes.

mod ack;
mod committer;
mod job;
mod operator;
mod routing;
mod sink;
mod snapshots;
mod source;

pub use ack::{Ack, Target};
pub use committer::{CommitReport, EPOCH_KEY};
pub use job::{
    Checkpointing, Job, POSITION_STATE, ProcessingClock, RESUME_EPOCH_KEY, SkippedCheckpoint,
    StartFrom,
};
pub use operator::{Context, Delivery, KeyedLogic, TimeDomain};
pub use routing::KeyGroupRouting;
pub use sink::{SINK_STATE, TransactionId, TransactionalSink};
pub use snapshots::FINAL_CHECKPOINT_EPOCH;
pub use source::{Rescale, SOURCE_STATE, SourcePosition};

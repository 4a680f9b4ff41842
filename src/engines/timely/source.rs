//! [`SourcePosition`]: a source's own position (file offsets, partition offsets), snapshotted
//! in operator state with every checkpoint and savepoint, and handed back at restore.
//!
//! The resume epoch ([`Job::resume_epoch`]) is enough for a source that can replay any epoch
//! (a generator, a log indexed by epoch). A source that reads offsets does not map epochs to
//! offsets: it records, for each epoch, where it stands once every record of that epoch was
//! sent ([`SourcePosition::record`]). When a stateful operator instance takes a snapshot at
//! barrier `b`, it writes the newest position this worker's source recorded at an epoch at or
//! before `b` into its operator state ([`SOURCE_STATE`]); [`Job::source_position`] reads it
//! back from the snapshot the job restored, for this worker at the worker count it now runs.
//!
//! Since every worker's source records before it advances its input past an epoch, and an
//! instance snapshots `b` only once its input frontier has passed `b` (every worker's input
//! has), the position taken with checkpoint `b` is exactly the one after the records of epochs
//! up to `b`: the state of checkpoint `b` holds those records, and a restored source resumes
//! right after them. No record is lost or replayed twice.
//!
//! A position is a list of elements (one per partition or file, say), redistributed at a
//! restore at another worker count as [`Rescale`] says.
//!
//! A worker that has recorded nothing at or before a barrier (its source records from a later
//! epoch on) snapshots the position it restored, as it restored it. With [`Rescale::Union`]
//! that is every element of every old worker: a source should record at each epoch it sends
//! (from the resume epoch on), so that each worker snapshots only the elements it owns.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::engines::timely::job::Job;
use crate::model::error::{Error, Result};
use crate::model::state::StateValue;
use crate::model::state::operator::{OperatorState, OperatorStateEntry, OperatorStateMode};

/// The operator state in which every stateful operator instance keeps its worker's source
/// position ([`SourcePosition`]).
pub const SOURCE_STATE: &str = "statebackend.timely.source";

/// How a source position's elements are handed out when a job restores at another worker count
/// (at the same count, each worker gets back exactly the elements it recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rescale {
    /// Split list semantics: the elements of every old worker, concatenated in worker order,
    /// are split evenly over the new workers, a contiguous run each
    /// ([`OperatorState::list_state`]). A worker that gets no element owns no partition.
    #[default]
    Split,
    /// Union semantics: every new worker gets every element of every old worker and picks its
    /// own (e.g. partition `p` for worker `p % peers`); it records only those it owns.
    Union,
}

impl Rescale {
    fn mode(self) -> OperatorStateMode {
        match self {
            Self::Split => OperatorStateMode::SplitList,
            Self::Union => OperatorStateMode::UnionList,
        }
    }
}

/// What a worker's source recorded, shared by its job and its stateful operators.
#[derive(Default)]
pub(crate) struct PositionLog {
    /// The position recorded after each epoch (encoded), pruned as snapshots are taken.
    by_epoch: BTreeMap<u64, OperatorStateEntry>,
    /// The position restored, until the source records one.
    restored: Option<OperatorStateEntry>,
    /// The epoch of each stateful operator's newest snapshot on this worker (`None` before its
    /// first): positions older than every operator's needs are dropped.
    snapshotted: BTreeMap<String, Option<u64>>,
}

impl PositionLog {
    /// Registers stateful operator `operator` as a reader of the log.
    pub(crate) fn register(&mut self, operator: &str) {
        self.snapshotted.insert(operator.to_owned(), None);
    }

    /// The position at barrier `epoch`, for `operator`'s snapshot: the newest recorded at or
    /// before it, else the restored one; `None` if the source never recorded nor restored one.
    pub(crate) fn at_barrier(&mut self, operator: &str, epoch: u64) -> Option<OperatorStateEntry> {
        let found = self
            .by_epoch
            .range(..=epoch)
            .next_back()
            .map(|(_, entry)| entry.clone())
            .or_else(|| self.restored.clone());
        if let Some(slot) = self.snapshotted.get_mut(operator) {
            *slot = Some(slot.map_or(epoch, |s| s.max(epoch)));
        }
        // Every operator has snapshotted at `oldest` or later: the newest position at or
        // before it is the oldest any of them can ask for again.
        if let Some(oldest) = self
            .snapshotted
            .values()
            .copied()
            .collect::<Option<Vec<u64>>>()
            .and_then(|epochs| epochs.into_iter().min())
        {
            if let Some(keep) = self.by_epoch.range(..=oldest).next_back().map(|(e, _)| *e) {
                self.by_epoch = self.by_epoch.split_off(&keep);
            }
        }
        found
    }
}

/// A worker's handle on its source's position ([`Job::source_position`]): the position it
/// restored, and where it records its position after each epoch. Elements are `P` (e.g. a
/// `(partition, offset)` pair).
pub struct SourcePosition<P> {
    log: Rc<RefCell<PositionLog>>,
    restored: Vec<P>,
    rescale: Rescale,
    _types: PhantomData<P>,
}

impl<P: StateValue> SourcePosition<P> {
    /// The position this worker restored: its elements, as [`Rescale`] handed them out. Empty
    /// on a fresh start (the source then assigns itself its partitions, from offset 0), and
    /// for a worker that got no element.
    pub fn restored(&self) -> &[P] {
        &self.restored
    }

    /// Records this worker's position once every record of epochs up to `epoch` was sent
    /// (given to the input): what the source would resume from. Call it before advancing the
    /// input past `epoch` (`input.advance_to(epoch + 1)`); a checkpoint at barrier `b`
    /// snapshots the newest position recorded at or before `b`. Epochs the source records
    /// nothing for keep the position recorded before them.
    ///
    /// # Errors
    /// An element that does not encode.
    pub fn record(&self, epoch: u64, position: Vec<P>) -> Result<()> {
        let entry = encode(self.rescale, position)?;
        self.log.borrow_mut().by_epoch.insert(epoch, entry);
        Ok(())
    }
}

/// `position` as an operator state entry of `rescale`'s mode.
fn encode<P: StateValue>(rescale: Rescale, position: Vec<P>) -> Result<OperatorStateEntry> {
    let mut state = OperatorState::default();
    let list = match rescale {
        Rescale::Split => state.list_state::<P>(SOURCE_STATE)?,
        Rescale::Union => state.union_list_state::<P>(SOURCE_STATE)?,
    };
    list.update(&mut state, position)?;
    state
        .entries()
        .get(SOURCE_STATE)
        .cloned()
        .ok_or_else(|| Error::CheckpointState {
            id: 0,
            reason: "an encoded source position vanished".into(),
        })
}

impl Job {
    /// This worker's source position: the elements it restored (see [`Rescale`]) and the
    /// handle its source records its position with after each epoch, snapshotted with every
    /// checkpoint and savepoint by the job's stateful operators (every one of them keeps a
    /// copy in [`SOURCE_STATE`]; a job needs at least one). Call it once per worker, with the
    /// same `rescale` in every run of the job.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if the restored snapshot holds a position of another element
    /// type or another [`Rescale`]; decoding errors.
    pub fn source_position<P: StateValue>(&self, rescale: Rescale) -> Result<SourcePosition<P>> {
        let mut restored = Vec::new();
        let mut entry = None;
        if let Some(mut state) = self.restored_source_state()? {
            if let Some(found) = state.entries().get(SOURCE_STATE) {
                if found.mode != rescale.mode() {
                    return Err(Error::StateMismatch {
                        name: SOURCE_STATE.into(),
                        registered: format!("{:?}", found.mode),
                        requested: format!("{:?}", rescale.mode()),
                    });
                }
                let list = match rescale {
                    Rescale::Split => state.list_state::<P>(SOURCE_STATE)?,
                    Rescale::Union => state.union_list_state::<P>(SOURCE_STATE)?,
                };
                restored = list.get(&state)?;
                // Snapshotted again as restored until the source records: in union mode, the
                // elements this worker owns are those it records, so a snapshot taken before
                // that keeps them all (each worker's copy), which a restore unions again.
                entry = Some(encode(rescale, restored.clone())?);
            }
        }
        let log = self.position_log();
        log.borrow_mut().restored = entry;
        Ok(SourcePosition {
            log,
            restored,
            rescale,
            _types: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offset_of(entry: Option<OperatorStateEntry>) -> Vec<u64> {
        let mut state = OperatorState::default();
        if let Some(entry) = entry {
            state.insert_entry(SOURCE_STATE.into(), entry);
        }
        let list = state.list_state::<u64>(SOURCE_STATE).unwrap();
        list.get(&state).unwrap()
    }

    #[test]
    fn a_lagging_operator_still_finds_the_position_at_its_barrier() {
        let mut log = PositionLog::default();
        log.register("a");
        log.register("b");
        for epoch in 0..12 {
            log.by_epoch
                .insert(epoch, encode(Rescale::Split, vec![epoch * 10]).unwrap());
        }
        assert_eq!(offset_of(log.at_barrier("a", 7)), vec![70]);
        // Downstream, "b" lags: the positions it needs are kept until it has snapshotted.
        assert_eq!(offset_of(log.at_barrier("a", 11)), vec![110]);
        assert_eq!(offset_of(log.at_barrier("b", 3)), vec![30]);
        assert_eq!(offset_of(log.at_barrier("b", 7)), vec![70]);
        // Both have passed 7: what lies before it is dropped, 7 itself kept.
        assert_eq!(log.by_epoch.keys().next(), Some(&7));
        // Nothing recorded at or before a barrier, nothing restored: nothing to write.
        let mut empty = PositionLog::default();
        empty.register("a");
        assert!(empty.at_barrier("a", 5).is_none());
    }
}

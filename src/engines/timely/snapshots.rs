//! What every checkpointed operator of a timely job does at its barriers: [`Barriers`] says
//! which snapshots it takes at which epochs, [`Snapshots`] takes them (the synchronous part on
//! the worker, the upload on a thread of its own) and acknowledges each to the committer at its
//! epoch. The keyed operator ([`Job::stateful`]) and the exactly-once sink
//! ([`Job::commit_with_sink`]) share both, so they take the same barriers with the same ids.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::Instant;

use ::timely::dataflow::operators::Capability;
use ::timely::dataflow::operators::generic::OutputBuilder;

use crate::backends::any::AnyBackend;
use crate::backends::interface::CheckpointedBackend;
use crate::engines::timely::ack::{Ack, Target};
use crate::engines::timely::job::{Checkpointing, Job, POSITION_STATE, RESUME_EPOCH_KEY};
use crate::engines::timely::source::{PositionLog, SOURCE_STATE};
use crate::model::error::{Error, Result};
use crate::model::format::layout::metadata_path;
use crate::model::format::metadata::SnapshotMetadata;
use crate::storage::CheckpointStorage;

/// The epoch of the final checkpoint a job with an exactly-once sink takes when its input
/// ends ([`Job::commit_with_sink`]): after every epoch a source can send. A job restored from
/// it resumes at `u64::MAX`: its input has ended, there is nothing left to send.
pub const FINAL_CHECKPOINT_EPOCH: u64 = u64::MAX - 1;

/// The acknowledgement output of a checkpointed operator.
pub(crate) type AckOutput =
    OutputBuilder<u64, ::timely::container::CapacityContainerBuilder<Vec<Ack>>>;

/// The barriers of one run, in epoch order.
struct Barriers {
    interval: u64,
    next_checkpoint: Option<u64>,
    /// The id of the next checkpoint: the run's first id, then one more per checkpoint (every
    /// worker takes the same barriers, so all number them alike).
    next_id: u64,
    /// `(epoch, index)` of the savepoints still to write.
    savepoints: Vec<(u64, usize)>,
    /// Whether the job takes a final checkpoint when its input ends (it has an exactly-once
    /// sink): read when the input ends, once the whole dataflow is built.
    final_checkpoint: Rc<Cell<bool>>,
    /// Whether the input has ended.
    ended: bool,
}

impl Barriers {
    fn new(job: &Job) -> Self {
        let settings = job.settings();
        let from = job.resume_epoch();
        let interval = settings.interval;
        let next_checkpoint = (interval > 0)
            .then(|| (from / interval + 1).checked_mul(interval))
            .flatten()
            .map(|end| end - 1);
        let mut savepoints: Vec<(u64, usize)> = settings
            .savepoints
            .iter()
            .enumerate()
            .filter(|(_, (epoch, _))| *epoch >= from)
            .map(|(i, (epoch, _))| (*epoch, i))
            .collect();
        savepoints.sort_unstable();
        Self {
            interval,
            next_checkpoint,
            next_id: job.first_id(),
            savepoints,
            final_checkpoint: job.final_checkpoint_flag(),
            ended: false,
        }
    }

    /// The epoch of the next barrier.
    fn next(&self) -> Option<u64> {
        let savepoint = self.savepoints.first().map(|(e, _)| *e);
        match (self.next_checkpoint, savepoint) {
            (Some(c), Some(s)) => Some(c.min(s)),
            (c, s) => c.or(s),
        }
    }

    /// The epoch of the first barrier at or after `epoch`: the snapshot whose state holds a
    /// record of `epoch` (a checkpoint's or a savepoint's, or the final checkpoint).
    fn covering(&self, epoch: u64) -> u64 {
        let checkpoint = match self.next_checkpoint {
            Some(next) if self.interval > 0 && next < epoch => (epoch / self.interval + 1)
                .checked_mul(self.interval)
                .map_or(FINAL_CHECKPOINT_EPOCH, |end| end - 1),
            Some(next) => next,
            None => FINAL_CHECKPOINT_EPOCH,
        };
        let savepoint = self
            .savepoints
            .iter()
            .map(|(e, _)| *e)
            .find(|e| *e >= epoch)
            .unwrap_or(FINAL_CHECKPOINT_EPOCH);
        checkpoint.min(savepoint).min(FINAL_CHECKPOINT_EPOCH)
    }

    /// Removes and returns the snapshots at epoch `epoch` (the next barrier).
    fn take(&mut self, epoch: u64) -> Vec<Target> {
        let mut targets = Vec::new();
        if self.next_checkpoint == Some(epoch) {
            targets.push(Target::Checkpoint(self.next_id));
            self.next_id += 1;
            self.next_checkpoint = match epoch.checked_add(self.interval) {
                Some(next) if self.interval > 0 && next < FINAL_CHECKPOINT_EPOCH => Some(next),
                _ => None,
            };
        }
        while self.savepoints.first().is_some_and(|(e, _)| *e == epoch) {
            targets.push(Target::Savepoint(self.savepoints.remove(0).1));
        }
        targets
    }

    /// The input ended: no more periodic checkpoints; the savepoints still due are written
    /// now, and the final checkpoint after them if the job takes one.
    fn input_ended(&mut self) {
        if !self.ended {
            self.ended = true;
            self.next_checkpoint = self
                .final_checkpoint
                .get()
                .then_some(FINAL_CHECKPOINT_EPOCH);
        }
    }
}

/// One operator instance's snapshots: its barriers, the capability its acknowledgements are
/// sent under, the snapshots whose uploads run, and the checkpoints it uploaded without hearing
/// of their completion yet.
pub(crate) struct Snapshots {
    /// The operator's stable id.
    name: String,
    barriers: Barriers,
    /// Held at the next barrier; dropped when none is left.
    acks: Option<Capability<u64>>,
    /// Wakes the operator when an upload ends.
    activator: Option<Arc<::timely::scheduling::SyncActivator>>,
    settings: Arc<Checkpointing>,
    /// This worker's source position log, written into each snapshot.
    positions: Rc<RefCell<PositionLog>>,
    uploads: Vec<Upload>,
    /// Checkpoints this instance uploaded and has not heard completed, oldest first.
    unconfirmed: Vec<u64>,
}

impl Snapshots {
    /// The snapshots of operator `name` on this worker of `job`.
    pub(crate) fn new(job: &Job, name: &str) -> Self {
        let positions = job.position_log();
        positions.borrow_mut().register(name);
        Self {
            name: name.to_owned(),
            barriers: Barriers::new(job),
            acks: None,
            activator: None,
            settings: Arc::clone(job.settings()),
            positions,
            uploads: Vec::new(),
            unconfirmed: Vec::new(),
        }
    }

    /// Starts the operator's snapshots with its acknowledgement output's capability (held at
    /// the first barrier) and the activator that wakes it when an upload ends.
    pub(crate) fn start(
        &mut self,
        capability: Option<Capability<u64>>,
        activator: ::timely::scheduling::SyncActivator,
    ) {
        self.acks = capability;
        self.activator = Some(Arc::new(activator));
        self.hold_acks();
    }

    /// The epoch of the next barrier, if one is left.
    pub(crate) fn next_barrier(&self) -> Option<u64> {
        self.barriers.next()
    }

    /// The epoch of the barrier whose snapshot holds a record of `epoch`
    /// ([`Barriers::covering`]).
    pub(crate) fn covering(&self, epoch: u64) -> u64 {
        self.barriers.covering(epoch)
    }

    /// The next barrier the input frontier, whose first element is `first` (`None`: the input
    /// ended), has passed: the operator brings its state to that barrier, then calls
    /// [`Snapshots::take_at`].
    pub(crate) fn passed(&mut self, first: Option<u64>) -> Option<u64> {
        if first.is_none() {
            self.barriers.input_ended();
        }
        self.barriers
            .next()
            .filter(|barrier| first.is_none_or(|f| f > *barrier))
    }

    /// Takes every snapshot at `barrier` (the one [`Snapshots::passed`] returned) of
    /// `backend`.
    pub(crate) fn take_at(&mut self, backend: &mut AnyBackend, barrier: u64) {
        for target in self.barriers.take(barrier) {
            let (Some(acks), Some(activator)) = (self.acks.as_ref(), self.activator.as_ref())
            else {
                break;
            };
            let capability = acks.delayed(&barrier);
            let activator = Arc::clone(activator);
            self.take(backend, barrier, target, capability, activator);
        }
    }

    /// Holds the acknowledgement capability at the next barrier, or drops it when none is left:
    /// acknowledgements are sent at barriers only.
    pub(crate) fn hold_acks(&mut self) {
        match (self.barriers.next(), self.acks.as_mut()) {
            (Some(next), Some(cap)) => cap.downgrade(&next),
            _ => self.acks = None,
        }
    }

    /// Whether an upload still runs: the operator must stay alive to acknowledge it.
    pub(crate) fn uploading(&self) -> bool {
        !self.uploads.is_empty()
    }

    /// Takes snapshot `target` of `backend` at `epoch` and starts its upload on a thread of its
    /// own, which wakes the operator through `activator` when done; the acknowledgement is
    /// sent at `capability`'s time by [`Snapshots::finish_uploads`]. The synchronous part
    /// records the resume epoch and the source's position at `epoch`
    /// ([`PositionLog::at_barrier`]) and takes the backend's snapshot. A failure becomes a
    /// failed acknowledgement: the snapshot is aborted, the job goes on.
    fn take(
        &mut self,
        backend: &mut AnyBackend,
        epoch: u64,
        target: Target,
        capability: Capability<u64>,
        activator: Arc<::timely::scheduling::SyncActivator>,
    ) {
        let started = Instant::now();
        let work = self.synchronous_part(backend, epoch, target);
        let pending = Pending {
            capability,
            target,
            sync_micros: started.elapsed().as_micros() as u64,
            work,
        };
        self.uploads.push(pending.start(activator));
    }

    fn synchronous_part(
        &mut self,
        backend: &mut AnyBackend,
        epoch: u64,
        target: Target,
    ) -> Result<Work> {
        let operator = backend.operator_state_mut();
        let position = operator.broadcast_state::<String, u64>(POSITION_STATE)?;
        position.put(
            operator,
            RESUME_EPOCH_KEY.to_owned(),
            epoch.saturating_add(1),
        )?;
        // The source's own position after the records of epochs up to the barrier.
        if let Some(source) = self.positions.borrow_mut().at_barrier(&self.name, epoch) {
            operator.insert_entry(SOURCE_STATE.to_owned(), source);
        }
        match target {
            Target::Checkpoint(id) => {
                self.confirm_completed(backend);
                let pending = backend.snapshot(id)?;
                self.unconfirmed.push(id);
                Ok(Work::Checkpoint(
                    self.name.clone(),
                    Box::new(pending),
                    Arc::clone(&self.settings.root),
                ))
            }
            Target::Savepoint(index) => {
                let storage = Arc::clone(self.settings.savepoint_storage(index)?);
                Ok(Work::Savepoint(
                    self.name.clone(),
                    Box::new(backend.savepoint()?),
                    storage,
                ))
            }
        }
    }

    /// Tells the backend about the newest of its uploaded checkpoints that completed (its
    /// `_metadata` is in the root), so the next incremental checkpoint builds on it. Older
    /// unconfirmed ones are forgotten: completed or aborted, they are no base any more.
    fn confirm_completed(&mut self, backend: &mut AnyBackend) {
        let root = Arc::clone(&self.settings.root);
        for position in (0..self.unconfirmed.len()).rev() {
            let id = self.unconfirmed[position];
            let meta = match metadata_path(id)
                .and_then(|p| SnapshotMetadata::read(root.as_ref(), &p))
            {
                Ok(meta) => meta,
                Err(Error::MissingFile { .. }) => continue,
                Err(e) => {
                    tracing::warn!(checkpoint = id, error = %e, "cannot read a completed checkpoint");
                    return;
                }
            };
            let own = backend.instance_id();
            if let Some(part) = meta.instances.iter().find(|p| p.instance_id == own) {
                if let Err(e) = backend.notify_checkpoint_complete(part) {
                    panic!(
                        "operator {}: confirming a completed checkpoint: {e}",
                        self.name
                    );
                }
            }
            self.unconfirmed.drain(..=position);
            return;
        }
        // Aborted ones never complete; a few recent ones are enough to look at.
        let keep = self.unconfirmed.len().saturating_sub(4);
        self.unconfirmed.drain(..keep);
    }

    /// Sends the acknowledgement of every finished upload.
    pub(crate) fn finish_uploads(&mut self, acks: &mut AckOutput) {
        let mut output = acks.activate();
        self.uploads.retain(|upload| {
            let part = match upload.result.try_recv() {
                Ok(result) => result,
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => Err(Error::CheckpointState {
                    id: 0,
                    reason: "the upload thread ended without a result".into(),
                }),
            };
            let (part, bytes_uploaded) = match part {
                Ok((bytes, uploaded)) => (Ok(bytes), uploaded),
                Err(e) => (Err(e.to_string()), 0),
            };
            let ack = Ack {
                target: upload.target,
                epoch: *upload.capability.time(),
                part,
                sync_micros: upload.sync_micros,
                bytes_uploaded,
            };
            output.session(&upload.capability).give(ack);
            false
        });
    }
}

/// A snapshot whose upload runs on a thread of its own.
struct Upload {
    capability: Capability<u64>,
    target: Target,
    sync_micros: u64,
    result: Receiver<Result<(Vec<u8>, u64)>>,
}

/// What a snapshot's asynchronous part does, for the operator named first.
enum Work {
    Checkpoint(
        String,
        Box<crate::backends::interface::PendingSnapshot>,
        Arc<dyn CheckpointStorage>,
    ),
    Savepoint(
        String,
        Box<crate::backends::interface::PendingSavepoint>,
        Arc<dyn CheckpointStorage>,
    ),
}

/// A snapshot taken, its upload not started.
struct Pending {
    capability: Capability<u64>,
    target: Target,
    sync_micros: u64,
    work: Result<Work>,
}

impl Pending {
    /// Starts the upload on a thread of its own, which activates the operator when done.
    fn start(self, activator: Arc<::timely::scheduling::SyncActivator>) -> Upload {
        let (sender, result) = mpsc::channel();
        let work = self.work;
        std::thread::spawn(move || {
            // A panic in the upload becomes a failed part: the operator must be woken either
            // way, or it would hold the upload's capability forever.
            let upload = std::panic::AssertUnwindSafe(move || {
                work.and_then(|work| match work {
                    Work::Checkpoint(operator, pending, root) => {
                        let (mut part, stats) = pending.upload(root.as_ref())?;
                        part.operator = operator;
                        Ok((Ack::encode_part(part), stats.bytes_uploaded))
                    }
                    Work::Savepoint(operator, pending, storage) => {
                        let mut part = pending.write(storage.as_ref())?;
                        part.operator = operator;
                        let bytes = part.total_bytes();
                        Ok((Ack::encode_part(part), bytes))
                    }
                })
            });
            let outcome = std::panic::catch_unwind(upload).unwrap_or_else(|_| {
                Err(Error::CheckpointState {
                    id: 0,
                    reason: "the upload panicked".into(),
                })
            });
            // A receiver gone means the worker is shutting down: nobody waits.
            let _ = sender.send(outcome);
            let _ = activator.activate();
        });
        Upload {
            capability: self.capability,
            target: self.target,
            sync_micros: self.sync_micros,
            result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn barriers(interval: u64, next: Option<u64>, savepoints: Vec<(u64, usize)>) -> Barriers {
        Barriers {
            interval,
            next_checkpoint: next,
            next_id: 1,
            savepoints,
            final_checkpoint: Rc::new(Cell::new(true)),
            ended: false,
        }
    }

    #[test]
    fn a_record_is_covered_by_the_first_barrier_at_or_after_its_epoch() {
        let b = barriers(10, Some(9), vec![(14, 0)]);
        assert_eq!(b.covering(0), 9);
        assert_eq!(b.covering(9), 9);
        // Past the next checkpoint: the savepoint at 14, then the checkpoints at 19, 29.
        assert_eq!(b.covering(10), 14);
        assert_eq!(b.covering(15), 19);
        assert_eq!(b.covering(25), 29);
        // Beyond every epoch a checkpoint can have: the final checkpoint.
        assert_eq!(b.covering(u64::MAX), FINAL_CHECKPOINT_EPOCH);
        // No periodic checkpoints: the savepoints, then the final checkpoint.
        let none = barriers(0, None, vec![(14, 0)]);
        assert_eq!(none.covering(3), 14);
        assert_eq!(none.covering(15), FINAL_CHECKPOINT_EPOCH);
    }

    #[test]
    fn the_final_checkpoint_is_taken_once_after_the_savepoints_due() {
        let mut b = barriers(10, Some(19), vec![(50, 0)]);
        b.input_ended();
        assert_eq!(b.next(), Some(50));
        assert_eq!(b.take(50), vec![Target::Savepoint(0)]);
        assert_eq!(b.next(), Some(FINAL_CHECKPOINT_EPOCH));
        assert_eq!(b.take(FINAL_CHECKPOINT_EPOCH), vec![Target::Checkpoint(1)]);
        b.input_ended();
        assert_eq!(b.next(), None);
        // Without a sink, the input's end takes no checkpoint.
        let mut plain = barriers(10, Some(19), Vec::new());
        plain.final_checkpoint.set(false);
        plain.input_ended();
        assert_eq!(plain.next(), None);
    }
}

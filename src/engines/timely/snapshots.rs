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
pub(crate) struct Barriers {
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
}

impl Barriers {
    pub(crate) fn new(job: &Job) -> Self {
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
        }
    }

    /// The epoch of the next barrier.
    pub(crate) fn next(&self) -> Option<u64> {
        let savepoint = self.savepoints.first().map(|(e, _)| *e);
        match (self.next_checkpoint, savepoint) {
            (Some(c), Some(s)) => Some(c.min(s)),
            (c, s) => c.or(s),
        }
    }

    /// The epoch of the first barrier at or after `epoch`: the snapshot whose state holds a
    /// record of `epoch` (a checkpoint's or a savepoint's, or the final checkpoint).
    pub(crate) fn covering(&self, epoch: u64) -> u64 {
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
    pub(crate) fn take(&mut self, epoch: u64) -> Vec<Target> {
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
    pub(crate) fn input_ended(&mut self) {
        self.next_checkpoint = self
            .final_checkpoint
            .get()
            .then_some(FINAL_CHECKPOINT_EPOCH);
    }
}

/// One operator instance's snapshots: those it took whose uploads run, and the checkpoints it
/// uploaded without hearing of their completion yet.
pub(crate) struct Snapshots {
    /// The operator's stable id.
    name: String,
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
            settings: Arc::clone(job.settings()),
            positions,
            uploads: Vec::new(),
            unconfirmed: Vec::new(),
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
    pub(crate) fn take(
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

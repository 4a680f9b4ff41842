//! The committer: the one operator (on worker 0) that completes checkpoints and savepoints.
//!
//! Every stateful operator instance sends an [`Ack`] per snapshot at the snapshot's epoch and
//! holds a capability at that epoch until it has sent it. So the committer's input frontier
//! passes an epoch exactly when every instance of every operator has acknowledged its
//! snapshots at that epoch: the committer needs no count of instances, and a worker count that
//! changed between runs changes nothing here.
//!
//! Instances upload as soon as their own frontier passes a checkpoint's epoch, possibly
//! before the committer has heard of that checkpoint. A retention pass is harmless to such
//! uploads (it deletes only files that dropped checkpoints list), but a *sweep* (a listing of
//! the root that deletes every file no retained or in-flight checkpoint lists, which the
//! coordinator runs after an abort or a failed cleanup, when nothing is in flight) would take
//! them. So whenever a sweep is pending ([`CheckpointCoordinator::sweep_pending`]), the
//! committer keeps a checkpoint in flight: it begins `id + 1` before it completes or aborts
//! `id`, and before any abort. The sweep then waits for the next start. While a checkpoint is in
//! flight the coordinator keeps `shared/` whole, so after an abort the shared files only
//! dropped checkpoints used stay until that start too; in a run without aborts, retention
//! deletes them as checkpoints complete.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use ::timely::dataflow::StreamVec;
use ::timely::dataflow::channels::pact::Exchange;
use ::timely::dataflow::operators::Operator;

use crate::engines::timely::ack::{Ack, Target};
use crate::engines::timely::job::{Checkpointing, Job};
use crate::model::error::Result;
use crate::model::format::metadata::InstanceMetadata;
use crate::runtime::checkpoint::coordinator::CheckpointCoordinator;
use crate::runtime::savepoint::complete_savepoint_with;

/// The engine metadata key under which a completed snapshot records its epoch (8 bytes,
/// little-endian).
pub const EPOCH_KEY: &str = "timely.epoch";

/// What the committer did with one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitReport {
    /// The snapshot.
    pub target: Target,
    /// Its epoch.
    pub epoch: u64,
    /// Instances that acknowledged it.
    pub instances: usize,
    /// Bytes they uploaded.
    pub bytes_uploaded: u64,
    /// The longest synchronous part of an instance, in microseconds.
    pub max_sync_micros: u64,
    /// `Ok` once completed; why it was aborted otherwise.
    pub outcome: std::result::Result<(), String>,
}

/// A checkpoint the committer completed, as every worker's exactly-once sink hears of it
/// ([`Job::commit_with_sink`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Completed {
    /// The checkpoint's id.
    pub(crate) id: u64,
    /// Its epoch.
    pub(crate) epoch: u64,
}

impl Job {
    /// Builds the committer over `acks` (every stateful operator's acknowledgements, concatenated
    /// when there are several): on worker 0 it completes each snapshot once every instance has
    /// acknowledged it, and calls `on_commit` with the outcome; on the other workers it only
    /// forwards their acknowledgements to worker 0. Call it once per job, on every worker
    /// (or [`Job::commit_with_sink`] instead, for a job with an exactly-once sink).
    pub fn commit<'s>(
        &mut self,
        acks: StreamVec<'s, u64, Ack>,
        on_commit: impl FnMut(&CommitReport) + 'static,
    ) {
        let _completions = self.committer(acks, on_commit);
    }

    /// The committer of [`Job::commit`]; its output is every completed checkpoint, on worker 0,
    /// at the checkpoint's epoch.
    pub(crate) fn committer<'s>(
        &mut self,
        acks: StreamVec<'s, u64, Ack>,
        mut on_commit: impl FnMut(&CommitReport) + 'static,
    ) -> StreamVec<'s, u64, Completed> {
        let coordinator = self.take_coordinator();
        let mut committer = Committer {
            // The first id is begun already if a sweep was pending at start.
            begun_up_to: coordinator
                .as_ref()
                .map_or(0, |c| c.next_checkpoint_id() - 1),
            coordinator,
            settings: Arc::clone(self.settings()),
        };
        let mut received: BTreeMap<(u64, Target), Vec<Ack>> = BTreeMap::new();
        acks.unary_frontier(
            Exchange::new(|_: &Ack| 0),
            "Commit",
            move |capability, _| {
                // Held at or before every epoch still to complete: the earliest received,
                // or the input frontier.
                let mut capability = Some(capability);
                move |(input, frontier), output| {
                    input.for_each(|_, data| {
                        for ack in data.drain(..) {
                            received
                                .entry((ack.epoch, ack.target))
                                .or_default()
                                .push(ack);
                        }
                    });
                    while let Some(entry) = received.first_entry() {
                        if frontier.less_equal(&entry.key().0) {
                            break;
                        }
                        let ((epoch, target), acks) = entry.remove_entry();
                        let report = committer.commit(epoch, target, acks);
                        if let (Target::Checkpoint(id), Ok(()), Some(cap)) =
                            (target, &report.outcome, capability.as_ref())
                        {
                            output
                                .session(&cap.delayed(&epoch))
                                .give(Completed { id, epoch });
                        }
                        on_commit(&report);
                    }
                    let earliest = received
                        .keys()
                        .next()
                        .map(|(epoch, _)| *epoch)
                        .into_iter()
                        .chain(frontier.frontier().iter().copied())
                        .min();
                    match (earliest, capability.as_mut()) {
                        (Some(epoch), Some(cap)) => cap.downgrade(&epoch),
                        _ => capability = None,
                    }
                }
            },
        )
    }
}

/// Worker 0's completion state.
struct Committer {
    /// `None` on the other workers, which receive no acknowledgement.
    coordinator: Option<CheckpointCoordinator>,
    /// The highest checkpoint id begun.
    begun_up_to: u64,
    settings: Arc<Checkpointing>,
}

impl Committer {
    fn commit(&mut self, epoch: u64, target: Target, acks: Vec<Ack>) -> CommitReport {
        let mut report = CommitReport {
            target,
            epoch,
            instances: acks.len(),
            bytes_uploaded: acks.iter().map(|a| a.bytes_uploaded).sum(),
            max_sync_micros: acks.iter().map(|a| a.sync_micros).max().unwrap_or(0),
            outcome: Ok(()),
        };
        let parts: Result<Vec<InstanceMetadata>> = acks.iter().map(Ack::decode_part).collect();
        let engine = BTreeMap::from([(EPOCH_KEY.to_owned(), epoch.to_le_bytes().to_vec())]);
        let outcome = match target {
            Target::Checkpoint(id) => self.complete_checkpoint(id, parts, engine),
            Target::Savepoint(index) => {
                self.settings.savepoint_storage(index).and_then(|storage| {
                    parts
                        .and_then(|p| complete_savepoint_with(storage.as_ref(), p, engine))
                        .map(|_| ())
                })
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(epoch, ?target, error = %e, "snapshot not completed");
            report.outcome = Err(e.to_string());
        } else {
            tracing::info!(
                epoch,
                ?target,
                instances = report.instances,
                bytes_uploaded = report.bytes_uploaded,
                "snapshot completed"
            );
        }
        report
    }

    /// Completes checkpoint `id` with `parts`, or aborts it (see the module docs for the ids
    /// begun ahead).
    fn complete_checkpoint(
        &mut self,
        id: u64,
        parts: Result<Vec<InstanceMetadata>>,
        engine: BTreeMap<String, Vec<u8>>,
    ) -> Result<()> {
        let Some(coordinator) = self.coordinator.as_mut() else {
            return Err(crate::model::error::Error::CheckpointState {
                id,
                reason: "acknowledged to a worker that is not the committer".into(),
            });
        };
        let ahead = |coordinator: &mut CheckpointCoordinator, begun: &mut u64, upto: u64| {
            while *begun < upto {
                *begun += 1;
                coordinator.begin(*begun)?;
            }
            Ok::<(), crate::model::error::Error>(())
        };
        let sweep = coordinator.sweep_pending();
        ahead(
            coordinator,
            &mut self.begun_up_to,
            if sweep { id + 1 } else { id },
        )?;
        let completed =
            parts.and_then(|parts| coordinator.complete_with(id, parts, engine).map(|_| ()));
        if completed.is_err() {
            // An abort asks for a sweep: the next id goes in flight first.
            ahead(coordinator, &mut self.begun_up_to, id + 1)?;
            coordinator.abort(id)?;
        }
        completed
    }
}

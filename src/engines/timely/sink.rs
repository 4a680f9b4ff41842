//! [`Job::commit_with_sink`]: output written exactly once, by a two-phase commit tied to the
//! job's checkpoints, in the spirit of Flink's `TwoPhaseCommitSinkFunction`.
//!
//! On every worker, the sink writes what reaches it into *transactions* of its logic
//! ([`TransactionalSink`]): one per stretch of epochs between two barriers, begun when the
//! first item of the stretch arrives. When the sink's input frontier passes a barrier, the
//! transaction of the stretch ending there is **pre-committed** (made durable, not yet visible)
//! and recorded in the sink's operator state, which the barrier's snapshot holds. When a
//! checkpoint **completes**, the committer tells every worker's sink (through a feedback edge of
//! the dataflow, one epoch later), and each **commits** every pre-committed transaction up to
//! the checkpoint's epoch. A checkpoint that aborts commits nothing: its transactions are
//! committed with the next checkpoint that completes.
//!
//! After a crash, the job restores its latest completed checkpoint; the sink's instances commit
//! every transaction that checkpoint records as pre-committed (the crash may have come before
//! they did: commits must be idempotent) and abort those it records as begun, and the source
//! replays from the checkpoint's epoch into new transactions. Output of epochs after the
//! checkpoint was never committed, so nothing is written twice; output up to it was committed,
//! or is now, so nothing is lost. Transactions begun after the checkpoint and before the crash
//! are recorded nowhere: [`TransactionId::run`] tells a sink's leftovers of an earlier run
//! apart, for a sink that cleans them up.
//!
//! A savepoint barrier pre-commits too, and the savepoint records its transactions: a job
//! restored from the savepoint commits them. A savepoint's completion commits nothing (the job
//! may still be restored from an earlier checkpoint, which would replay that output): as in
//! Flink, only checkpoints commit. Restore from a savepoint a job that stopped at it (its source
//! went no further), or the output after the savepoint is written twice: once by the job that
//! went on, once by the restored one.
//!
//! A job with an exactly-once sink takes a **final checkpoint** when its input ends, at
//! [`FINAL_CHECKPOINT_EPOCH`], after every record and timer: its completion commits the last
//! transactions. A sink whose pre-committed transactions are still uncommitted when the
//! committer has finished (the final checkpoint aborted) fails the worker: restarted, the job
//! restores its latest checkpoint and commits them.

use std::collections::BTreeMap;

use ::timely::dataflow::StreamVec;
use ::timely::dataflow::channels::pact::Pipeline;
use ::timely::dataflow::operators::generic::OutputBuilder;
use ::timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use ::timely::dataflow::operators::vec::Broadcast;
use ::timely::dataflow::operators::{Concat, ConnectLoop, Feedback};
use ::timely::progress::Antichain;
use ::timely::progress::frontier::MutableAntichain;
use serde::{Deserialize, Serialize};

use crate::backends::any::AnyBackend;
use crate::backends::interface::CheckpointedBackend;
use crate::engines::timely::ack::Ack;
use crate::engines::timely::committer::{CommitReport, Completed};
use crate::engines::timely::job::Job;
use crate::engines::timely::snapshots::{FINAL_CHECKPOINT_EPOCH, Snapshots};
use crate::model::error::Result;
use crate::model::state::{BackendKind, StateValue};

/// The operator state in which an exactly-once sink's instance records its transactions
/// (split list: at a restore at another worker count, each is handed to one worker).
pub const SINK_STATE: &str = "statebackend.timely.sink";

/// The identity of one transaction: unique to its run, worker and barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransactionId {
    /// The run that began it ([`Job::run_id`]).
    pub run: u64,
    /// The worker that began it, in that run.
    pub worker: u32,
    /// The epoch of the barrier it was begun for: it holds the output of the epochs after the
    /// barrier before, up to this one. (When the input ends first, the final checkpoint
    /// pre-commits it.)
    pub barrier: u64,
}

impl std::fmt::Display for TransactionId {
    /// `<run, 16 hex digits>-<worker>-<barrier>`: usable as a file name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}-{}-{}", self.run, self.worker, self.barrier)
    }
}

/// The logic of an exactly-once sink ([`Job::commit_with_sink`]): transactions that can be
/// pre-committed (durable, invisible) and later committed (visible) or aborted.
///
/// Errors fail the worker, as a state error does: the job is restarted from its latest
/// checkpoint.
pub trait TransactionalSink: 'static {
    /// What the sink receives.
    type Item: Clone + 'static;
    /// What a snapshot records of a transaction, to commit or abort it after a restore (a file
    /// name, a broker's transaction id): the same logic, in another process, must be able to
    /// finish it from this alone.
    type Transaction: StateValue;

    /// Begins transaction `id`.
    ///
    /// # Errors
    /// Fails the worker.
    fn begin(&mut self, id: TransactionId) -> Result<Self::Transaction>;

    /// Writes `items` into `transaction`, invisibly.
    ///
    /// # Errors
    /// Fails the worker.
    fn write(&mut self, transaction: &mut Self::Transaction, items: Vec<Self::Item>) -> Result<()>;

    /// Makes `transaction` durable, so that a commit, possibly in another process after a
    /// crash, can make it visible. Nothing is written into it afterwards.
    ///
    /// # Errors
    /// Fails the worker (and so the snapshot).
    fn pre_commit(&mut self, transaction: &mut Self::Transaction) -> Result<()>;

    /// Makes a pre-committed transaction visible. Must be idempotent: after a restore, a
    /// transaction is committed again if the crash came after its commit and before the next
    /// checkpoint recorded it as done.
    ///
    /// # Errors
    /// Fails the worker.
    fn commit(&mut self, transaction: Self::Transaction) -> Result<()>;

    /// Discards a transaction that was begun and not pre-committed when the restored snapshot
    /// was taken. Must be idempotent, and accept a transaction the crashed run never wrote to.
    ///
    /// # Errors
    /// Fails the worker.
    fn abort(&mut self, transaction: Self::Transaction) -> Result<()>;
}

/// One transaction, as a snapshot records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded<T> {
    id: TransactionId,
    transaction: T,
    /// Pre-committed: a restore commits it. Otherwise begun: a restore aborts it.
    pre_committed: bool,
}

impl Job {
    /// Builds the job's committer (as [`Job::commit`]) together with an exactly-once sink,
    /// `sink`, over `output` (see the module docs): its transactions are pre-committed at each
    /// barrier, recorded in the snapshot, and committed on every worker when a checkpoint
    /// completes. The sink is a checkpointed operator named `name` (its state: its
    /// transactions, on the heap backend whatever the job's backend); its acknowledgements join
    /// `acks`. The job then takes a final checkpoint when its input ends. Call it once per job,
    /// on every worker, instead of [`Job::commit`]. A job with several outputs concatenates
    /// them into one sink.
    ///
    /// Restored, the sink commits and aborts the transactions its snapshot recorded before the
    /// dataflow runs; a snapshot taken before the job had the sink restores it empty.
    ///
    /// # Errors
    /// Restoring the sink's instance; the sink's errors committing or aborting restored
    /// transactions.
    pub fn commit_with_sink<'s, S: TransactionalSink>(
        &mut self,
        acks: StreamVec<'s, u64, Ack>,
        output: StreamVec<'s, u64, S::Item>,
        name: &str,
        sink: S,
        on_commit: impl FnMut(&CommitReport) + 'static,
    ) -> Result<()> {
        self.final_checkpoint_flag().set(true);
        let (loop_handle, completions) = acks.scope().feedback::<Vec<Completed>>(1);
        let sink_acks = self.transactional_sink(output, completions, name, sink)?;
        let completed = self.committer(acks.concat(sink_acks), on_commit);
        completed.broadcast().connect_loop(loop_handle);
        Ok(())
    }

    /// The sink operator: its input, the completions it hears of, its acknowledgements.
    fn transactional_sink<'s, S: TransactionalSink>(
        &self,
        output: StreamVec<'s, u64, S::Item>,
        completions: StreamVec<'s, u64, Completed>,
        name: &str,
        logic: S,
    ) -> Result<StreamVec<'s, u64, Ack>> {
        // A sink added to a job since its snapshot starts with no transactions.
        let backend = self.open_instance_as(name, BackendKind::Heap, true)?;
        let mut instance = SinkInstance {
            name: name.to_owned(),
            logic,
            backend,
            snapshots: Snapshots::new(self, name),
            run: self.run_id(),
            worker: u32::try_from(self.worker_index()).unwrap_or(u32::MAX),
            open: BTreeMap::new(),
            pre_committed: BTreeMap::new(),
        };
        instance.recover()?;

        let scope = output.scope();
        let mut builder = OperatorBuilder::new(format!("ExactlyOnceSink({name})"), scope);
        let address = builder.operator_info().address.to_vec();
        let activator = scope.worker().sync_activator_for(address);
        // The output first: the data input leads to acknowledgements, the completions do not
        // (they come back from the committer, which waits for those acknowledgements).
        let (ack_output, ack_stream) = builder.new_output();
        let mut ack_output = OutputBuilder::from(ack_output);
        let mut data = builder.new_input(output, Pipeline);
        let mut done = builder.new_input_connection(
            completions,
            Pipeline,
            Vec::<(usize, Antichain<u64>)>::new(),
        );
        builder.build_reschedule(move |mut capabilities| {
            instance.snapshots.start(capabilities.pop(), activator);
            move |frontiers: &[MutableAntichain<u64>]| {
                done.for_each(|_, completed| {
                    for c in completed.drain(..) {
                        instance.commit_up_to(c.epoch);
                    }
                });
                data.for_each(|capability, items| {
                    let epoch = capability.least().copied().unwrap_or(u64::MAX);
                    instance.write(epoch, std::mem::take(items));
                });
                let first = frontiers[0].frontier().first().copied();
                while let Some(barrier) = instance.snapshots.passed(first) {
                    instance.pre_commit(barrier);
                    instance.record();
                    instance.snapshots.take_at(&mut instance.backend, barrier);
                }
                instance.snapshots.hold_acks();
                instance.snapshots.finish_uploads(&mut ack_output);
                if frontiers[1].frontier().is_empty() && first.is_none() {
                    instance.check_all_committed();
                }
                instance.snapshots.uploading()
            }
        });
        Ok(ack_stream)
    }
}

/// One worker's sink between activations.
struct SinkInstance<S: TransactionalSink> {
    name: String,
    logic: S,
    /// Holds only the sink's operator state.
    backend: AnyBackend,
    snapshots: Snapshots,
    run: u64,
    worker: u32,
    /// Transactions begun, by the barrier that will pre-commit them.
    open: BTreeMap<u64, (TransactionId, S::Transaction)>,
    /// Transactions pre-committed and not yet committed, by the barrier they were begun for
    /// (a checkpoint completed at or after it commits them).
    pre_committed: BTreeMap<u64, (TransactionId, S::Transaction)>,
}

impl<S: TransactionalSink> SinkInstance<S> {
    fn fail(&self, what: &str, e: crate::model::error::Error) -> ! {
        panic!("exactly-once sink {}: {what}: {e}", self.name)
    }

    /// Commits the pre-committed transactions and aborts the begun ones that the restored
    /// snapshot recorded (none on a fresh start).
    fn recover(&mut self) -> Result<()> {
        let state = self.backend.operator_state_mut();
        let list = state.list_state::<Recorded<S::Transaction>>(SINK_STATE)?;
        let recorded = list.get(state)?;
        for r in recorded {
            if r.pre_committed {
                tracing::info!(sink = %self.name, transaction = %r.id, "committing a restored transaction");
                self.logic.commit(r.transaction)?;
            } else {
                tracing::info!(sink = %self.name, transaction = %r.id, "aborting a restored transaction");
                self.logic.abort(r.transaction)?;
            }
        }
        let state = self.backend.operator_state_mut();
        list.update(state, Vec::new())
    }

    /// Writes items of `epoch` into the transaction of the barrier that covers it.
    fn write(&mut self, epoch: u64, items: Vec<S::Item>) {
        let barrier = self.snapshots.covering(epoch);
        if !self.open.contains_key(&barrier) {
            let id = TransactionId {
                run: self.run,
                worker: self.worker,
                barrier,
            };
            match self.logic.begin(id) {
                Ok(transaction) => {
                    self.open.insert(barrier, (id, transaction));
                }
                Err(e) => self.fail("beginning a transaction", e),
            }
        }
        let Some((_, transaction)) = self.open.get_mut(&barrier) else {
            unreachable!("begun above");
        };
        if let Err(e) = self.logic.write(transaction, items) {
            self.fail("writing", e);
        }
    }

    /// Pre-commits the transactions of the stretches barrier `barrier` ends: its own, and when
    /// the input ended, those of barriers it will never reach (the final checkpoint, or a
    /// savepoint at input end, takes them).
    fn pre_commit(&mut self, barrier: u64) {
        let later = match barrier.checked_add(1) {
            Some(after) => self.open.split_off(&after),
            None => BTreeMap::new(),
        };
        let ended = std::mem::replace(&mut self.open, later);
        for (slot, (id, mut transaction)) in ended {
            if let Err(e) = self.logic.pre_commit(&mut transaction) {
                self.fail("pre-committing", e);
            }
            self.pre_committed.insert(slot, (id, transaction));
        }
    }

    /// Records every transaction in the operator state the next snapshot takes.
    fn record(&mut self) {
        let recorded: Vec<Recorded<S::Transaction>> = self
            .pre_committed
            .values()
            .map(|(id, t)| (id, t, true))
            .chain(self.open.values().map(|(id, t)| (id, t, false)))
            .map(|(id, transaction, pre_committed)| Recorded {
                id: *id,
                transaction: transaction.clone(),
                pre_committed,
            })
            .collect();
        let state = self.backend.operator_state_mut();
        let written = state
            .list_state::<Recorded<S::Transaction>>(SINK_STATE)
            .and_then(|list| list.update(state, recorded));
        if let Err(e) = written {
            self.fail("recording transactions", e);
        }
    }

    /// Commits every pre-committed transaction up to `epoch` (a completed checkpoint's).
    fn commit_up_to(&mut self, epoch: u64) {
        let later = match epoch.checked_add(1) {
            Some(after) => self.pre_committed.split_off(&after),
            None => BTreeMap::new(),
        };
        let due = std::mem::replace(&mut self.pre_committed, later);
        for (_, (id, transaction)) in due {
            if let Err(e) = self.logic.commit(transaction) {
                self.fail(&format!("committing transaction {id}"), e);
            }
        }
    }

    /// At the end: every pre-committed transaction must have been committed.
    fn check_all_committed(&self) {
        if let Some((id, _)) = self.pre_committed.values().next() {
            panic!(
                "exactly-once sink {}: {} transaction(s) pre-committed and never committed \
                 (first: {id}): the final checkpoint (epoch {FINAL_CHECKPOINT_EPOCH}) did not \
                 complete. Restart the job: it restores its latest checkpoint and commits them.",
                self.name,
                self.pre_committed.len()
            );
        }
    }
}

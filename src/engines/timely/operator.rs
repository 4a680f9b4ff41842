//! [`Job::stateful`]: a keyed, checkpointed timely operator.
//!
//! The operator owns this worker's backend instance, restored by [`Job::open_instance`], and a
//! [`TimerService`]. Its input is exchanged by key group ([`KeyGroupRouting`]), so every record
//! reaches the instance that holds its key's state; the logic gets the record with its
//! [`KeyContext`] (the key group computed once per record), the backend and the timers.
//!
//! Epochs are event time. When the input frontier passes epoch `t`, every record of `t` has
//! been processed and the event-time timers up to `t` fire. When it passes a barrier (a
//! checkpoint's or a savepoint's epoch), the instance holds exactly the state at that epoch:
//! records of later epochs that arrived early wait in a buffer until the barrier is taken, and
//! timers fire up to the barrier only. The synchronous part runs on the worker; the upload
//! runs on a thread of its own while the operator goes on, and its acknowledgement goes to the
//! committer ([`Job::commit`]) at the barrier's epoch.
//!
//! Records reach the logic as they arrive ([`Delivery::Arrival`]), or, with
//! [`Delivery::EpochOrder`] ([`Job::stateful_with`]), in epoch order: every record waits in the
//! same buffer until the frontier passes its epoch, and complete epochs are processed in order,
//! the event-time timers of the epochs before each fired first. A barrier processes the
//! complete epochs up to it before its snapshot, so a snapshot holds the same records in
//! either mode. Within an epoch, the order is the arrival order unless
//! [`Delivery::EpochOrderBy`] sorts it.
//!
//! Timers fire one at a time from the queue head: a timer a callback registers at or before the
//! current time fires in the same pass, one it deletes does not. Processing-time timers fire by
//! the job's clock ([`Checkpointing::clock`]) while the input runs, at the start of an
//! activation (the operator wakes itself when the next one is due), at the output capability's
//! epoch.
//!
//! Outputs are sent at the time of what produced them: a record's epoch, a timer's timestamp
//! (or the operator's output frontier, if a timer was registered at a time already passed). A
//! downstream stateful operator therefore folds an output into its checkpoint at barrier `b`
//! exactly when this operator's checkpoint at `b` holds the record: chained operators restore
//! to one consistent cut, and nothing is applied twice after a restore.
//!
//! When the input ends (the frontier becomes empty) no further checkpoint is taken; the
//! savepoints still due are taken then, each after every record held back up to its epoch has
//! been processed and every timer up to it has fired: a savepoint holds what its resume
//! epoch says.
//!
//! A state error fails the worker (the operator panics with it), as a failed task fails a
//! Flink job: the job is restarted and restores the latest checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::timely::ExchangeData;
use ::timely::dataflow::StreamVec;
use ::timely::dataflow::channels::pact::Exchange;
use ::timely::dataflow::operators::generic::OutputBuilder;
use ::timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use ::timely::progress::frontier::MutableAntichain;

use crate::backends::any::AnyBackend;
use crate::engines::timely::ack::Ack;
use crate::engines::timely::job::{Checkpointing, Job};
use crate::engines::timely::routing::KeyGroupRouting;
use crate::engines::timely::snapshots::Snapshots;
use crate::model::error::{Error, Result};
use crate::model::state::key::KeyContext;
use crate::model::state::{KeyedStateBackend, StateKey};
use crate::runtime::timers::{Timer, TimerService};

/// The logic of a keyed stateful operator ([`Job::stateful`]).
pub trait KeyedLogic: 'static {
    /// The records the operator receives.
    type Input: ExchangeData + Clone;
    /// The records it emits.
    type Output: Clone + 'static;
    /// The key records are routed and their state is kept by.
    type Key: StateKey;
    /// The namespace of its timers (a window, say).
    type Namespace: StateKey;

    /// The key of a record. A pure function of the record: it routes the record too.
    fn key(input: &Self::Input) -> Self::Key;

    /// Registers the operator's states on its instance, empty or restored.
    ///
    /// # Errors
    /// Registration errors; they fail the worker.
    fn open(&mut self, backend: &mut AnyBackend) -> Result<()>;

    /// Processes one record of epoch `context.epoch`, whose key is `key`. What it pushes to
    /// `output` is sent at that epoch.
    ///
    /// # Errors
    /// State errors; they fail the worker.
    fn on_record(
        &mut self,
        context: &mut Context<'_, Self::Key, Self::Namespace>,
        key: &KeyContext<Self::Key>,
        input: Self::Input,
        output: &mut Vec<Self::Output>,
    ) -> Result<()>;

    /// A timer fired, one at a time in timestamp order: timers this call registers at or
    /// before the current time fire after it in the same pass, and timers it deletes do not
    /// fire.
    ///
    /// An event-time timer (`context.domain` is [`TimeDomain::EventTime`]) fires when event
    /// time (`context.epoch`) reaches its timestamp; what it pushes to `output` is sent at that
    /// timestamp. A processing-time timer ([`TimeDomain::ProcessingTime`]) fires when the
    /// job's clock ([`Checkpointing::clock`]) reaches its timestamp, while the input runs;
    /// `context.epoch` is then the earliest epoch not yet complete, at which its outputs are
    /// sent.
    ///
    /// # Errors
    /// State errors; they fail the worker.
    fn on_timer(
        &mut self,
        context: &mut Context<'_, Self::Key, Self::Namespace>,
        timer: Timer<Self::Key, Self::Namespace>,
        output: &mut Vec<Self::Output>,
    ) -> Result<()>;
}

/// What the logic works with for one record or timer.
pub struct Context<'a, K, N> {
    /// The instance's backend: pass it to the state handles.
    pub backend: &'a mut AnyBackend,
    /// The instance's timers; timestamps are epochs.
    pub timers: &'a mut TimerService<K, N>,
    /// The record's epoch, or the event time a timer fired at (for a processing-time timer,
    /// the earliest epoch not yet complete).
    pub epoch: u64,
    /// The clock of the timer that fired; [`TimeDomain::EventTime`] for a record.
    pub domain: TimeDomain,
}

/// The clock a timer fires by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TimeDomain {
    /// Event time: the epochs.
    EventTime,
    /// Processing time: the job's clock ([`Checkpointing::clock`]).
    ProcessingTime,
}

/// The order in which a keyed operator hands records to its logic ([`Job::stateful_with`]).
///
/// Timely delivers records as they arrive: records of a later epoch may come before those of an
/// earlier one still open, and records of one epoch from several workers interleave in no
/// particular order. Logic whose result depends on the order of a key's records (sessions,
/// pattern matching, a running hash) then gives results that depend on the worker count and
/// on timing, and that may differ after a restore.
pub enum Delivery<I> {
    /// Each record as soon as it arrives (records past the next barrier wait for it): the
    /// lowest latency, no order guaranteed across epochs or within one. The default.
    Arrival,
    /// Records in epoch order: each epoch's records wait until the operator's input frontier
    /// passes the epoch (as differential dataflow does), then its records are handed over
    /// after the event-time timers of the epochs before it fired. Within one epoch, no order is
    /// guaranteed (arrival order): a key's result is deterministic if it gets at most one
    /// record per epoch, or if its logic does not depend on the order within an epoch.
    EpochOrder,
    /// As [`Delivery::EpochOrder`], each epoch's records sorted by this comparison first (a
    /// stable sort: records it finds equal stay in arrival order). With a total order over a
    /// key's records (e.g. by a sequence number or a value the source assigns), a key's records
    /// reach the logic in one order at any worker count and after any restore.
    EpochOrderBy(fn(&I, &I) -> std::cmp::Ordering),
}

impl<I> Delivery<I> {
    /// Whether records wait for their epoch to complete.
    fn ordered(&self) -> bool {
        !matches!(self, Self::Arrival)
    }
}

// By hand, as `Clone` and `Copy` below: a derive would ask the same of `I`.
#[allow(clippy::derivable_impls)]
impl<I> Default for Delivery<I> {
    fn default() -> Self {
        Self::Arrival
    }
}

impl<I> Clone for Delivery<I> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<I> Copy for Delivery<I> {}

impl<I> std::fmt::Debug for Delivery<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Arrival => write!(f, "Arrival"),
            Self::EpochOrder => write!(f, "EpochOrder"),
            Self::EpochOrderBy(_) => write!(f, "EpochOrderBy(..)"),
        }
    }
}

/// The operator's state between activations.
struct Instance<L: KeyedLogic> {
    name: String,
    logic: L,
    backend: AnyBackend,
    timers: TimerService<L::Key, L::Namespace>,
    settings: Arc<Checkpointing>,
    snapshots: Snapshots,
    /// The order records reach the logic in.
    delivery: Delivery<L::Input>,
    /// Records not processed yet, by epoch: those of epochs past the next barrier, and with
    /// an ordered [`Delivery`] every record until the frontier passes its epoch.
    early: BTreeMap<u64, Vec<L::Input>>,
    /// Outputs not yet sent, by the time they are sent at: their record's epoch or their
    /// timer's timestamp.
    outputs: BTreeMap<u64, Vec<L::Output>>,
    /// Where the logic writes one record's or timer's outputs.
    scratch: Vec<L::Output>,
}

impl Job {
    /// Builds a keyed stateful operator over `input` (see the module docs): `operator` is its
    /// stable id (its state's name in every snapshot), `logic` what it does. Returns its output
    /// and its acknowledgements, which go to [`Job::commit`].
    ///
    /// # Errors
    /// Restoring or opening this worker's instance; [`KeyedLogic::open`]'s errors.
    pub fn stateful<'s, L: KeyedLogic>(
        &self,
        input: StreamVec<'s, u64, L::Input>,
        operator: &str,
        logic: L,
    ) -> Result<(StreamVec<'s, u64, L::Output>, StreamVec<'s, u64, Ack>)> {
        self.stateful_with(input, operator, logic, Delivery::Arrival)
    }

    /// [`Job::stateful`], handing records to the logic in the order `delivery` says:
    /// [`Delivery::EpochOrder`] (or [`Delivery::EpochOrderBy`], sorted within each epoch) for
    /// logic that depends on the order of a key's records, so its result is the same at any
    /// worker count and after any restore.
    ///
    /// # Errors
    /// As [`Job::stateful`].
    pub fn stateful_with<'s, L: KeyedLogic>(
        &self,
        input: StreamVec<'s, u64, L::Input>,
        operator: &str,
        mut logic: L,
        delivery: Delivery<L::Input>,
    ) -> Result<(StreamVec<'s, u64, L::Output>, StreamVec<'s, u64, Ack>)> {
        let mut backend = self.open_instance(operator)?;
        logic.open(&mut backend)?;
        let timers = TimerService::new(&mut backend, operator)?;
        let mut instance = Instance {
            name: operator.to_owned(),
            logic,
            backend,
            timers,
            settings: Arc::clone(self.settings()),
            snapshots: Snapshots::new(self, operator),
            delivery,
            early: BTreeMap::new(),
            outputs: BTreeMap::new(),
            scratch: Vec::new(),
        };

        let scope = input.scope();
        let routing: KeyGroupRouting = self.routing();
        let mut builder = OperatorBuilder::new(format!("Stateful({operator})"), scope);
        let address = builder.operator_info().address.to_vec();
        // Woken by an upload's thread; and after a delay, when a processing-time timer is due.
        let alarm = scope.activator_for(std::rc::Rc::from(address.clone()));
        let activator = scope.worker().sync_activator_for(address);
        let route = move |record: &L::Input| match routing.worker_of(&L::key(record)) {
            Ok(worker) => worker,
            Err(e) => panic!("a record's key cannot be routed: {e}"),
        };
        let mut records = builder.new_input(input, Exchange::new(route));
        let (data_output, data_stream) = builder.new_output();
        let (ack_output, ack_stream) = builder.new_output();
        let mut data_output = OutputBuilder::from(data_output);
        let mut ack_output = OutputBuilder::from(ack_output);

        builder.build_reschedule(move |mut capabilities| {
            instance.snapshots.start(capabilities.pop(), activator);
            let mut data_capability = capabilities.pop();
            move |frontiers: &[MutableAntichain<u64>]| {
                let frontier = frontiers[0].frontier();
                let first = frontier.first().copied();
                // Processing-time timers fire while the input runs, before this activation's
                // records and barriers, at the output capability's epoch.
                if let (Some(_), Some(cap)) = (first, data_capability.as_ref()) {
                    instance.fire_processing_timers(*cap.time());
                }
                records.for_each(|capability, data| {
                    // One time per message from an input handle; a message under several
                    // times counts at the earliest, one under none at the frontier.
                    let epoch = capability.least().copied().or(first).unwrap_or(u64::MAX);
                    let ordered = instance.delivery.ordered();
                    for record in data.drain(..) {
                        if ordered || instance.snapshots.next_barrier().is_some_and(|b| epoch > b) {
                            instance.early.entry(epoch).or_default().push(record);
                        } else {
                            instance.process(epoch, record);
                        }
                    }
                });
                // Every barrier the frontier passed, in order.
                while let Some(barrier) = instance.snapshots.passed(first) {
                    if first.is_none() || instance.delivery.ordered() {
                        // The input ended: records held back for a checkpoint barrier it
                        // dropped belong to the state at this barrier, every epoch is
                        // complete, and timers fire between the epochs. In epoch order, every
                        // epoch up to the barrier is complete too.
                        instance.process_complete_early(barrier);
                    }
                    instance.fire_timers(barrier);
                    instance.snapshots.take_at(&mut instance.backend, barrier);
                    if !instance.delivery.ordered() {
                        instance.process_early();
                    }
                }
                if let (Some(f), true) = (first, instance.delivery.ordered()) {
                    // In epoch order: every epoch before the frontier is complete (and before
                    // the next barrier, which the frontier has not passed).
                    if let Some(complete) = f.checked_sub(1) {
                        instance.process_complete_early(complete);
                    }
                }
                if first.is_none() {
                    // The input ended with records past a barrier still held back (the frontier
                    // jumped to empty): no barrier is left to wait for.
                    instance.process_complete_early(u64::MAX);
                }
                instance.snapshots.hold_acks();
                // Event time: every epoch before the frontier is complete; at the end of the
                // input, every timer fires.
                let watermark = match first {
                    Some(0) => None,
                    Some(f) => Some(f - 1),
                    None => Some(u64::MAX),
                };
                if let Some(w) = watermark {
                    instance.fire_timers(w);
                }
                // Each output at its record's epoch or its timer's timestamp (never before the
                // capability's time, where a timer registered in the past fires): a downstream
                // operator folds it into its checkpoints exactly where this one folds the
                // record, so state and outputs agree at every barrier.
                let outputs = std::mem::take(&mut instance.outputs);
                if let Some(cap) = data_capability.as_ref() {
                    let mut output = data_output.activate();
                    for (time, mut data) in outputs {
                        let time = time.max(*cap.time());
                        output
                            .session(&cap.delayed(&time))
                            .give_container(&mut data);
                    }
                }
                instance.snapshots.finish_uploads(&mut ack_output);
                match (first, data_capability.as_mut()) {
                    (Some(f), Some(cap)) => cap.downgrade(&f),
                    _ => data_capability = None,
                }
                if first.is_some() {
                    if let Some(wait) = instance.next_processing_timer() {
                        alarm.activate_after(wait);
                    }
                }
                // Incomplete while an upload runs: the operator stays alive to acknowledge it.
                instance.snapshots.uploading()
            }
        });
        Ok((data_stream, ack_stream))
    }
}

impl<L: KeyedLogic> Instance<L> {
    fn fail(&self, what: &str, e: Error) -> ! {
        panic!("stateful operator {}: {what}: {e}", self.name)
    }

    fn process(&mut self, epoch: u64, record: L::Input) {
        let mut out = std::mem::take(&mut self.scratch);
        let result = self.backend.key_context(L::key(&record)).and_then(|key| {
            let mut context = Context {
                backend: &mut self.backend,
                timers: &mut self.timers,
                epoch,
                domain: TimeDomain::EventTime,
            };
            self.logic.on_record(&mut context, &key, record, &mut out)
        });
        if let Err(e) = result {
            self.fail("processing a record", e);
        }
        self.emit_at(epoch, out);
    }

    /// Queues `out` to be sent at `time`, and keeps its buffer as the next scratch space.
    fn emit_at(&mut self, time: u64, mut out: Vec<L::Output>) {
        if !out.is_empty() {
            let queued = self.outputs.entry(time).or_default();
            if queued.is_empty() {
                std::mem::swap(queued, &mut out);
            } else {
                queued.append(&mut out);
            }
        }
        self.scratch = out;
    }

    /// Processes the early records the last barrier held back, up to the next barrier.
    fn process_early(&mut self) {
        let limit = self.snapshots.next_barrier().unwrap_or(u64::MAX);
        while let Some(entry) = self.early.first_entry() {
            if *entry.key() > limit {
                break;
            }
            let (epoch, records) = entry.remove_entry();
            for record in records {
                self.process(epoch, record);
            }
        }
    }

    /// Processes the early records up to `limit` once the input ended: every epoch is complete,
    /// so before the records of each epoch the timers of the epochs before it fire, as they
    /// would have had the frontier passed them one by one.
    fn process_complete_early(&mut self, limit: u64) {
        while let Some(entry) = self.early.first_entry() {
            if *entry.key() > limit {
                break;
            }
            let (epoch, mut records) = entry.remove_entry();
            if let Some(before) = epoch.checked_sub(1) {
                self.fire_timers(before);
            }
            if let Delivery::EpochOrderBy(compare) = self.delivery {
                records.sort_by(compare);
            }
            for record in records {
                self.process(epoch, record);
            }
        }
    }

    /// Fires every event-time timer up to `epoch`, one at a time from the queue head.
    fn fire_timers(&mut self, epoch: u64) {
        let watermark = i64::try_from(epoch).unwrap_or(i64::MAX);
        self.timers.advance_watermark_to(watermark);
        // Event-time TTL ages on the same watermark: a state with `TtlTime::EventTime` and a
        // TTL of `n` keeps a row written at epoch `e` until the frontier passes `e + n`.
        self.backend.ttl_clock().advance_watermark(epoch);
        loop {
            let timer = match self.timers.next_due_event_time(&mut self.backend) {
                Ok(Some(timer)) => timer,
                Ok(None) => return,
                Err(e) => self.fail("firing timers", e),
            };
            let at = u64::try_from(timer.timestamp).unwrap_or(0);
            self.on_timer(timer, at, TimeDomain::EventTime);
        }
    }

    /// Fires every processing-time timer up to the job's clock now, one at a time, at epoch
    /// `at` (the output capability's: every barrier before it is taken, every one from it on is
    /// still to come, so the state a timer changes and the outputs it sends fall on the same
    /// side of each barrier).
    fn fire_processing_timers(&mut self, at: u64) {
        let now = self.settings.clock.now();
        // Processing-time TTL reads the job's clock too, as of this activation: a job run on a
        // clock of its own (tests, replays) expires state by that clock.
        self.backend
            .ttl_clock()
            .set_processing_time(u64::try_from(now).unwrap_or(0));
        self.timers.advance_processing_time_to(now);
        loop {
            let timer = match self.timers.next_due_processing_time(&mut self.backend) {
                Ok(Some(timer)) => timer,
                Ok(None) => return,
                Err(e) => self.fail("firing processing-time timers", e),
            };
            self.on_timer(timer, at, TimeDomain::ProcessingTime);
        }
    }

    /// Runs the logic for one fired timer, its outputs sent at `at`.
    fn on_timer(&mut self, timer: Timer<L::Key, L::Namespace>, at: u64, domain: TimeDomain) {
        let mut out = std::mem::take(&mut self.scratch);
        let mut context = Context {
            backend: &mut self.backend,
            timers: &mut self.timers,
            epoch: at,
            domain,
        };
        if let Err(e) = self.logic.on_timer(&mut context, timer, &mut out) {
            self.fail("firing a timer", e);
        }
        self.emit_at(at, out);
    }

    /// How long until the next processing-time timer is due, if one is pending.
    fn next_processing_timer(&self) -> Option<Duration> {
        let next = self.timers.next_processing_time()?;
        let wait = next.saturating_sub(self.settings.clock.now());
        Some(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))
    }
}

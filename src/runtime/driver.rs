//! [`CheckpointDriver`]: the checkpoint protocol in one call per barrier.
//!
//! Without it an engine runs the protocol by hand: begin, snapshot each instance, spawn the
//! uploads, complete, notify each instance with its own part, abort on failure. The driver
//! does all of it. [`CheckpointDriver::trigger`] is the call at the barrier: it takes every
//! instance's synchronous part and hands the uploads to a bounded pool of threads, so the
//! engine goes on processing. [`CheckpointDriver::poll`] (or the blocking
//! [`CheckpointDriver::finish`]) completes the checkpoint once every upload is done and
//! notifies each instance by its identity, never by position. A failed or timed-out upload
//! aborts the checkpoint: no instance is notified, so the previous completed checkpoint stays
//! the base of the next one. Each completed checkpoint yields a [`CheckpointReport`], figures an
//! engine can export as metrics; the driver also logs through `tracing`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backends::interface::{CheckpointedBackend, PendingSnapshot, UploadStats};
use crate::model::error::{Error, Result};
use crate::model::format::metadata::{InstanceMetadata, SnapshotMetadata};
use crate::runtime::checkpoint::coordinator::CheckpointCoordinator;
use crate::runtime::checkpoint::local_recovery::LocalRecovery;
use crate::storage::CheckpointStorage;

/// How the driver runs uploads.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Upload threads per checkpoint, at most: instances beyond it wait for a free thread.
    pub upload_threads: usize,
    /// How long the uploads of one checkpoint may take, from the trigger; `None` waits for
    /// as long as they take. A checkpoint past it is aborted.
    pub upload_timeout: Option<Duration>,
    /// Threads taking the instances' synchronous parts at the barrier, at most: several
    /// RocksDB instances flush at once instead of one after another. 1 takes them on the
    /// calling thread.
    pub snapshot_threads: usize,
    /// Keep a local copy of each instance's last completed checkpoint here, for restores on
    /// this machine that download only what it lacks ([`LocalRecovery`]); `None` keeps none.
    pub local_recovery: Option<LocalRecovery>,
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            upload_threads: 4,
            upload_timeout: None,
            snapshot_threads: 4,
            local_recovery: None,
        }
    }
}

/// What one completed checkpoint cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    /// The checkpoint id.
    pub id: u64,
    /// Instances in the checkpoint.
    pub instances: usize,
    /// Files and bytes uploaded and reused, summed over the instances.
    pub stats: UploadStats,
    /// How long the synchronous parts held the engine (all instances).
    pub sync_pause: Duration,
    /// From the end of the synchronous parts to the last upload's end.
    pub upload_time: Duration,
}

/// The instances of one operator of a job: its stable id and its backends.
pub struct OperatorInstances<'a, B> {
    /// The operator's id, recorded with each instance's part (empty for a single-operator job).
    pub id: &'a str,
    /// Its instances.
    pub instances: &'a mut [B],
}

impl<'a, B> OperatorInstances<'a, B> {
    /// The instances of a single-operator job (id empty).
    pub fn single(instances: &'a mut [B]) -> Self {
        Self { id: "", instances }
    }
}

/// Runs checkpoints of a job's instances into one coordinator's root (see the module docs).
pub struct CheckpointDriver {
    coordinator: CheckpointCoordinator,
    options: DriverOptions,
    in_flight: Option<InFlight>,
}

/// One triggered checkpoint whose uploads have not all reported.
struct InFlight {
    id: u64,
    sync_pause: Duration,
    uploads_started: Instant,
    deadline: Option<Instant>,
    results: Receiver<UploadResult>,
    parts: Vec<Option<(InstanceMetadata, UploadStats)>>,
    /// When the last upload that reported so far ended (on its upload thread).
    last_upload_end: Option<Instant>,
    missing: usize,
    /// Per part: its operator's id.
    operator_of: Vec<String>,
    engine: BTreeMap<String, Vec<u8>>,
}

impl CheckpointDriver {
    /// A driver over `coordinator`'s root.
    pub fn new(coordinator: CheckpointCoordinator, options: DriverOptions) -> Self {
        Self {
            coordinator,
            options,
            in_flight: None,
        }
    }

    /// The coordinator: its completed checkpoints, `latest_verified`, restores.
    pub fn coordinator(&self) -> &CheckpointCoordinator {
        &self.coordinator
    }

    /// The coordinator, to restore through it (`prepare_restore`, `restore_instance`).
    pub fn coordinator_mut(&mut self) -> &mut CheckpointCoordinator {
        &mut self.coordinator
    }

    /// The id of the checkpoint in flight, if any.
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|f| f.id)
    }

    /// The call at the barrier: begins the next checkpoint, takes the synchronous part of
    /// every instance in `backends` (the job's instances, in any order; up to
    /// [`DriverOptions::snapshot_threads`] at once), and starts their
    /// uploads on at most [`DriverOptions::upload_threads`] threads. Returns the checkpoint's
    /// id; the backends can be used again at once.
    ///
    /// # Errors
    /// [`Error::CheckpointState`] if a checkpoint is still in flight (finish it first) or
    /// `backends` is empty; the error of a synchronous part (the first instance's, in order,
    /// that failed), after which the checkpoint is aborted.
    pub fn trigger<B: CheckpointedBackend + Send>(&mut self, backends: &mut [B]) -> Result<u64> {
        self.trigger_with(backends, BTreeMap::new())
    }

    /// [`CheckpointDriver::trigger`], keeping `engine` (the engine's metadata at this barrier:
    /// job id, watermarks, source positions that are not operator state) in the checkpoint;
    /// a restore reads it back as [`SnapshotMetadata::engine`].
    ///
    /// # Errors
    /// As [`CheckpointDriver::trigger`].
    pub fn trigger_with<B: CheckpointedBackend + Send>(
        &mut self,
        backends: &mut [B],
        engine: BTreeMap<String, Vec<u8>>,
    ) -> Result<u64> {
        self.trigger_job(&mut [OperatorInstances::single(backends)], engine)
    }

    /// The call at the barrier for a job of several operators: every instance of every
    /// operator in one checkpoint, each instance's part recorded under its operator's id
    /// ([`InstanceMetadata::operator`]); the instances of each operator partition that
    /// operator's key groups, with its own parallelism and max parallelism. `engine` as for
    /// [`CheckpointDriver::trigger_with`].
    ///
    /// # Errors
    /// As [`CheckpointDriver::trigger`].
    pub fn trigger_job<B: CheckpointedBackend + Send>(
        &mut self,
        operators: &mut [OperatorInstances<'_, B>],
        engine: BTreeMap<String, Vec<u8>>,
    ) -> Result<u64> {
        let id = self.coordinator.next_checkpoint_id();
        let count: usize = operators.iter().map(|o| o.instances.len()).sum();
        if let Some(flight) = &self.in_flight {
            return Err(Error::CheckpointState {
                id,
                reason: format!("checkpoint {} is still in flight", flight.id),
            });
        }
        if count == 0 {
            return Err(Error::CheckpointState {
                id,
                reason: "a checkpoint needs at least one instance".into(),
            });
        }
        self.coordinator.begin(id)?;
        let started = Instant::now();
        let mut operator_of = Vec::with_capacity(count);
        for operator in operators.iter() {
            operator_of.extend(operator.instances.iter().map(|_| operator.id.to_owned()));
        }
        let mut pending = VecDeque::with_capacity(count);
        for (index, snapshot) in snapshot_all(operators, id, self.options.snapshot_threads)
            .into_iter()
            .enumerate()
        {
            match snapshot {
                Ok(snapshot) => pending.push_back((index, snapshot)),
                Err(e) => {
                    // Every synchronous part has run; the others' snapshots are dropped.
                    self.abort(id, &e);
                    return Err(e);
                }
            }
        }
        let sync_pause = started.elapsed();
        let uploads_started = Instant::now();
        let storage: Arc<dyn CheckpointStorage> = match &self.options.local_recovery {
            Some(local) => Arc::new(local.keeping(self.coordinator.storage())),
            None => Arc::clone(self.coordinator.storage()),
        };
        let results = spawn_uploads(pending, storage, self.options.upload_threads);
        tracing::debug!(
            checkpoint = id,
            instances = count,
            sync_pause_us = sync_pause.as_micros() as u64,
            "checkpoint triggered"
        );
        self.in_flight = Some(InFlight {
            id,
            sync_pause,
            uploads_started,
            deadline: self.options.upload_timeout.map(|t| started + t),
            results,
            parts: (0..count).map(|_| None).collect(),
            last_upload_end: None,
            missing: count,
            operator_of,
            engine,
        });
        Ok(id)
    }

    /// Completes the checkpoint in flight if every upload has reported, without waiting:
    /// `Ok(None)` while uploads run (or nothing is in flight), `Ok(Some(report))` once it
    /// completed and every instance in `backends` was notified with its own part.
    ///
    /// # Errors
    /// The first failed upload, a passed [`DriverOptions::upload_timeout`], or a completion
    /// error: the checkpoint is aborted and no instance notified. [`Error::ForeignInstance`]
    /// if a part belongs to no instance in `backends` (after completion: the checkpoint
    /// exists).
    pub fn poll<B: CheckpointedBackend>(
        &mut self,
        backends: &mut [B],
    ) -> Result<Option<CheckpointReport>> {
        self.progress(&mut [OperatorInstances::single(backends)], false)
    }

    /// [`CheckpointDriver::poll`] for a checkpoint triggered with
    /// [`CheckpointDriver::trigger_job`].
    ///
    /// # Errors
    /// As [`CheckpointDriver::poll`].
    pub fn poll_job<B: CheckpointedBackend>(
        &mut self,
        operators: &mut [OperatorInstances<'_, B>],
    ) -> Result<Option<CheckpointReport>> {
        self.progress(operators, false)
    }

    /// [`CheckpointDriver::finish`] for a checkpoint triggered with
    /// [`CheckpointDriver::trigger_job`].
    ///
    /// # Errors
    /// As [`CheckpointDriver::finish`].
    pub fn finish_job<B: CheckpointedBackend>(
        &mut self,
        operators: &mut [OperatorInstances<'_, B>],
    ) -> Result<CheckpointReport> {
        match self.progress(operators, true)? {
            Some(report) => Ok(report),
            None => Err(Error::CheckpointState {
                id: self.coordinator.next_checkpoint_id(),
                reason: "no checkpoint is in flight".into(),
            }),
        }
    }

    /// Waits for the checkpoint in flight and completes it, as [`CheckpointDriver::poll`].
    ///
    /// # Errors
    /// As [`CheckpointDriver::poll`]; [`Error::CheckpointState`] if nothing is in flight.
    pub fn finish<B: CheckpointedBackend>(
        &mut self,
        backends: &mut [B],
    ) -> Result<CheckpointReport> {
        self.finish_job(&mut [OperatorInstances::single(backends)])
    }

    /// [`CheckpointDriver::trigger`] then [`CheckpointDriver::finish`].
    ///
    /// # Errors
    /// As those two.
    pub fn checkpoint<B: CheckpointedBackend + Send>(
        &mut self,
        backends: &mut [B],
    ) -> Result<CheckpointReport> {
        self.trigger(backends)?;
        self.finish(backends)
    }

    fn progress<B: CheckpointedBackend>(
        &mut self,
        operators: &mut [OperatorInstances<'_, B>],
        block: bool,
    ) -> Result<Option<CheckpointReport>> {
        let Some(mut flight) = self.in_flight.take() else {
            return Ok(None);
        };
        while flight.missing > 0 {
            let received = match (block, flight.deadline) {
                (false, deadline) => match flight.results.try_recv() {
                    Ok(result) => Some(result),
                    Err(mpsc::TryRecvError::Empty) => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            None
                        } else {
                            self.in_flight = Some(flight);
                            return Ok(None);
                        }
                    }
                    Err(mpsc::TryRecvError::Disconnected) => None,
                },
                (true, Some(deadline)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // Timed out or every upload thread gone: either way no result comes.
                    flight.results.recv_timeout(left).ok()
                }
                (true, None) => flight.results.recv().ok(),
            };
            let Some((index, result, ended)) = received else {
                let error = Error::CheckpointState {
                    id: flight.id,
                    reason: match self.options.upload_timeout {
                        Some(t) => format!("its uploads did not finish within {t:?}"),
                        None => "an upload thread ended without a result".into(),
                    },
                };
                self.abort(flight.id, &error);
                return Err(error);
            };
            match result {
                Ok(part) => {
                    flight.parts[index] = Some(part);
                    flight.missing -= 1;
                    flight.last_upload_end = flight.last_upload_end.max(Some(ended));
                }
                Err(e) => {
                    // The other uploads run on; their files are collected with the aborted
                    // checkpoint's.
                    self.abort(flight.id, &e);
                    return Err(e);
                }
            }
        }
        // To the end of the last upload, where it ended: not to when this call noticed it.
        let upload_time = flight.last_upload_end.map_or(Duration::ZERO, |end| {
            end.saturating_duration_since(flight.uploads_started)
        });
        let mut stats = UploadStats::default();
        let mut parts = Vec::with_capacity(flight.parts.len());
        for (part, operator) in flight.parts.into_iter().zip(flight.operator_of) {
            if let Some((mut part, part_stats)) = part {
                stats.add(&part_stats);
                part.operator = operator;
                parts.push(part);
            }
        }
        let meta = match self
            .coordinator
            .complete_with(flight.id, parts, flight.engine)
        {
            Ok(meta) => meta.clone(),
            Err(e) => {
                self.abort(flight.id, &e);
                return Err(e);
            }
        };
        notify_by_identity(operators, &meta)?;
        if let Some(local) = &self.options.local_recovery {
            // The local copies of older checkpoints go; a failure only leaves files that a
            // restore would check before using.
            if let Err(e) = local.retain(&meta) {
                tracing::warn!(checkpoint = meta.id, error = %e, "local recovery cleanup failed");
            }
        }
        let report = CheckpointReport {
            id: meta.id,
            instances: meta.instances.len(),
            stats,
            sync_pause: flight.sync_pause,
            upload_time,
        };
        tracing::info!(
            checkpoint = report.id,
            instances = report.instances,
            bytes_uploaded = report.stats.bytes_uploaded,
            files_uploaded = report.stats.files_uploaded,
            files_reused = report.stats.files_reused,
            sync_pause_us = report.sync_pause.as_micros() as u64,
            upload_ms = report.upload_time.as_millis() as u64,
            "checkpoint completed"
        );
        if let Some(cleanup) = self.coordinator.cleanup_error() {
            tracing::warn!(
                checkpoint = report.id,
                error = cleanup,
                "checkpoint cleanup failed; retried later"
            );
        }
        Ok(Some(report))
    }

    /// Aborts checkpoint `id` after `cause`.
    fn abort(&mut self, id: u64, cause: &Error) {
        tracing::warn!(checkpoint = id, error = %cause, "checkpoint aborted");
        // `abort` cannot fail today; a failed cleanup is kept by the coordinator.
        let _ = self.coordinator.abort(id);
    }
}

/// Takes the synchronous part of checkpoint `id` of every instance, in order, on at most
/// `threads` threads: a RocksDB instance's part flushes its column families and waits for the
/// disk, so instances taken one after another add their waits up (the demo's 4 instances of
/// 8 column families each waited 4 × 8 flushes).
fn snapshot_all<B: CheckpointedBackend + Send>(
    operators: &mut [OperatorInstances<'_, B>],
    id: u64,
    threads: usize,
) -> Vec<Result<PendingSnapshot>> {
    let backends: Vec<&mut B> = operators
        .iter_mut()
        .flat_map(|o| o.instances.iter_mut())
        .collect();
    let threads = threads.clamp(1, backends.len().max(1));
    if threads == 1 {
        return backends.into_iter().map(|b| b.snapshot(id)).collect();
    }
    let results = Mutex::new((0..backends.len()).map(|_| None).collect::<Vec<_>>());
    let queue = Mutex::new(backends.into_iter().enumerate().collect::<VecDeque<_>>());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                    let Some((index, backend)) = next else { break };
                    let snapshot = backend.snapshot(id);
                    if let Ok(mut results) = results.lock() {
                        results[index] = Some(snapshot);
                    }
                }
            });
        }
    });
    // A slot left empty: its thread panicked in the synchronous part.
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(Error::CheckpointState {
                    id,
                    reason: "an instance's synchronous part did not finish".into(),
                })
            })
        })
        .collect()
}

/// Notifies every instance of `backends` whose part `meta` holds, found by instance id.
fn notify_by_identity<B: CheckpointedBackend>(
    operators: &mut [OperatorInstances<'_, B>],
    meta: &SnapshotMetadata,
) -> Result<()> {
    let backends_len: usize = operators.iter().map(|o| o.instances.len()).sum();
    for part in &meta.instances {
        let backend = operators
            .iter_mut()
            .flat_map(|o| o.instances.iter_mut())
            .find(|b| b.instance_id() == part.instance_id)
            .ok_or_else(|| Error::ForeignInstance {
                expected: format!("one of the {} instances given", backends_len),
                found: part.instance_id.hex(),
            })?;
        backend.notify_checkpoint_complete(part)?;
    }
    Ok(())
}

/// What an upload thread reports: the instance's index, the upload's result, and when the
/// upload ended.
type UploadResult = (usize, Result<(InstanceMetadata, UploadStats)>, Instant);

/// Starts at most `threads` threads that upload `pending` to `storage`, each taking the next
/// snapshot when it is done with one; every result is sent with its instance's index and the
/// instant the upload ended.
fn spawn_uploads(
    pending: VecDeque<(usize, PendingSnapshot)>,
    storage: Arc<dyn CheckpointStorage>,
    threads: usize,
) -> Receiver<UploadResult> {
    let (sender, receiver) = mpsc::channel();
    let workers = threads.clamp(1, pending.len().max(1));
    let queue = Arc::new(Mutex::new(pending));
    for _ in 0..workers {
        let queue = Arc::clone(&queue);
        let storage = Arc::clone(&storage);
        let sender = sender.clone();
        std::thread::spawn(move || {
            loop {
                let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                let Some((index, snapshot)) = next else { break };
                // A receiver gone (the checkpoint was aborted) only means nobody waits.
                let result = snapshot.upload(storage.as_ref());
                let _ = sender.send((index, result, Instant::now()));
            }
        });
    }
    receiver
}

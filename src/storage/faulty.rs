//! [`FaultyStorage`]: fault injection for crash-consistency tests.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{CheckpointStorage, ObjectMeta, StoragePath, temporary_path};
use crate::model::error::{Error, Result};

/// The nonce of the temporary leftover a simulated crash leaves behind, so tests can predict
/// its name: `<path>.tmp-deadbeefdeadbeef`.
const LEFTOVER_NONCE: u64 = 0xdead_beef_dead_beef;

/// Which fault a [`FaultyStorage`] injects. Operations are numbered by counting the *mutating*
/// operations (`put`, `put_file`, `delete`) from 1, over the wrapper's whole life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultMode {
    /// Everything is passed through.
    #[default]
    None,
    /// The k-th mutating operation fails with [`Error::InjectedFault`] without touching the
    /// inner storage; earlier and later operations succeed. Models a transient error.
    FailAt(u64),
    /// The k-th mutating operation and every operation after it (reads too) fail with
    /// [`Error::InjectedFault`]: the process died at operation k. If operation k is a `put` or
    /// `put_file` and k is odd, it leaves a truncated temporary file (the first half of the
    /// data, at [`temporary_path`]`(path, 0xdeadbeefdeadbeef)`) in the inner storage, as a crash
    /// in the middle of an atomic write would.
    CrashAt(u64),
}

/// A [`CheckpointStorage`] wrapper that injects failures and crashes (see [`FaultMode`]) and
/// records what was attempted and written.
///
/// Typical use: run a checkpoint with `CrashAt(k)` for every k up to the number of operations
/// a clean run needs, then restore from [`inner`](FaultyStorage::inner) and check that the
/// result is the last completed checkpoint. Since operations are counted over the wrapper's
/// life, "crash at the third operation from now" is
/// `storage.set_mode(FaultMode::CrashAt(storage.ops() + 3))`.
#[derive(Debug)]
pub struct FaultyStorage<S: CheckpointStorage> {
    inner: S,
    state: Mutex<Counters>,
    bytes_written: AtomicU64,
}

/// The mode and the operation counter, changed together.
#[derive(Debug)]
struct Counters {
    mode: FaultMode,
    ops: u64,
}

/// What a mutating operation does, decided when it is counted.
enum Gate {
    /// Pass through.
    Proceed,
    /// Fail with this operation number.
    Fail(u64),
    /// Fail with this operation number, leaving a temporary leftover if `leftover`.
    Crash { op: u64, leftover: bool },
}

impl<S: CheckpointStorage> FaultyStorage<S> {
    /// Wraps `inner`, injecting faults according to `mode`.
    pub fn new(inner: S, mode: FaultMode) -> Self {
        FaultyStorage {
            inner,
            state: Mutex::new(Counters { mode, ops: 0 }),
            bytes_written: AtomicU64::new(0),
        }
    }

    /// Mutating operations attempted so far, including those that failed.
    pub fn ops(&self) -> u64 {
        self.counters().ops
    }

    /// Replaces the fault mode; the operation counter keeps running. `FaultMode::None`
    /// "restarts" a crashed storage.
    pub fn set_mode(&self, mode: FaultMode) {
        self.counters().mode = mode;
    }

    /// The current fault mode.
    pub fn mode(&self) -> FaultMode {
        self.counters().mode
    }

    /// The wrapped storage, to inspect what a crash left behind.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner storage.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Bytes stored by successful `put` and `put_file` calls (not by injected leftovers).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// The counters, surviving a panic of another thread that held them (they stay
    /// consistent: every update is a single assignment).
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a mutating operation and decides its fate.
    fn mutation(&self) -> Gate {
        let mut counters = self.counters();
        counters.ops += 1;
        let op = counters.ops;
        match counters.mode {
            FaultMode::FailAt(k) if op == k => Gate::Fail(op),
            FaultMode::CrashAt(k) if op >= k => Gate::Crash {
                op,
                leftover: op == k && k % 2 == 1,
            },
            _ => Gate::Proceed,
        }
    }

    /// Fails a read if the storage has crashed.
    fn read(&self) -> Result<()> {
        let counters = self.counters();
        match counters.mode {
            FaultMode::CrashAt(k) if counters.ops >= k => {
                Err(Error::InjectedFault { op: counters.ops })
            }
            _ => Ok(()),
        }
    }

    /// One whole-data write through the gate: `write` runs on the inner storage unless the
    /// operation fails or crashes here (a crash may leave half of `data` as a temporary file).
    fn gated_write(
        &self,
        path: &StoragePath,
        data: &[u8],
        write: impl FnOnce(&S) -> Result<()>,
    ) -> Result<()> {
        match self.mutation() {
            Gate::Proceed => {
                write(&self.inner)?;
                self.bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Gate::Fail(op) => Err(Error::InjectedFault { op }),
            Gate::Crash { op, leftover } => {
                if leftover {
                    self.leave_leftover(path, &data[..data.len() / 2]);
                }
                Err(Error::InjectedFault { op })
            }
        }
    }

    /// Writes the truncated temporary file of a write interrupted by a crash. Best effort: a
    /// crash makes no promises, so failures are ignored.
    fn leave_leftover(&self, path: &StoragePath, partial: &[u8]) {
        if let Ok(temp) = temporary_path(path, LEFTOVER_NONCE) {
            let _ = self.inner.put(&temp, partial);
        }
    }
}

impl<S: CheckpointStorage> CheckpointStorage for FaultyStorage<S> {
    fn location(&self) -> String {
        self.inner.location()
    }

    /// Counts as a mutating operation.
    fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        self.gated_write(path, data, |inner| inner.put(path, data))
    }

    /// Counts as a mutating operation.
    fn put_new(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        self.gated_write(path, data, |inner| inner.put_new(path, data))
    }

    /// Counts as a mutating operation.
    fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        match self.mutation() {
            Gate::Proceed => {
                let written = self.inner.put_file(path, local)?;
                self.bytes_written.fetch_add(written, Ordering::Relaxed);
                Ok(written)
            }
            Gate::Fail(op) => Err(Error::InjectedFault { op }),
            Gate::Crash { op, leftover } => {
                if leftover {
                    // Test-only: the first half of the file is read into memory.
                    let mut partial = Vec::new();
                    if let Ok(file) = File::open(local) {
                        let half = file.metadata().map_or(0, |m| m.len() / 2);
                        let _ = file.take(half).read_to_end(&mut partial);
                    }
                    self.leave_leftover(path, &partial);
                }
                Err(Error::InjectedFault { op })
            }
        }
    }

    fn get(&self, path: &StoragePath) -> Result<Vec<u8>> {
        self.read()?;
        self.inner.get(path)
    }

    fn get_to_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        self.read()?;
        self.inner.get_to_file(path, local)
    }

    fn read_to(&self, path: &StoragePath, sink: &mut dyn Write) -> Result<u64> {
        self.read()?;
        self.inner.read_to(path, sink)
    }

    fn list(&self, prefix: Option<&StoragePath>) -> Result<Vec<ObjectMeta>> {
        self.read()?;
        self.inner.list(prefix)
    }

    /// Counts as a mutating operation.
    fn delete(&self, path: &StoragePath) -> Result<()> {
        match self.mutation() {
            Gate::Proceed => self.inner.delete(path),
            Gate::Fail(op) | Gate::Crash { op, .. } => Err(Error::InjectedFault { op }),
        }
    }

    fn exists(&self, path: &StoragePath) -> Result<bool> {
        self.read()?;
        self.inner.exists(path)
    }

    fn size(&self, path: &StoragePath) -> Result<Option<u64>> {
        self.read()?;
        self.inner.size(path)
    }
}

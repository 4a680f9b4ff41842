//! Read-side fault injection for restore sweeps. `FaultyStorage` counts and breaks the mutating
//! operations of a storage, and a restore performs none: what a restore does to storage is
//! read. [`ReadFaults`] numbers the reads (`get`, `get_to_file`, `read_to`, `list`, `exists`,
//! `size`) from 1 and breaks the k-th one.

use std::path::Path;
use std::sync::Mutex;

use statebackend::storage::{CheckpointStorage, ObjectMeta, StoragePath};
use statebackend::{Error, Result};

/// What [`ReadFaults`] does to the k-th read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    /// Every read succeeds.
    None,
    /// Read k fails with [`Error::InjectedFault`]; later reads succeed (a transient error).
    FailAt(u64),
    /// Read k and every later one fail with [`Error::InjectedFault`] (the storage is gone).
    LostAt(u64),
    /// Read k panics with [`SimulatedCrash`]: the process dies in the middle of the restore,
    /// so no error path and no cleanup on error runs; only destructors do, as they would not
    /// after a real crash either (see the sweeps' notes).
    CrashAt(u64),
}

/// The panic payload of [`ReadFault::CrashAt`].
#[derive(Debug)]
pub struct SimulatedCrash;

/// A storage wrapper that breaks one read (see [`ReadFault`]).
pub struct ReadFaults<S> {
    inner: S,
    state: Mutex<(ReadFault, u64)>,
}

impl<S: CheckpointStorage> ReadFaults<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            state: Mutex::new((ReadFault::None, 0)),
        }
    }

    /// Sets the fault and restarts the read counter.
    pub fn set(&self, fault: ReadFault) {
        *self.state.lock().unwrap() = (fault, 0);
    }

    /// Reads attempted since the last [`ReadFaults::set`], including broken ones.
    pub fn reads(&self) -> u64 {
        self.state.lock().unwrap().1
    }

    /// Whether the fault set last has fired.
    pub fn fired(&self) -> bool {
        let (fault, reads) = *self.state.lock().unwrap();
        match fault {
            ReadFault::None => false,
            ReadFault::FailAt(k) | ReadFault::LostAt(k) | ReadFault::CrashAt(k) => reads >= k,
        }
    }

    fn read(&self) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        let op = state.1;
        match state.0 {
            ReadFault::FailAt(k) if op == k => Err(Error::InjectedFault { op }),
            ReadFault::LostAt(k) if op >= k => Err(Error::InjectedFault { op }),
            ReadFault::CrashAt(k) if op == k => {
                drop(state);
                std::panic::panic_any(SimulatedCrash)
            }
            _ => Ok(()),
        }
    }
}

impl<S: CheckpointStorage> CheckpointStorage for ReadFaults<S> {
    fn put(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        self.inner.put(path, data)
    }
    fn put_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        self.inner.put_file(path, local)
    }
    fn get(&self, path: &StoragePath) -> Result<Vec<u8>> {
        self.read()?;
        self.inner.get(path)
    }
    fn get_to_file(&self, path: &StoragePath, local: &Path) -> Result<u64> {
        self.read()?;
        self.inner.get_to_file(path, local)
    }
    fn read_to(&self, path: &StoragePath, sink: &mut dyn std::io::Write) -> Result<u64> {
        self.read()?;
        self.inner.read_to(path, sink)
    }
    fn list(&self, prefix: Option<&StoragePath>) -> Result<Vec<ObjectMeta>> {
        self.read()?;
        self.inner.list(prefix)
    }
    fn put_new(&self, path: &StoragePath, data: &[u8]) -> Result<()> {
        self.inner.put_new(path, data)
    }
    fn delete(&self, path: &StoragePath) -> Result<()> {
        self.inner.delete(path)
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

/// Runs `f`, turning a [`SimulatedCrash`] panic into `None`; other panics propagate. The
/// default panic message is kept quiet for simulated crashes only.
pub fn surviving_crash<T>(f: impl FnOnce() -> T) -> Option<T> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<SimulatedCrash>().is_none() {
                default(info);
            }
        }));
    });
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(payload) if payload.downcast_ref::<SimulatedCrash>().is_some() => None,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

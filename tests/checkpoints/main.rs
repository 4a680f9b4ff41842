//! Checkpoints: incremental uploads, retention and GC, restore and rescale, crash and fault
//! sweeps, and the safety properties of `docs/reliability.md`.
//!
//! One test binary per area, not one per file: each binary links RocksDB, and linking dominated
//! `cargo test` on two cores.

#[path = "../common/mod.rs"]
mod common;

/// The checkpoint roots the shared suites run on: local directories here. The `s3-loopback`
/// crate compiles the same suites over an in-memory object store and an S3 server on loopback.
mod root {
    use std::path::Path;
    use std::sync::Arc;

    use statebackend::Result;
    use statebackend::storage::{CheckpointStorage, LocalDirStorage};

    /// Whether a child process opening the same `dir` sees the same root.
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    pub const SEEN_BY_OTHER_PROCESSES: bool = true;

    /// The root for `dir`: the same `dir` opens the same root again.
    pub fn open(dir: impl AsRef<Path>) -> Result<Arc<dyn CheckpointStorage>> {
        Ok(Arc::new(LocalDirStorage::new(dir.as_ref())?))
    }
}

mod checkpoint_concurrency;
mod checkpoint_crash_sweep;
mod checkpoint_fault_property;
mod checkpoint_incremental;
mod checkpoint_rescale;
mod checkpoint_restore;
mod checkpoint_retention_property;
mod checkpoint_safety;
mod claim_other_root;
mod driver;
mod heap_chains;
mod heap_snapshot_leftovers;
mod local_recovery;
mod object_storage;
mod operator_state;
mod operators;
mod restore_coverage;
mod restore_crash_sweep;
mod stale_coordinator;
mod timers;
mod type_names;
mod untrusted_storage;
mod write_cache;

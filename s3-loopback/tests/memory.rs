//! The shared checkpoint suites on `object_store`'s in-memory store, through `ObjectStorage`.
// The shared test code keeps the library's minimum Rust (1.85), which has no let chains.
#![allow(clippy::collapsible_if)]

#[path = "../../tests/common/mod.rs"]
mod common;

mod shared_suites;

/// Roots in memory: one store per directory name, so that opening the same directory again
/// opens the same root.
mod root {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex, OnceLock};

    use statebackend::Result;
    use statebackend::storage::object_store::{ObjectStore, memory::InMemory};
    use statebackend::storage::{CheckpointStorage, ObjectStorage};

    /// Each process has its own memory.
    #[cfg_attr(not(feature = "rocksdb"), allow(dead_code))]
    pub const SEEN_BY_OTHER_PROCESSES: bool = false;

    pub fn open(dir: impl AsRef<Path>) -> Result<Arc<dyn CheckpointStorage>> {
        static STORES: OnceLock<Mutex<HashMap<PathBuf, Arc<dyn ObjectStore>>>> = OnceLock::new();
        let store = STORES
            .get_or_init(Default::default)
            .lock()
            .unwrap()
            .entry(dir.as_ref().to_owned())
            .or_insert_with(|| Arc::new(InMemory::new()))
            .clone();
        Ok(Arc::new(
            ObjectStorage::new(store, "root")?.with_transfer_concurrency(4),
        ))
    }
}

//! [`BackendConfig`]: which backend to open or restore, for which key groups, where.

use std::path::PathBuf;

use crate::model::key_group::KeyGroupRange;
use crate::model::state::BackendKind;

#[cfg(feature = "rocksdb")]
use crate::backends::rocks::RocksDbOptions;

/// How to open a backend: which implementation, for which key groups, where.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Which backend.
    pub kind: BackendKind,
    /// The job's max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// The key groups this instance owns.
    pub key_groups: KeyGroupRange,
    /// Working directory of the RocksDB backend; `None` for a temporary directory that is
    /// removed when the backend is dropped. Ignored by the heap backend.
    pub working_dir: Option<PathBuf>,
    /// RocksDB tuning.
    #[cfg(feature = "rocksdb")]
    pub rocksdb: RocksDbOptions,
    /// Whether a restore (checkpoint or savepoint) into `working_dir` may replace what the
    /// directory holds: a database, or the leftovers of a backend that did not close cleanly
    /// or of a restore that did not finish. Without it (the default), such a restore is
    /// [`crate::Error::UncleanWorkingDirectory`] or [`crate::Error::Incompatible`] naming the directory, and
    /// nothing is touched. Ignored by the heap backend and by [`crate::AnyBackend::open`].
    pub replace_existing: bool,
    /// How many instances the operator runs, if the engine says (`None`, the default: not
    /// said). A restore at the snapshot's instance count then keeps each split-list operator
    /// state with the instance of the same key groups, as Flink does; without it the key
    /// groups alone decide, which they can only at some counts (1 to 12 of max parallelism
    /// 128), and the lists are otherwise split evenly ([`crate::state::OperatorState`]).
    pub parallelism: Option<u32>,
    /// Incremental checkpoints of the heap backend (`None`, the default: full snapshots): each
    /// checkpoint uploads the rows changed since the last completed one, as a chain of data
    /// files materialized by this policy ([`crate::backends::incremental_snapshot`]). Ignored
    /// by the other backends.
    pub heap_chains: Option<crate::backends::incremental_snapshot::ChainPolicy>,
}

impl BackendConfig {
    /// A heap backend configuration.
    pub fn heap(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        Self {
            kind: BackendKind::Heap,
            max_parallelism,
            key_groups,
            working_dir: None,
            #[cfg(feature = "rocksdb")]
            rocksdb: RocksDbOptions::default(),
            replace_existing: false,
            parallelism: None,
            heap_chains: None,
        }
    }

    /// This configuration with [`BackendConfig::replace_existing`] set to `replace`.
    #[must_use]
    pub fn with_replace_existing(mut self, replace: bool) -> Self {
        self.replace_existing = replace;
        self
    }

    /// This configuration with [`BackendConfig::parallelism`] set to `parallelism`.
    #[must_use]
    pub fn with_parallelism(mut self, parallelism: u32) -> Self {
        self.parallelism = Some(parallelism);
        self
    }

    /// A reference backend configuration ([`crate::backends::reference`]).
    pub fn reference(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        Self {
            kind: BackendKind::Reference,
            ..Self::heap(max_parallelism, key_groups)
        }
    }

    /// A RocksDB backend configuration in a temporary working directory, default options.
    pub fn rocksdb(max_parallelism: u32, key_groups: KeyGroupRange) -> Self {
        Self {
            kind: BackendKind::RocksDb,
            ..Self::heap(max_parallelism, key_groups)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::error::Error;

    /// A restore refuses an unclean working directory unless `replace_existing` is set: the
    /// message must name the option, not promise that any restore replaces it.
    #[test]
    fn an_unclean_working_directory_names_the_option_that_replaces_it() {
        let message = Error::UncleanWorkingDirectory {
            path: "/var/lib/job/0".into(),
        }
        .to_string();
        assert!(message.contains("replace_existing"), "{message}");
        assert!(message.contains("/var/lib/job/0"), "{message}");
    }
}

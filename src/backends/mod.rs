//! Layer 2, the backends: each implements the state operations ([`KeyedStateBackend`]) and
//! the runtime's interface ([`CheckpointedBackend`]); nothing here knows about coordinators,
//! retention or savepoint directories.
//!
//! - [`interface`]: [`CheckpointedBackend`], the upload task of a checkpoint, the pending
//!   savepoint.
//! - [`full_snapshot`]: checkpoints as one canonical data file, for backends without files of
//!   their own; [`incremental_snapshot`]: checkpoints as chains of such files holding what
//!   changed (the heap backend's, if configured).
//! - [`heap`]: typed values in copy-on-write maps.
//! - `rocks`: rows in an embedded RocksDB, incremental checkpoints (feature `rocksdb`).
//! - [`reference`](mod@reference): canonical rows in ordered maps, the specification the others are tested
//!   against, written against the interface only.
//! - [`any`]: [`AnyBackend`], the backend chosen at runtime, and [`config`]: [`BackendConfig`].
//!
//! [`KeyedStateBackend`]: crate::model::state::KeyedStateBackend
//! [`CheckpointedBackend`]: interface::CheckpointedBackend
//! [`AnyBackend`]: any::AnyBackend
//! [`BackendConfig`]: config::BackendConfig

pub mod any;
pub mod config;
pub mod full_snapshot;
pub mod heap;
pub mod incremental_snapshot;
pub mod interface;
pub mod reference;
#[cfg(feature = "rocksdb")]
pub mod rocks;

//! # statebackend
//!
//! Keyed state for stream processing engines: what Apache Flink calls a *state backend*.
//!
//! An engine registers named states (value, list, map, reducing, aggregating) on a backend and
//! reads and writes them per `(key, namespace)`. Every key hashes to one of `max_parallelism`
//! key groups; a backend instance owns a contiguous [`KeyGroupRange`], which is what makes
//! rescaling possible. Two backends implement the one [`KeyedStateBackend`] trait:
//! [`HeapBackend`] (typed values in memory) and, with the default `rocksdb` feature,
//! `RocksDbBackend` (serialized rows in an embedded RocksDB). [`AnyBackend`] chooses one at
//! runtime.
//!
//! ```
//! use statebackend::{
//!     AnyBackend, BackendConfig, KeyGroupRange, KeyedStateBackend, MapStateDescriptor,
//!     ValueStateDescriptor,
//! };
//!
//! // Instance 0 of 2 owns the first half of 128 key groups.
//! let range = KeyGroupRange::for_operator(128, 2, 0)?;
//! let mut backend = AnyBackend::open(&BackendConfig::heap(128, range))?;
//!
//! let clicks = backend.value_state(&ValueStateDescriptor::<String, (), u64>::new("clicks"))?;
//! let pages = backend.map_state(&MapStateDescriptor::<String, u32, String, u64>::new("pages"))?;
//!
//! // Only keys of owned key groups are accepted.
//! let user = (0..).map(|i| format!("user-{i}"))
//!     .find(|u| range.contains(backend.key_group_of(u).unwrap()))
//!     .unwrap();
//! clicks.put(&mut backend, &user, &(), 1)?;
//! pages.put(&mut backend, &user, &7, "/home".into(), 3)?; // namespace 7: a window id
//! assert_eq!(clicks.get(&backend, &user, &())?, Some(1));
//! assert_eq!(pages.get(&backend, &user, &7, &"/home".to_string())?, Some(3));
//! # Ok::<(), statebackend::Error>(())
//! ```
//!
//! The module tree is the architecture, three layers that import downward only: [`model`]
//! (key groups, codecs, the state API, errors, file formats), [`storage`], [`backends`] (heap,
//! RocksDB, and the [`CheckpointedBackend`] interface they implement for the runtime) and
//! [`runtime`] (checkpoints, restore and rescale, savepoints). `docs/architecture.md` gives the
//! map.

#![deny(missing_docs)]
#![forbid(unsafe_code)]
// The state API is generic over key, namespace and value types; spelled-out marker and
// callback types (`PhantomData<fn() -> (K, N, V)>`, row sinks) read better than aliases.
#![allow(clippy::type_complexity)]

// The layers, each importing only from those above it in this list
// (`docs/architecture.md`; `.ci/run` fails on an import cycle between them).
pub mod backends;
#[cfg(feature = "cli")]
pub mod cli;
/// Entry points for the fuzz targets (`fuzz/`) and the test that replays their corpus; not
/// part of the API.
pub mod engines;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
pub mod runtime;
pub mod storage;

// The paths engines use, short: one module per concern.
pub use backends::heap;
#[cfg(feature = "rocksdb")]
pub use backends::rocks;
#[cfg(feature = "timely")]
pub use engines::timely;
pub use model::state::backend;
pub use model::{codec, error, key_group, state};
pub use runtime::{checkpoint, savepoint};

pub use backends::any::AnyBackend;
pub use backends::config::BackendConfig;
pub use backends::interface::{CheckpointedBackend, PendingSavepoint, PendingSnapshot};
pub use codec::{BincodeCodec, Codec, CodecId};
pub use error::{Error, Result};
pub use heap::HeapBackend;
pub use key_group::{KeyGroup, KeyGroupAssigner, KeyGroupRange};
pub use model::state::{BackendKind, KeyedStateBackend};
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksDbBackend, RocksDbOptions};
pub use runtime::driver::{CheckpointDriver, CheckpointReport, DriverOptions, OperatorInstances};
pub use runtime::timers::{Timer, TimerService};
pub use state::{
    AggregateFunction, AggregatingState, AggregatingStateDescriptor, ListState,
    ListStateDescriptor, MapState, MapStateDescriptor, ReducingState, ReducingStateDescriptor,
    StateId, StateInfo, StateKind, ValueState, ValueStateDescriptor,
};
pub use storage::{
    CheckpointStorage, FaultMode, FaultyStorage, LocalDirStorage, ObjectMeta, StoragePath,
};

/// The README's example runs as a doc test, so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

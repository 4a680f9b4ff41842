//! The keyed state API: state kinds, descriptors, the typed handles engines use, and the
//! [`KeyedStateBackend`] trait every backend implements ([`backend`]).
//!
//! A state is registered on a backend from a descriptor (a unique name plus the key, namespace
//! and value types) and used through the handle the registration returns. Every state is keyed
//! by `(key, namespace)`: plain keyed state uses the unit namespace `()`, windowed state uses
//! the window type as namespace.

pub mod backend;
mod descriptor;
mod handles;
pub mod key;
pub mod migration;
pub mod operator;
pub mod rows;
pub mod ttl;

pub use backend::{BackendKind, KeyedStateBackend, MapEntries, StateKeys};
pub use descriptor::{
    AggregateFunction, AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor,
    ReducingStateDescriptor, StateInfo, StateKind, TypeNames, ValueStateDescriptor,
};
pub use handles::next_backend_identity;
pub use handles::{AggregatingState, ListState, MapState, ReducingState, StateId, ValueState};
pub use key::{AsKey, KeyContext, KeyRef};
pub use migration::{Migration, Migrations, RowMigration};
pub use operator::{
    BroadcastState, OperatorListState, OperatorState, OperatorStateEntry, OperatorStateMode,
};
pub use rows::{Cell, ListCell, MapCell, StoredState};

use std::hash::Hash;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a key, namespace or map user key must be: serializable (for the RocksDB backend,
/// snapshots and key-group hashing), hashable (for the heap backend's maps) and shareable
/// across the snapshot thread.
pub trait StateKey:
    Serialize + DeserializeOwned + Hash + Eq + Clone + Send + Sync + 'static
{
}
impl<T: Serialize + DeserializeOwned + Hash + Eq + Clone + Send + Sync + 'static> StateKey for T {}

/// What a stored value must be: serializable, cloneable (the heap backend copies a key group on
/// write while a snapshot of it is being written) and shareable across the snapshot thread.
pub trait StateValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> StateValue for T {}

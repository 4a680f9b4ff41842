//! State descriptors: a unique name plus the types, which registration checks.

use std::any::type_name;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::state::migration::{Migration, Migrations};
use crate::model::state::ttl::StateTtlConfig;

/// The kind of a state. Stored as one byte in every format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StateKind {
    /// One value per (key, namespace).
    Value = 1,
    /// An ordered list of values per (key, namespace), appended to cheaply.
    List = 2,
    /// A map of user keys to values per (key, namespace).
    Map = 3,
    /// One value per (key, namespace), folded with a reduce function on `add`.
    Reducing = 4,
    /// One accumulator per (key, namespace), folded with an aggregate function on `add`.
    Aggregating = 5,
}

impl StateKind {
    /// The kind with byte code `code`, if any.
    pub fn from_code(code: u8) -> Option<StateKind> {
        Some(match code {
            1 => StateKind::Value,
            2 => StateKind::List,
            3 => StateKind::Map,
            4 => StateKind::Reducing,
            5 => StateKind::Aggregating,
            _ => return None,
        })
    }

    /// The byte code of the kind.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Lower-case name, as printed by tools.
    pub fn name(self) -> &'static str {
        match self {
            StateKind::Value => "value",
            StateKind::List => "list",
            StateKind::Map => "map",
            StateKind::Reducing => "reducing",
            StateKind::Aggregating => "aggregating",
        }
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a backend records about a registered state, and what checkpoints and savepoints store.
///
/// Type names are Rust's `std::any::type_name`s unless the descriptor names the types itself
/// ([`TypeNames`], `with_type_names`): registering the same name with other types is an error,
/// and restoring a state into other types is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateInfo {
    /// Unique name of the state within a backend.
    pub name: String,
    /// Its kind.
    pub kind: StateKind,
    /// Type name of the keys.
    pub key_type: String,
    /// Type name of the namespaces.
    pub namespace_type: String,
    /// Type name of the map user keys (empty for other kinds).
    pub user_key_type: String,
    /// Type name of the stored values (list elements, map values, accumulators).
    pub value_type: String,
    /// The state's time to live, if it has one: its rows then carry timestamps
    /// ([`crate::state::ttl`]). Not part of the serde encoding, which the RocksDB backend's
    /// state registry has stored since before TTL; it appends the TTL itself.
    #[serde(skip)]
    pub ttl: Option<StateTtlConfig>,
    /// The version of the stored value's schema the descriptor declared
    /// (`with_schema_version`); 0, the default, for a state that never declared one. A restore
    /// into another version is `StateMismatch` naming both. Left out of the serde encoding as
    /// the TTL is.
    #[serde(skip)]
    pub schema_version: u32,
}

impl StateInfo {
    /// Builds the info for a state of the given kind and types.
    pub fn of<K, N, UK, V>(name: &str, kind: StateKind) -> StateInfo {
        StateInfo {
            name: name.to_owned(),
            kind,
            key_type: type_name::<K>().to_owned(),
            namespace_type: type_name::<N>().to_owned(),
            user_key_type: if kind == StateKind::Map {
                type_name::<UK>().to_owned()
            } else {
                String::new()
            },
            value_type: type_name::<V>().to_owned(),
            ttl: None,
            schema_version: 0,
        }
    }

    /// This info with schema version `version`.
    #[must_use]
    pub fn with_schema_version(mut self, version: u32) -> StateInfo {
        self.schema_version = version;
        self
    }

    /// This info with time to live `ttl`.
    #[must_use]
    pub fn with_ttl(mut self, ttl: StateTtlConfig) -> StateInfo {
        self.ttl = Some(ttl);
        self
    }

    /// Whether `other` is the same state but for its time to live: a restore may change
    /// that (`ttl::TtlChange`), nothing else.
    pub fn same_but_ttl(&self, other: &StateInfo) -> bool {
        self.name == other.name
            && self.kind == other.kind
            && self.key_type == other.key_type
            && self.namespace_type == other.namespace_type
            && self.user_key_type == other.user_key_type
            && self.value_type == other.value_type
            && self.schema_version == other.schema_version
    }

    /// [`StateInfo::of`], with the type names `names` chose if any: what descriptors register.
    fn named<K, N, UK, V>(name: &str, kind: StateKind, names: Option<&TypeNames>) -> StateInfo {
        let info = StateInfo::of::<K, N, UK, V>(name, kind);
        match names {
            Some(names) => info.with_type_names(names),
            None => info,
        }
    }

    /// This info with the type names `names` chose (the user key only for map states).
    #[must_use]
    pub fn with_type_names(mut self, names: &TypeNames) -> StateInfo {
        self.key_type.clone_from(&names.key);
        self.namespace_type.clone_from(&names.namespace);
        if self.kind == StateKind::Map {
            self.user_key_type.clone_from(&names.user_key);
        }
        self.value_type.clone_from(&names.value);
        self
    }

    /// The kind and types, as error messages show them.
    pub fn describe(&self) -> String {
        let mut shape = self.describe_types();
        if self.schema_version != 0 {
            shape.push_str(&format!(" schema version {}", self.schema_version));
        }
        match &self.ttl {
            Some(ttl) => format!("{shape} with {}", ttl.describe()),
            None => shape,
        }
    }

    fn describe_types(&self) -> String {
        if self.kind == StateKind::Map {
            format!(
                "map<key={}, namespace={}, user_key={}, value={}>",
                self.key_type, self.namespace_type, self.user_key_type, self.value_type
            )
        } else {
            format!(
                "{}<key={}, namespace={}, value={}>",
                self.kind, self.key_type, self.namespace_type, self.value_type
            )
        }
    }
}

/// Type names chosen by the user instead of Rust's `std::any::type_name` (which the compiler
/// is free to change between versions): stable identities such as `"user-id"` or
/// `"order/v2"`, versioned as the user decides. What a state records and what a restore
/// compares; a checkpoint written with them restores whatever compiler built the reader.
///
/// ```
/// use statebackend::{HeapBackend, KeyGroupRange, KeyedStateBackend, ValueStateDescriptor};
/// use statebackend::state::TypeNames;
/// let mut backend = HeapBackend::new(128, KeyGroupRange::all(128)?)?;
/// let counts = ValueStateDescriptor::<String, (), u64>::new("counts")
///     .with_type_names(TypeNames::new("user-id", "none", "count/v1"));
/// assert_eq!(counts.info().value_type, "count/v1");
/// let handle = backend.value_state(&counts)?;
/// # Ok::<(), statebackend::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TypeNames {
    /// The key type's name.
    pub key: String,
    /// The namespace type's name.
    pub namespace: String,
    /// The map user key type's name (map states only).
    pub user_key: String,
    /// The value type's name (list element, map value, accumulator).
    pub value: String,
}

impl TypeNames {
    /// Names for the key, namespace and value types.
    pub fn new(
        key: impl Into<String>,
        namespace: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            namespace: namespace.into(),
            user_key: String::new(),
            value: value.into(),
        }
    }

    /// These names with `user_key` for a map state's user keys.
    #[must_use]
    pub fn with_user_key(mut self, user_key: impl Into<String>) -> Self {
        self.user_key = user_key.into();
        self
    }
}

/// Describes a value state: one `V` per (key `K`, namespace `N`).
///
/// # Examples
/// ```
/// use statebackend::{HeapBackend, KeyGroupRange, KeyedStateBackend, ValueStateDescriptor};
/// let mut backend = HeapBackend::new(128, KeyGroupRange::all(128)?)?;
/// let counts = backend.value_state(&ValueStateDescriptor::<String, (), u64>::new("counts"))?;
/// counts.put(&mut backend, &"alice".to_string(), &(), 3)?;
/// assert_eq!(counts.get(&backend, &"alice".to_string(), &())?, Some(3));
/// # Ok::<(), statebackend::Error>(())
/// ```
pub struct ValueStateDescriptor<K, N, V> {
    pub(crate) name: String,
    type_names: Option<TypeNames>,
    schema_version: u32,
    migrations: Migrations,
    _types: PhantomData<fn() -> (K, N, V)>,
}

impl<K, N, V> ValueStateDescriptor<K, N, V> {
    /// A descriptor for the value state `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            type_names: None,
            schema_version: 0,
            migrations: Migrations::default(),
            _types: PhantomData,
        }
    }

    /// The registration info.
    pub fn info(&self) -> StateInfo {
        StateInfo::named::<K, N, (), V>(&self.name, StateKind::Value, self.type_names.as_ref())
            .with_schema_version(self.schema_version)
    }
}

/// Describes a list state: a `Vec<T>` per (key `K`, namespace `N`).
pub struct ListStateDescriptor<K, N, T> {
    pub(crate) name: String,
    type_names: Option<TypeNames>,
    schema_version: u32,
    migrations: Migrations,
    _types: PhantomData<fn() -> (K, N, T)>,
}

impl<K, N, T> ListStateDescriptor<K, N, T> {
    /// A descriptor for the list state `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            type_names: None,
            schema_version: 0,
            migrations: Migrations::default(),
            _types: PhantomData,
        }
    }

    /// The registration info.
    pub fn info(&self) -> StateInfo {
        StateInfo::named::<K, N, (), T>(&self.name, StateKind::List, self.type_names.as_ref())
            .with_schema_version(self.schema_version)
    }
}

/// Describes a map state: a map `UK → UV` per (key `K`, namespace `N`).
pub struct MapStateDescriptor<K, N, UK, UV> {
    pub(crate) name: String,
    type_names: Option<TypeNames>,
    schema_version: u32,
    migrations: Migrations,
    _types: PhantomData<fn() -> (K, N, UK, UV)>,
}

impl<K, N, UK, UV> MapStateDescriptor<K, N, UK, UV> {
    /// A descriptor for the map state `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            type_names: None,
            schema_version: 0,
            migrations: Migrations::default(),
            _types: PhantomData,
        }
    }

    /// The registration info.
    pub fn info(&self) -> StateInfo {
        StateInfo::named::<K, N, UK, UV>(&self.name, StateKind::Map, self.type_names.as_ref())
            .with_schema_version(self.schema_version)
    }
}

/// The function a reducing state folds added values with.
pub type ReduceFn<V> = Arc<dyn Fn(&V, &V) -> V + Send + Sync>;

/// Describes a reducing state: one `V` per (key, namespace), `add` folds with `reduce`.
pub struct ReducingStateDescriptor<K, N, V> {
    pub(crate) name: String,
    type_names: Option<TypeNames>,
    schema_version: u32,
    migrations: Migrations,
    pub(crate) reduce: ReduceFn<V>,
    _types: PhantomData<fn() -> (K, N)>,
}

impl<K, N, V> ReducingStateDescriptor<K, N, V> {
    /// A descriptor for the reducing state `name`; `reduce(current, added)` gives the new value.
    pub fn new(
        name: impl Into<String>,
        reduce: impl Fn(&V, &V) -> V + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            type_names: None,
            schema_version: 0,
            migrations: Migrations::default(),
            reduce: Arc::new(reduce),
            _types: PhantomData,
        }
    }

    /// The registration info.
    pub fn info(&self) -> StateInfo {
        StateInfo::named::<K, N, (), V>(&self.name, StateKind::Reducing, self.type_names.as_ref())
            .with_schema_version(self.schema_version)
    }
}

/// Folds inputs `IN` into an accumulator `ACC` and reads a result `OUT` from it, as Flink's
/// `AggregateFunction`.
pub trait AggregateFunction<IN, ACC, OUT>: Send + Sync {
    /// A fresh accumulator, used on the first `add` of a (key, namespace).
    fn create_accumulator(&self) -> ACC;
    /// Adds `value` to `accumulator` and returns the new accumulator.
    fn add(&self, value: &IN, accumulator: ACC) -> ACC;
    /// The result of an accumulator.
    fn get_result(&self, accumulator: &ACC) -> OUT;
}

/// Describes an aggregating state: one accumulator `ACC` per (key, namespace).
pub struct AggregatingStateDescriptor<K, N, IN, ACC, OUT> {
    pub(crate) name: String,
    type_names: Option<TypeNames>,
    schema_version: u32,
    migrations: Migrations,
    pub(crate) function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
    _types: PhantomData<fn() -> (K, N)>,
}

impl<K, N, IN, ACC, OUT> AggregatingStateDescriptor<K, N, IN, ACC, OUT> {
    /// A descriptor for the aggregating state `name`.
    pub fn new(
        name: impl Into<String>,
        function: impl AggregateFunction<IN, ACC, OUT> + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            type_names: None,
            schema_version: 0,
            migrations: Migrations::default(),
            function: Arc::new(function),
            _types: PhantomData,
        }
    }

    /// The registration info. The stored type is the accumulator.
    pub fn info(&self) -> StateInfo {
        StateInfo::named::<K, N, (), ACC>(
            &self.name,
            StateKind::Aggregating,
            self.type_names.as_ref(),
        )
        .with_schema_version(self.schema_version)
    }
}

/// The options every descriptor has: type names, schema version and migrations.
macro_rules! descriptor_options {
    ($descriptor:ident < $($param:ident),* >) => {
        impl<$($param),*> $descriptor<$($param),*> {
            /// This descriptor with the type names `names` instead of Rust's type names
            /// ([`TypeNames`]).
            #[must_use]
            pub fn with_type_names(mut self, names: TypeNames) -> Self {
                self.type_names = Some(names);
                self
            }

            /// This descriptor with schema version `version` (default 0): recorded with the
            /// state in checkpoints and savepoints, and compared on restore, so that a restore
            /// into code that reads the values differently migrates them
            /// ([`with_migration`](Self::with_migration)) or fails by name, instead of
            /// decoding them wrongly.
            #[must_use]
            pub fn with_schema_version(mut self, version: u32) -> Self {
                self.schema_version = version;
                self
            }

            /// This descriptor with one more step of its schema history: a restored state of
            /// an older schema version is migrated through a chain of such steps when it is
            /// registered ([`crate::state::migration`]).
            #[must_use]
            pub fn with_migration(mut self, step: Migration) -> Self {
                self.migrations.push(step);
                self
            }

            /// The declared migration steps.
            pub fn migrations(&self) -> &Migrations {
                &self.migrations
            }
        }
    };
}

descriptor_options!(ValueStateDescriptor<K, N, V>);
descriptor_options!(ListStateDescriptor<K, N, T>);
descriptor_options!(MapStateDescriptor<K, N, UK, UV>);
descriptor_options!(ReducingStateDescriptor<K, N, V>);
descriptor_options!(AggregatingStateDescriptor<K, N, IN, ACC, OUT>);

//! Schema evolution: turning a restored state's rows, written by an older version of the code,
//! into the rows the current version reads.
//!
//! A descriptor declares its schema version (`with_schema_version`) and how each older version
//! becomes a newer one ([`Migration`]: a decoder for the old type plus a function, or "the
//! bytes stay" for a renamed type). A restored state registered at another version is
//! migrated once, at registration, before any handle can read it: the backend rewrites every
//! row through a [`RowMigration`] (heap: its restored rows; RocksDB: its column family, each
//! row written once; reference: its maps). The path is planned before a single row changes,
//! so a version without one ([`Error::NoMigrationPath`]) leaves the state as it was.
//!
//! Keys and namespaces keep their types: they decide key groups and row order, so a change
//! would move rows between instances. A restore that changes them is refused
//! ([`Error::IncompatibleMigration`]), as Flink refuses it.
//!
//! The codec (bincode) is not self-describing: it cannot add or drop a field by itself. A new
//! field with a default is therefore a migration from a struct without it:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use statebackend::state::Migration;
//! use statebackend::ValueStateDescriptor;
//!
//! #[derive(Serialize, Deserialize)]
//! struct CountV1 { n: u64 }
//! #[derive(Clone, Serialize, Deserialize)]
//! struct CountV2 { n: u64, last_seen: u64 }
//!
//! let counts = ValueStateDescriptor::<String, (), CountV2>::new("counts")
//!     .with_schema_version(2)
//!     .with_migration(Migration::new(1, 2, |old: CountV1| CountV2 { n: old.n, last_seen: 0 }));
//! ```

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::state::{StateInfo, StateKind};

/// An encoded value of one schema turned into an encoded value of the next.
type Rewrite = Arc<dyn Fn(&[u8]) -> std::result::Result<Vec<u8>, String> + Send + Sync>;

/// Where a map row's user key starts in its row key suffix (after the key and namespace).
type UserKeyStart = Arc<dyn Fn(&[u8]) -> std::result::Result<usize, String> + Send + Sync>;

/// One step of a state's schema history: how values of schema version `from` become values of
/// version `to`. "Values" are what the state stores per row: the value of a value or reducing
/// state, the accumulator of an aggregating state, each element of a list, each map value;
/// for maps also, optionally, the user keys ([`Migration::with_user_keys`]).
#[derive(Clone)]
pub struct Migration {
    from: u32,
    to: u32,
    value: Option<Rewrite>,
    user_key: Option<Rewrite>,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("rewrites_values", &self.value.is_some())
            .field("rewrites_user_keys", &self.user_key.is_some())
            .finish()
    }
}

/// Decodes an `Old`, applies `f`, encodes the `New`.
fn typed<Old, New>(f: impl Fn(Old) -> New + Send + Sync + 'static) -> Rewrite
where
    Old: DeserializeOwned,
    New: Serialize,
{
    Arc::new(move |bytes: &[u8]| {
        let codec = DefaultCodec::default();
        let old: Old = codec.decode(bytes).map_err(|e| e.0)?;
        codec.encode(&f(old)).map_err(|e| e.0)
    })
}

impl Migration {
    /// Values of version `from` decode as `Old`; `f` turns each into the `New` of version `to`.
    pub fn new<Old, New>(from: u32, to: u32, f: impl Fn(Old) -> New + Send + Sync + 'static) -> Self
    where
        Old: DeserializeOwned,
        New: Serialize,
    {
        Self {
            from,
            to,
            value: Some(typed(f)),
            user_key: None,
        }
    }

    /// Version `from` becomes `to` with the bytes unchanged: a renamed type, or new type names
    /// for the same encoding.
    pub fn same_encoding(from: u32, to: u32) -> Self {
        Self {
            from,
            to,
            value: None,
            user_key: None,
        }
    }

    /// This step, also turning a map state's user keys of type `Old` into `New` with `f`. The
    /// rows then move (their keys change), and two old keys mapped onto one new key are an
    /// error, as the map would lose one of them silently.
    #[must_use]
    pub fn with_user_keys<Old, New>(
        mut self,
        f: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Self
    where
        Old: DeserializeOwned,
        New: Serialize,
    {
        self.user_key = Some(typed(f));
        self
    }

    /// The version this step reads.
    pub fn from_version(&self) -> u32 {
        self.from
    }

    /// The version this step writes.
    pub fn to_version(&self) -> u32 {
        self.to
    }
}

/// A descriptor's migrations: the steps, and for map states where their user keys start.
#[derive(Clone, Default)]
pub struct Migrations {
    steps: Vec<Migration>,
    user_key_start: Option<UserKeyStart>,
}

impl Migrations {
    /// Adds a step.
    pub(crate) fn push(&mut self, step: Migration) {
        self.steps.push(step);
    }

    /// Whether no step is declared.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The declared steps, in declaration order.
    pub fn steps(&self) -> &[Migration] {
        &self.steps
    }

    /// These steps for a map state whose row keys are `K` then `N` then the user key, so that
    /// user key migrations can find it. Map registrations call it.
    pub(crate) fn for_map<K: DeserializeOwned + 'static, N: DeserializeOwned + 'static>(
        &self,
    ) -> Self {
        let mut this = self.clone();
        this.user_key_start = Some(Arc::new(|suffix: &[u8]| {
            let codec = DefaultCodec::default();
            let (_, key): (K, usize) = codec.decode_prefix(suffix).map_err(|e| e.0)?;
            let (_, namespace): (N, usize) =
                codec.decode_prefix(&suffix[key..]).map_err(|e| e.0)?;
            Ok(key + namespace)
        }));
        this
    }
}

/// The fewest steps leading from version `from` to `to` (breadth first over the declared
/// steps), if any.
fn shortest_path(steps: &[Migration], from: u32, to: u32) -> Option<Vec<Migration>> {
    use std::collections::{HashMap, VecDeque};
    // Version reached → the step that reached it first.
    let mut reached: HashMap<u32, Option<usize>> = HashMap::from([(from, None)]);
    let mut queue = VecDeque::from([from]);
    while let Some(at) = queue.pop_front() {
        if at == to {
            let mut path = Vec::new();
            let mut version = to;
            while let Some(Some(step)) = reached.get(&version) {
                path.push(steps[*step].clone());
                version = steps[*step].from;
            }
            path.reverse();
            return Some(path);
        }
        for (i, step) in steps.iter().enumerate() {
            if step.from == at && !reached.contains_key(&step.to) {
                reached.insert(step.to, Some(i));
                queue.push_back(step.to);
            }
        }
    }
    None
}

/// Where a chain from `from` gets stuck on its way to `to`, for the error message: the
/// reachable version closest below `to` (or the highest reachable one).
fn furthest_reachable(steps: &[Migration], from: u32, to: u32) -> u32 {
    let mut reached = vec![from];
    let mut i = 0;
    while i < reached.len() {
        let at = reached[i];
        for step in steps.iter().filter(|s| s.from == at) {
            if !reached.contains(&step.to) {
                reached.push(step.to);
            }
        }
        i += 1;
    }
    reached
        .iter()
        .copied()
        .filter(|&v| v <= to)
        .max()
        .unwrap_or_else(|| reached.iter().copied().max().unwrap_or(from))
}

/// The planned migration of one restored state, from its recorded schema to the registered
/// one: the steps in order, checked before any row changes.
pub struct RowMigration {
    from: StateInfo,
    to: StateInfo,
    steps: Vec<Migration>,
    user_key_start: Option<UserKeyStart>,
}

impl RowMigration {
    /// Plans the migration of a state restored as `from` into `to` through `migrations`.
    /// The result records `to`'s types and version with `from`'s time to live: a change of the
    /// time to live is registration's business, after the migration.
    ///
    /// # Errors
    /// [`Error::IncompatibleMigration`] if the kind, key or namespace type differs, or the user
    /// key type changes without a user key migration; [`Error::NoMigrationPath`] if no chain
    /// of steps leads from `from`'s version to `to`'s.
    pub fn plan(from: &StateInfo, to: &StateInfo, migrations: &Migrations) -> Result<Self> {
        let refuse = |reason: String| Error::IncompatibleMigration {
            state: to.name.clone(),
            from: from.schema_version,
            to: to.schema_version,
            reason,
        };
        if from.kind != to.kind {
            return Err(refuse(format!(
                "a {} state cannot become a {} state",
                from.kind, to.kind
            )));
        }
        for (what, old, new) in [
            ("key", &from.key_type, &to.key_type),
            ("namespace", &from.namespace_type, &to.namespace_type),
        ] {
            if old != new {
                return Err(refuse(format!(
                    "the {what} type changed from {old} to {new}: keys and namespaces decide \
                     key groups and row order, so they keep their types"
                )));
            }
        }
        let steps = shortest_path(&migrations.steps, from.schema_version, to.schema_version)
            .ok_or_else(|| Error::NoMigrationPath {
                state: to.name.clone(),
                from: from.schema_version,
                to: to.schema_version,
                stuck_at: furthest_reachable(
                    &migrations.steps,
                    from.schema_version,
                    to.schema_version,
                ),
            })?;
        let moves_keys = steps.iter().any(|s| s.user_key.is_some());
        if from.user_key_type != to.user_key_type && !moves_keys {
            return Err(refuse(format!(
                "the map user key type changed from {} to {} without a user key migration",
                from.user_key_type, to.user_key_type
            )));
        }
        if moves_keys && (from.kind != StateKind::Map || migrations.user_key_start.is_none()) {
            return Err(refuse(
                "user key migrations apply to map states only".into(),
            ));
        }
        let mut result = to.clone();
        result.ttl = from.ttl;
        Ok(Self {
            from: from.clone(),
            to: result,
            steps,
            user_key_start: migrations.user_key_start.clone(),
        })
    }

    /// The state's name.
    pub fn state(&self) -> &str {
        &self.to.name
    }

    /// What the state records once migrated: the registered types and version, the restored
    /// time to live.
    pub fn migrated_info(&self) -> &StateInfo {
        &self.to
    }

    /// What the state recorded before.
    pub fn restored_info(&self) -> &StateInfo {
        &self.from
    }

    /// Whether rows get new keys (a user key migration): backends then re-sort or move them.
    pub fn moves_rows(&self) -> bool {
        self.steps.iter().any(|s| s.user_key.is_some())
    }

    /// The error for a state that cannot migrate here: not restored, or registered since it
    /// was restored (handles issued then read the old layout).
    pub fn not_restored(&self) -> Error {
        Error::StateMismatch {
            name: self.to.name.clone(),
            registered: format!("{} (registered, not restored)", self.from.describe()),
            requested: self.to.describe(),
        }
    }

    /// The error for two rows that a user key migration gave one key.
    pub fn collision(&self) -> Error {
        self.failed(
            "a map",
            "two user keys migrate to one; the map would lose one of their values".into(),
        )
    }

    /// Migrates `rows` (one key group's `(suffix, value)` rows, in order) in place, keeping
    /// them sorted by suffix.
    ///
    /// # Errors
    /// As [`RowMigration::apply`]; [`RowMigration::collision`].
    pub fn apply_sorted(&self, rows: &mut [(Vec<u8>, Vec<u8>)]) -> Result<()> {
        for (suffix, value) in rows.iter_mut() {
            let (moved, migrated) = self.apply(suffix, value)?;
            *value = migrated;
            if let Some(moved) = moved {
                *suffix = moved;
            }
        }
        if self.moves_rows() {
            rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            if rows.windows(2).any(|w| w[0].0 == w[1].0) {
                return Err(self.collision());
            }
        }
        Ok(())
    }

    /// The error for a row that does not migrate.
    fn failed(&self, what: &str, message: String) -> Error {
        Error::Decode {
            state: self.to.name.clone(),
            message: format!(
                "{what} of schema version {} does not migrate to version {}: {message}",
                self.from.schema_version, self.to.schema_version
            ),
        }
    }

    /// Runs every step over one encoded value.
    fn value(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let mut current = bytes.to_vec();
        for step in &self.steps {
            if let Some(rewrite) = &step.value {
                current = rewrite(&current).map_err(|e| self.failed("a value", e))?;
            }
        }
        Ok(current)
    }

    /// One value, with the TTL timestamp in front kept if the state has a time to live.
    fn stamped_value(&self, bytes: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let body = if self.from.ttl.is_some() {
            let stamp = bytes
                .get(..8)
                .ok_or_else(|| self.failed("a value", "too short for its TTL timestamp".into()))?;
            out.extend_from_slice(stamp);
            &bytes[8..]
        } else {
            bytes
        };
        out.extend_from_slice(&self.value(body)?);
        Ok(())
    }

    /// The migrated row: a new row key suffix if the user key changed, and the new value.
    ///
    /// # Errors
    /// [`Error::Decode`] naming the state for a row that does not decode as the old version.
    pub fn apply(&self, suffix: &[u8], value: &[u8]) -> Result<(Option<Vec<u8>>, Vec<u8>)> {
        let mut out = Vec::with_capacity(value.len() + 8);
        if self.from.kind == StateKind::List {
            let mut at = 0;
            while at < value.len() {
                let len = value
                    .get(at..at + 4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                    .ok_or_else(|| self.failed("a list", "a truncated element length".into()))?;
                let element = value
                    .get(at + 4..at + 4 + len)
                    .ok_or_else(|| self.failed("a list", "an element overruns the row".into()))?;
                let start = out.len();
                out.extend_from_slice(&[0; 4]);
                self.stamped_value(element, &mut out)?;
                let new_len = u32::try_from(out.len() - start - 4)
                    .map_err(|_| self.failed("a list", "an element over 4 GiB".into()))?;
                out[start..start + 4].copy_from_slice(&new_len.to_le_bytes());
                at += 4 + len;
            }
        } else {
            self.stamped_value(value, &mut out)?;
        }
        let suffix = match (&self.user_key_start, self.moves_rows()) {
            (Some(start), true) => {
                let at = start(suffix).map_err(|e| self.failed("a row key", e))?;
                let mut user_key = suffix[at..].to_vec();
                for step in &self.steps {
                    if let Some(rewrite) = &step.user_key {
                        user_key = rewrite(&user_key).map_err(|e| self.failed("a user key", e))?;
                    }
                }
                let mut moved = suffix[..at].to_vec();
                moved.extend_from_slice(&user_key);
                Some(moved)
            }
            _ => None,
        };
        Ok((suffix, out))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Serialize, Deserialize)]
    struct V1 {
        a: u32,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V2 {
        a: u32,
        b: String,
    }

    fn info(kind: StateKind, version: u32) -> StateInfo {
        StateInfo::of::<u64, (), u8, V1>("s", kind).with_schema_version(version)
    }

    fn steps(list: Vec<Migration>) -> Migrations {
        let mut m = Migrations::default();
        for s in list {
            m.push(s);
        }
        m
    }

    #[test]
    fn a_chain_runs_every_step_in_order() {
        let m = steps(vec![
            Migration::new(2, 3, |v: V2| v.a + v.b.len() as u32),
            Migration::new(1, 2, |v: V1| V2 {
                a: v.a,
                b: "xy".into(),
            }),
        ]);
        let plan =
            RowMigration::plan(&info(StateKind::Value, 1), &info(StateKind::Value, 3), &m).unwrap();
        let codec = DefaultCodec::default();
        let (moved, value) = plan
            .apply(b"k", &codec.encode(&V1 { a: 5 }).unwrap())
            .unwrap();
        assert_eq!(moved, None);
        assert_eq!(codec.decode::<u32>(&value).unwrap(), 7);
    }

    #[test]
    fn a_missing_step_is_refused_before_any_row() {
        let m = steps(vec![Migration::new(1, 2, |v: V1| v.a)]);
        let err = RowMigration::plan(&info(StateKind::Value, 1), &info(StateKind::Value, 3), &m)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                Error::NoMigrationPath {
                    from: 1,
                    to: 3,
                    stuck_at: 2,
                    ..
                }
            ),
            "{err}"
        );
        // A cycle ends too.
        let m = steps(vec![
            Migration::same_encoding(1, 2),
            Migration::same_encoding(2, 1),
        ]);
        assert!(
            RowMigration::plan(&info(StateKind::Value, 1), &info(StateKind::Value, 3), &m).is_err()
        );
    }

    #[test]
    fn the_shortest_declared_path_is_taken() {
        // 1 → 2 has no way on; 1 → 3 does.
        let m = steps(vec![
            Migration::new(1, 2, |v: V1| v.a),
            Migration::same_encoding(1, 3),
            Migration::same_encoding(3, 4),
        ]);
        let plan =
            RowMigration::plan(&info(StateKind::Value, 1), &info(StateKind::Value, 4), &m).unwrap();
        let codec = DefaultCodec::default();
        let bytes = codec.encode(&V1 { a: 9 }).unwrap();
        assert_eq!(plan.apply(b"k", &bytes).unwrap().1, bytes);
    }

    #[test]
    fn keys_and_namespaces_keep_their_types() {
        let mut to = info(StateKind::Value, 2);
        to.key_type = "other".into();
        let m = steps(vec![Migration::same_encoding(1, 2)]);
        let err = RowMigration::plan(&info(StateKind::Value, 1), &to, &m)
            .err()
            .unwrap();
        assert!(matches!(err, Error::IncompatibleMigration { .. }), "{err}");
    }

    #[test]
    fn list_elements_migrate_one_by_one_with_their_timestamps() {
        let codec = DefaultCodec::default();
        let mut from = info(StateKind::List, 1);
        from.ttl = Some(crate::model::state::ttl::StateTtlConfig::new(
            std::time::Duration::from_secs(1),
        ));
        let m = steps(vec![Migration::new(1, 2, |v: V1| V2 {
            a: v.a,
            b: String::new(),
        })]);
        let plan = RowMigration::plan(&from, &info(StateKind::List, 2), &m).unwrap();
        assert!(plan.migrated_info().ttl.is_some());
        let mut row = Vec::new();
        for (ts, a) in [(7u64, 1u32), (9, 2)] {
            let mut element = ts.to_le_bytes().to_vec();
            element.extend(codec.encode(&V1 { a }).unwrap());
            row.extend((element.len() as u32).to_le_bytes());
            row.extend(element);
        }
        let (_, migrated) = plan.apply(b"", &row).unwrap();
        let mut expected = Vec::new();
        for (ts, a) in [(7u64, 1u32), (9, 2)] {
            let mut element = ts.to_le_bytes().to_vec();
            element.extend(
                codec
                    .encode(&V2 {
                        a,
                        b: String::new(),
                    })
                    .unwrap(),
            );
            expected.extend((element.len() as u32).to_le_bytes());
            expected.extend(element);
        }
        assert_eq!(migrated, expected);
        // A truncated row is a decode error, not a panic.
        assert!(plan.apply(b"", &row[..row.len() - 1]).is_err());
    }
}

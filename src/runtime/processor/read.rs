//! Reading a snapshot's state as typed values, per key group, without a backend; and typed
//! row functions for [`super::SavepointRewrite::change_rows`] ([`typed`]).

use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::migration::{Migrations, RowMigration};
use crate::model::state::operator::OperatorState;
use crate::model::state::rows::decode_list;
use crate::model::state::ttl::TtlChange;
use crate::model::state::{
    AggregatingStateDescriptor, ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor,
    StateInfo, StateKey, StateValue, ValueStateDescriptor,
};
use crate::runtime::processor::source::SnapshotFiles;

fn decode_error(state: &str) -> impl Fn(crate::model::codec::CodecError) -> Error + '_ {
    move |e| Error::Decode {
        state: state.to_owned(),
        message: e.0,
    }
}

/// Splits a row key suffix into key, namespace and the bytes after them (a map's user key).
fn split_suffix<'a, K: StateKey, N: StateKey>(
    state: &str,
    suffix: &'a [u8],
) -> Result<(K, N, &'a [u8])> {
    let codec = DefaultCodec::default();
    let (key, used): (K, usize) = codec.decode_prefix(suffix).map_err(decode_error(state))?;
    let (namespace, more): (N, usize) = codec
        .decode_prefix(&suffix[used..])
        .map_err(decode_error(state))?;
    Ok((key, namespace, &suffix[used + more..]))
}

impl SnapshotFiles {
    /// Calls `f(key group, row key suffix, value)` for every row of `operator`'s state as
    /// `info` (migrated through `migrations` if it was written at another schema version, its
    /// TTL timestamps removed), in key-group order.
    fn read_rows(
        &self,
        operator: &str,
        info: &StateInfo,
        migrations: &Migrations,
        f: &mut dyn FnMut(KeyGroup, &[u8], &[u8]) -> Result<()>,
    ) -> Result<u64> {
        let states = self.states(operator)?;
        let Some(stored) = states.iter().find(|s| s.name == info.name) else {
            return Err(Error::UnknownStateName {
                state: info.name.clone(),
                operator: operator.to_owned(),
                found: states.iter().map(|s| s.name.clone()).collect(),
            });
        };
        let migration = if stored.same_but_ttl(info) {
            None
        } else if stored.schema_version != info.schema_version {
            Some(RowMigration::plan(stored, info, migrations)?)
        } else {
            return Err(Error::StateMismatch {
                name: info.name.clone(),
                registered: stored.describe(),
                requested: info.describe(),
            });
        };
        let strip = stored.ttl.is_some().then_some(TtlChange::Strip);
        let mut count = 0;
        for (index, _) in self.instances(operator)? {
            let mut reader = self.reader(index)?;
            let Some(wanted) = reader
                .header()
                .states
                .iter()
                .position(|s| s.name == info.name)
            else {
                continue;
            };
            let groups: Vec<KeyGroup> = reader.index().iter().map(|e| e.key_group).collect();
            for group in groups {
                // A key group at a time: a migration that moves map rows re-sorts them and
                // refuses two rows migrating onto one key, as a backend's does.
                let mut rows = Vec::new();
                reader.read_key_group(group, &mut |state, suffix, value| {
                    if state as usize == wanted {
                        rows.push((suffix.to_vec(), value.to_vec()));
                    }
                    Ok(())
                })?;
                if let Some(m) = &migration {
                    m.apply_sorted(&mut rows)?;
                }
                for (suffix, value) in rows {
                    let value = match strip {
                        Some(strip) => strip.apply_to_row(stored, &value)?,
                        None => value,
                    };
                    count += 1;
                    f(group, &suffix, &value)?;
                }
            }
        }
        Ok(count)
    }

    /// Reads one value per row of a value, reducing or aggregating state.
    fn read_cells<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        operator: &str,
        info: &StateInfo,
        migrations: &Migrations,
        f: &mut dyn FnMut(KeyGroup, K, N, V) -> Result<()>,
    ) -> Result<u64> {
        let name = info.name.clone();
        self.read_rows(operator, info, migrations, &mut |group, suffix, value| {
            let (key, namespace, _) = split_suffix::<K, N>(&name, suffix)?;
            let value = DefaultCodec::default()
                .decode(value)
                .map_err(decode_error(&name))?;
            f(group, key, namespace, value)
        })
    }

    /// Calls `f(key group, key, namespace, value)` for every entry of value state
    /// `descriptor` of `operator`, in key-group order; returns how many. A state written at an
    /// older schema version is read through the descriptor's migrations; TTL timestamps are
    /// left out (expired entries a savepoint holds are read too).
    ///
    /// # Errors
    /// [`Error::OperatorNotFound`], [`Error::UnknownStateName`]; [`Error::StateMismatch`] for
    /// another kind or types; migration errors; [`Error::Decode`]; what `f` returns.
    pub fn read_values<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        operator: &str,
        descriptor: &ValueStateDescriptor<K, N, V>,
        mut f: impl FnMut(KeyGroup, K, N, V) -> Result<()>,
    ) -> Result<u64> {
        self.read_cells(
            operator,
            &descriptor.info(),
            descriptor.migrations(),
            &mut f,
        )
    }

    /// [`SnapshotFiles::read_values`] for a reducing state.
    ///
    /// # Errors
    /// As [`SnapshotFiles::read_values`].
    pub fn read_reducing<K: StateKey, N: StateKey, V: StateValue>(
        &self,
        operator: &str,
        descriptor: &ReducingStateDescriptor<K, N, V>,
        mut f: impl FnMut(KeyGroup, K, N, V) -> Result<()>,
    ) -> Result<u64> {
        self.read_cells(
            operator,
            &descriptor.info(),
            descriptor.migrations(),
            &mut f,
        )
    }

    /// [`SnapshotFiles::read_values`] for an aggregating state: its accumulators.
    ///
    /// # Errors
    /// As [`SnapshotFiles::read_values`].
    pub fn read_accumulators<K: StateKey, N: StateKey, IN, ACC: StateValue, OUT>(
        &self,
        operator: &str,
        descriptor: &AggregatingStateDescriptor<K, N, IN, ACC, OUT>,
        mut f: impl FnMut(KeyGroup, K, N, ACC) -> Result<()>,
    ) -> Result<u64> {
        self.read_cells(
            operator,
            &descriptor.info(),
            descriptor.migrations(),
            &mut f,
        )
    }

    /// Calls `f(key group, key, namespace, elements)` for every list of list state
    /// `descriptor` of `operator`.
    ///
    /// # Errors
    /// As [`SnapshotFiles::read_values`].
    pub fn read_lists<K: StateKey, N: StateKey, T: StateValue>(
        &self,
        operator: &str,
        descriptor: &ListStateDescriptor<K, N, T>,
        mut f: impl FnMut(KeyGroup, K, N, Vec<T>) -> Result<()>,
    ) -> Result<u64> {
        let info = descriptor.info();
        let name = info.name.clone();
        self.read_rows(
            operator,
            &info,
            descriptor.migrations(),
            &mut |group, suffix, value| {
                let (key, namespace, _) = split_suffix::<K, N>(&name, suffix)?;
                let list =
                    decode_list(&DefaultCodec::default(), value).map_err(decode_error(&name))?;
                f(group, key, namespace, list)
            },
        )
    }

    /// Calls `f(key group, key, namespace, user key, value)` for every entry of map state
    /// `descriptor` of `operator`.
    ///
    /// # Errors
    /// As [`SnapshotFiles::read_values`].
    pub fn read_maps<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        &self,
        operator: &str,
        descriptor: &MapStateDescriptor<K, N, UK, UV>,
        mut f: impl FnMut(KeyGroup, K, N, UK, UV) -> Result<()>,
    ) -> Result<u64> {
        let info = descriptor.info();
        let name = info.name.clone();
        let migrations = descriptor.migrations().for_map::<K, N>();
        self.read_rows(operator, &info, &migrations, &mut |group, suffix, value| {
            let (key, namespace, user_key) = split_suffix::<K, N>(&name, suffix)?;
            let codec = DefaultCodec::default();
            let user_key = codec.decode(user_key).map_err(decode_error(&name))?;
            let value = codec.decode(value).map_err(decode_error(&name))?;
            f(group, key, namespace, user_key, value)
        })
    }

    /// The operator state of `operator`, all instances' parts together (as one instance would
    /// restore it at parallelism 1).
    ///
    /// # Errors
    /// [`Error::OperatorNotFound`]; [`Error::InvalidMaxParallelism`] for a damaged snapshot.
    pub fn operator_state(&self, operator: &str) -> Result<OperatorState> {
        let meta = self.meta().for_operator(operator)?;
        let max_parallelism = meta.instances[0].max_parallelism;
        Ok(meta.operator_state_for_instance(KeyGroupRange::all(max_parallelism)?, Some(1)))
    }
}

/// Typed row functions for [`super::SavepointRewrite::change_rows`]: decode each row as the
/// state's types, call the user's function, encode what it returns (`None` drops the row).
/// For states without a time to live.
pub mod typed {
    use std::sync::Arc;

    use super::{decode_error, split_suffix};
    use crate::model::codec::{Codec, DefaultCodec};
    use crate::model::error::Error;
    use crate::model::state::rows::{decode_list, encode_list_element};
    use crate::model::state::{StateKey, StateValue};
    use crate::runtime::processor::source::RowFn;

    fn encode_error(state: &str) -> impl Fn(crate::model::codec::CodecError) -> Error + '_ {
        move |e| Error::Encode {
            state: state.to_owned(),
            message: e.0,
        }
    }

    /// For a value, reducing or aggregating state `state` of `K`, `N`, `V`: `f(key, namespace,
    /// value)` gives the value written, or `None` to drop the entry.
    pub fn values<K: StateKey, N: StateKey, V: StateValue>(
        state: &str,
        f: impl Fn(&K, &N, V) -> Option<V> + Send + Sync + 'static,
    ) -> RowFn {
        let state = state.to_owned();
        Arc::new(move |suffix: &[u8], value: &[u8]| {
            let (key, namespace, _) = split_suffix::<K, N>(&state, suffix)?;
            let codec = DefaultCodec::default();
            let value: V = codec.decode(value).map_err(decode_error(&state))?;
            f(&key, &namespace, value)
                .map(|v| codec.encode(&v).map_err(encode_error(&state)))
                .transpose()
        })
    }

    /// For a list state: `f(key, namespace, elements)` gives the list written; `None` or an
    /// empty list drops it.
    pub fn lists<K: StateKey, N: StateKey, T: StateValue>(
        state: &str,
        f: impl Fn(&K, &N, Vec<T>) -> Option<Vec<T>> + Send + Sync + 'static,
    ) -> RowFn {
        let state = state.to_owned();
        Arc::new(move |suffix: &[u8], value: &[u8]| {
            let (key, namespace, _) = split_suffix::<K, N>(&state, suffix)?;
            let codec = DefaultCodec::default();
            let list: Vec<T> = decode_list(&codec, value).map_err(decode_error(&state))?;
            let Some(list) = f(&key, &namespace, list).filter(|l| !l.is_empty()) else {
                return Ok(None);
            };
            let mut out = Vec::new();
            for element in &list {
                encode_list_element(&codec, element, &mut out).map_err(encode_error(&state))?;
            }
            Ok(Some(out))
        })
    }

    /// For a map state: `f(key, namespace, user key, value)` gives the value written, or
    /// `None` to drop the entry.
    pub fn map_entries<K: StateKey, N: StateKey, UK: StateKey, UV: StateValue>(
        state: &str,
        f: impl Fn(&K, &N, &UK, UV) -> Option<UV> + Send + Sync + 'static,
    ) -> RowFn {
        let state = state.to_owned();
        Arc::new(move |suffix: &[u8], value: &[u8]| {
            let (key, namespace, user_key) = split_suffix::<K, N>(&state, suffix)?;
            let codec = DefaultCodec::default();
            let user_key: UK = codec.decode(user_key).map_err(decode_error(&state))?;
            let value: UV = codec.decode(value).map_err(decode_error(&state))?;
            f(&key, &namespace, &user_key, value)
                .map(|v| codec.encode(&v).map_err(encode_error(&state)))
                .transpose()
        })
    }
}

//! The conformance suite: the behaviour of every state kind, specified once, run by every
//! backend. A backend's test file calls `conformance_suite!(|max_parallelism, range| open(..))`.

use statebackend::state::KeyContext;
use statebackend::{
    AggregatingStateDescriptor, Error, KeyGroupAssigner, KeyGroupRange, KeyedStateBackend,
    ListStateDescriptor, MapStateDescriptor, ReducingStateDescriptor, Result, StateKind,
    ValueStateDescriptor,
};

use super::model::{Average, Handles, Model, Observation, OpGenerator, apply};

/// A key of `backend`'s range: the first `user-{i}` that hashes into it.
pub fn owned_key<B: KeyedStateBackend>(backend: &B, skip: usize) -> String {
    let range = backend.key_group_range();
    (0..)
        .map(|i| format!("user-{i}"))
        .filter(|k| range.contains(backend.key_group_of(k).unwrap()))
        .nth(skip)
        .unwrap()
}

pub fn value_state_put_get_clear<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let s = b.value_state(&ValueStateDescriptor::<String, (), u64>::new("counts"))?;
    let (k1, k2) = (owned_key(&b, 0), owned_key(&b, 1));
    assert_eq!(s.get(&b, &k1, &())?, None);
    s.put(&mut b, &k1, &(), 1)?;
    s.put(&mut b, &k2, &(), 2)?;
    s.put(&mut b, &k1, &(), 10)?;
    assert_eq!(s.get(&b, &k1, &())?, Some(10));
    assert_eq!(s.get(&b, &k2, &())?, Some(2));
    s.clear(&mut b, &k1, &())?;
    assert_eq!(s.get(&b, &k1, &())?, None);
    assert_eq!(s.get(&b, &k2, &())?, Some(2));
    Ok(())
}

pub fn namespaces_are_independent<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let s = b.value_state(&ValueStateDescriptor::<String, (u64, u64), String>::new(
        "window-sums",
    ))?;
    let k = owned_key(&b, 0);
    let (w1, w2) = ((0u64, 60u64), (60u64, 120u64));
    s.put(&mut b, &k, &w1, "first".into())?;
    s.put(&mut b, &k, &w2, "second".into())?;
    assert_eq!(s.get(&b, &k, &w1)?.as_deref(), Some("first"));
    assert_eq!(s.get(&b, &k, &w2)?.as_deref(), Some("second"));
    s.clear(&mut b, &k, &w1)?;
    assert_eq!(s.get(&b, &k, &w1)?, None);
    assert_eq!(s.get(&b, &k, &w2)?.as_deref(), Some("second"));
    let in_w2: Vec<_> = b
        .keys::<String, (u64, u64)>(s.id(), Some(&w2))?
        .collect::<Result<_>>()?;
    assert_eq!(in_w2, vec![(k.clone(), w2)]);
    assert_eq!(b.keys::<String, (u64, u64)>(s.id(), Some(&w1))?.count(), 0);
    Ok(())
}

pub fn list_state_append_replace_clear<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let s = b.list_state(&ListStateDescriptor::<String, (), i32>::new("events"))?;
    let k = owned_key(&b, 0);
    assert!(s.get(&b, &k, &())?.is_empty());
    for v in [3, 1, 2] {
        s.append(&mut b, &k, &(), v)?;
    }
    assert_eq!(s.get(&b, &k, &())?, vec![3, 1, 2]);
    s.replace(&mut b, &k, &(), vec![9, 8])?;
    assert_eq!(s.get(&b, &k, &())?, vec![9, 8]);
    s.append(&mut b, &k, &(), 7)?;
    assert_eq!(s.get(&b, &k, &())?, vec![9, 8, 7]);
    s.clear(&mut b, &k, &())?;
    assert!(s.get(&b, &k, &())?.is_empty());
    s.replace(&mut b, &k, &(), vec![])?;
    assert_eq!(b.keys::<String, ()>(s.id(), None)?.count(), 0);
    Ok(())
}

pub fn map_state_operations<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let s = b.map_state(&MapStateDescriptor::<String, (), String, u32>::new("pages"))?;
    let (k, other) = (owned_key(&b, 0), owned_key(&b, 1));
    assert!(s.is_empty(&b, &k, &())?);
    s.put(&mut b, &k, &(), "/a".into(), 1)?;
    s.put(&mut b, &k, &(), "/b".into(), 2)?;
    s.put(&mut b, &k, &(), "/a".into(), 3)?;
    s.put(&mut b, &other, &(), "/z".into(), 26)?;
    assert_eq!(s.get(&b, &k, &(), &"/a".into())?, Some(3));
    assert_eq!(s.get(&b, &k, &(), &"/c".into())?, None);
    assert!(s.contains(&b, &k, &(), &"/b".into())?);
    assert!(!s.contains(&b, &k, &(), &"/z".into())?);
    let mut entries: Vec<_> = s.entries(&b, &k, &())?.collect::<Result<_>>()?;
    entries.sort();
    assert_eq!(entries, vec![("/a".to_string(), 3), ("/b".to_string(), 2)]);
    let mut keys: Vec<_> = s.keys(&b, &k, &())?.collect::<Result<_>>()?;
    keys.sort();
    assert_eq!(keys, vec!["/a".to_string(), "/b".to_string()]);
    let mut values: Vec<_> = s.values(&b, &k, &())?.collect::<Result<_>>()?;
    values.sort();
    assert_eq!(values, vec![2, 3]);
    s.remove(&mut b, &k, &(), &"/a".into())?;
    assert_eq!(s.get(&b, &k, &(), &"/a".into())?, None);
    assert!(!s.is_empty(&b, &k, &())?);
    s.clear(&mut b, &k, &())?;
    assert!(s.is_empty(&b, &k, &())?);
    assert_eq!(s.get(&b, &other, &(), &"/z".into())?, Some(26));
    let keys: Vec<_> = b.keys::<String, ()>(s.id(), None)?.collect::<Result<_>>()?;
    assert_eq!(keys, vec![(other, ())]);
    Ok(())
}

pub fn reducing_state_folds<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let s = b.reducing_state(&ReducingStateDescriptor::<String, (), i64>::new(
        "max",
        |a, b| *a.max(b),
    ))?;
    let k = owned_key(&b, 0);
    assert_eq!(s.get(&b, &k, &())?, None);
    for v in [5, -3, 12, 7] {
        s.add(&mut b, &k, &(), v)?;
    }
    assert_eq!(s.get(&b, &k, &())?, Some(12));
    s.clear(&mut b, &k, &())?;
    s.add(&mut b, &k, &(), -3)?;
    assert_eq!(s.get(&b, &k, &())?, Some(-3));
    Ok(())
}

pub fn aggregating_state_folds<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let s = b.aggregating_state(&AggregatingStateDescriptor::<
        String,
        u8,
        i64,
        (i64, u64),
        i64,
    >::new("avg", Average))?;
    let k = owned_key(&b, 0);
    assert_eq!(s.get(&b, &k, &0)?, None);
    for v in [10, 20, 60] {
        s.add(&mut b, &k, &0, &v)?;
    }
    s.add(&mut b, &k, &1, &-4)?;
    assert_eq!(s.get(&b, &k, &0)?, Some(30));
    assert_eq!(s.get(&b, &k, &1)?, Some(-4));
    s.clear(&mut b, &k, &0)?;
    assert_eq!(s.get(&b, &k, &0)?, None);
    Ok(())
}

pub fn registration_checks_kind_and_types<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let first = b.value_state(&ValueStateDescriptor::<String, (), u64>::new("s"))?;
    let again = b.value_state(&ValueStateDescriptor::<String, (), u64>::new("s"))?;
    assert_eq!(
        first.id(),
        again.id(),
        "same descriptor gives the same state"
    );
    let other_type = b.value_state(&ValueStateDescriptor::<String, (), i32>::new("s"));
    assert!(matches!(other_type, Err(Error::StateMismatch { ref name, .. }) if name == "s"));
    let other_kind = b.list_state(&ListStateDescriptor::<String, (), u64>::new("s"));
    assert!(matches!(other_kind, Err(Error::StateMismatch { .. })));
    let other_key = b.value_state(&ValueStateDescriptor::<u64, (), u64>::new("s"));
    assert!(matches!(other_key, Err(Error::StateMismatch { .. })));
    let empty = b.value_state(&ValueStateDescriptor::<String, (), u64>::new(""));
    assert!(matches!(empty, Err(Error::InvalidStateName { .. })));
    let infos = b.states();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].kind, StateKind::Value);
    Ok(())
}

/// `b` must own only part of the key groups.
pub fn key_outside_range_is_an_error<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let range = b.key_group_range();
    assert!(range.len() < b.assigner().max_parallelism());
    let s = b.value_state(&ValueStateDescriptor::<String, (), u64>::new("s"))?;
    let foreign = (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| !range.contains(b.key_group_of(k).unwrap()))
        .unwrap();
    let put = s.put(&mut b, &foreign, &(), 1);
    assert!(matches!(put, Err(Error::KeyOutsideRange { range: r, .. }) if r == range));
    assert!(matches!(
        s.get(&b, &foreign, &()),
        Err(Error::KeyOutsideRange { .. })
    ));
    let own = owned_key(&b, 0);
    s.put(&mut b, &own, &(), 1)?;
    assert_eq!(s.get(&b, &own, &())?, Some(1));
    Ok(())
}

/// A key context (key group computed once) reads and writes exactly what the key itself does,
/// for every kind; it is refused for a key the backend does not own, and a context made under
/// another max parallelism or for another instance's key group is refused by every operation.
pub fn key_context_is_the_key<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let range = b.key_group_range();
    let value = b.value_state(&ValueStateDescriptor::<String, u32, u64>::new("value"))?;
    let list = b.list_state(&ListStateDescriptor::<String, u32, u8>::new("list"))?;
    let map = b.map_state(&MapStateDescriptor::<String, u32, u16, i32>::new("map"))?;
    let sum = b.reducing_state(&ReducingStateDescriptor::<String, u32, u64>::new(
        "sum",
        |a: &u64, b: &u64| a + b,
    ))?;
    for skip in 0..3 {
        let key = owned_key(&b, skip);
        let context = b.key_context(key.clone())?;
        assert_eq!(context.key(), &key);
        assert_eq!(context.key_group(), b.key_group_of(&key)?);
        value.put(&mut b, &context, &1, 10 + skip as u64)?;
        list.append(&mut b, &context, &1, 1)?;
        list.append(&mut b, &key, &1, 2)?;
        map.put(&mut b, &context, &2, 7, -7)?;
        sum.add(&mut b, &context, &3, 5)?;
        sum.add(&mut b, &key, &3, 6)?;
        assert_eq!(value.get(&b, &key, &1)?, Some(10 + skip as u64));
        assert_eq!(list.get(&b, &context, &1)?, vec![1, 2]);
        assert_eq!(map.get(&b, &key, &2, &7)?, Some(-7));
        assert_eq!(sum.get(&b, &context, &3)?, Some(11));
        value.clear(&mut b, &context, &1)?;
        assert_eq!(value.get(&b, &key, &1)?, None);
    }
    let foreign = (0..)
        .map(|i| format!("user-{i}"))
        .find(|k| !range.contains(b.key_group_of(k).unwrap()));
    if let Some(foreign) = foreign {
        assert!(matches!(
            b.key_context(foreign.clone()),
            Err(Error::KeyOutsideRange { .. })
        ));
        // Made where the key is owned, used here: refused by the operation.
        let elsewhere = KeyContext::new(foreign, b.assigner())?;
        assert!(matches!(
            value.put(&mut b, &elsewhere, &1, 1),
            Err(Error::KeyOutsideRange { .. })
        ));
    }
    let other_parallelism = KeyContext::new(owned_key(&b, 0), KeyGroupAssigner::new(256)?)?;
    assert!(matches!(
        value.get(&b, &other_parallelism, &1),
        Err(Error::Incompatible { .. })
    ));
    Ok(())
}

/// `update` inserts, changes and removes in one call, `with` reads without copying out, on
/// every backend; reducing and aggregating states (built on `update`) fold the same as before.
pub fn update_and_with_read_modify_write<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let s = b.value_state(&ValueStateDescriptor::<String, u32, Vec<u64>>::new("v"))?;
    let key = owned_key(&b, 0);
    s.update(&mut b, &key, &1, |old| {
        assert!(old.is_none());
        Some(vec![1])
    })?;
    let context = b.key_context(key.clone())?;
    s.update(&mut b, &context, &1, |old| {
        let mut next = old.cloned().unwrap();
        next.push(2);
        Some(next)
    })?;
    assert_eq!(s.get(&b, &key, &1)?, Some(vec![1, 2]));
    assert_eq!(s.with(&b, &context, &1, |v| v.map(Vec::len))?, Some(2));
    assert!(s.with(&b, &key, &2, |v| v.is_none())?);
    // Another namespace is another value; `None` removes.
    s.update(&mut b, &key, &2, |_| Some(vec![9]))?;
    s.update(&mut b, &key, &1, |_| None)?;
    assert_eq!(s.get(&b, &key, &1)?, None);
    assert_eq!(s.get(&b, &key, &2)?, Some(vec![9]));
    s.update(&mut b, &key, &3, |_| None)?;
    assert_eq!(s.get(&b, &key, &3)?, None);
    let keys: Vec<_> = b
        .keys::<String, u32>(s.id(), None)?
        .collect::<Result<_>>()?;
    assert_eq!(keys, vec![(key.clone(), 2)]);
    Ok(())
}

/// `get_many` returns what `get` returns for each key, in order, missing keys as `None`; a key
/// of another instance fails the call.
pub fn get_many_is_get_per_key<B: KeyedStateBackend>(mut b: B) -> Result<()> {
    let s = b.value_state(&ValueStateDescriptor::<String, u8, u64>::new("v"))?;
    let keys: Vec<String> = (0..40).map(|i| owned_key(&b, i)).collect();
    for (i, key) in keys.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        s.put(&mut b, key, &1, i as u64)?;
    }
    let many = s.get_many(&b, &keys, &1)?;
    let each: Vec<Option<u64>> = keys
        .iter()
        .map(|k| s.get(&b, k, &1))
        .collect::<Result<_>>()?;
    assert_eq!(many, each);
    assert_eq!(many.iter().filter(|v| v.is_none()).count(), 14);
    assert!(s.get_many(&b, &keys, &2)?.iter().all(Option::is_none));
    let contexts: Vec<_> = keys
        .iter()
        .map(|k| b.key_context(k.clone()))
        .collect::<Result<_>>()?;
    assert_eq!(s.get_many(&b, &contexts, &1)?, each);
    let range = b.key_group_range();
    if let Some(foreign) = (0..)
        .map(|i| format!("user-{i}"))
        .take(10_000)
        .find(|k| !range.contains(b.key_group_of(k).unwrap()))
    {
        let mixed = [keys[0].clone(), foreign];
        assert!(matches!(
            s.get_many(&b, &mixed, &1),
            Err(Error::KeyOutsideRange { .. })
        ));
    }
    Ok(())
}

/// Random operations against the `BTreeMap` model, every read compared.
pub fn model_based_random_operations<B: KeyedStateBackend>(
    mut b: B,
    seed: u64,
    ops: usize,
) -> Result<()> {
    let handles = Handles::register(&mut b)?;
    let range = b.key_group_range();
    let mut generator = OpGenerator::new(seed, 40, |k| range.contains(b.key_group_of(k).unwrap()));
    let mut model = Model::default();
    for step in 0..ops {
        let op = generator.next_op();
        let expected = model.apply(&op);
        let actual = apply(&mut b, &handles, &op)?;
        assert_eq!(actual, expected, "step {step}: {op:?}");
    }
    for op in model.full_read_ops() {
        let expected = model.apply(&op);
        assert_eq!(apply(&mut b, &handles, &op)?, expected, "final read {op:?}");
        assert_ne!(expected, Observation::None);
    }
    Ok(())
}

/// A range of part of the key groups, for tests that need foreign keys.
pub fn partial_range() -> KeyGroupRange {
    KeyGroupRange::for_operator(128, 4, 1).unwrap()
}

/// Expands to one `#[test]` per conformance scenario for the backend `$make` opens:
/// `$make(max_parallelism, range)` returns a fresh backend.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        use $crate::common::conformance as suite;
        fn open(range: statebackend::KeyGroupRange) -> impl statebackend::KeyedStateBackend {
            let make = $make;
            make(128, range)
        }
        fn all() -> statebackend::KeyGroupRange {
            statebackend::KeyGroupRange::all(128).unwrap()
        }
        #[test]
        fn value_state_put_get_clear() -> statebackend::Result<()> {
            suite::value_state_put_get_clear(open(all()))
        }
        #[test]
        fn value_state_in_partial_range() -> statebackend::Result<()> {
            suite::value_state_put_get_clear(open(suite::partial_range()))
        }
        #[test]
        fn namespaces_are_independent() -> statebackend::Result<()> {
            suite::namespaces_are_independent(open(all()))
        }
        #[test]
        fn list_state_append_replace_clear() -> statebackend::Result<()> {
            suite::list_state_append_replace_clear(open(all()))
        }
        #[test]
        fn map_state_operations() -> statebackend::Result<()> {
            suite::map_state_operations(open(all()))
        }
        #[test]
        fn reducing_state_folds() -> statebackend::Result<()> {
            suite::reducing_state_folds(open(all()))
        }
        #[test]
        fn aggregating_state_folds() -> statebackend::Result<()> {
            suite::aggregating_state_folds(open(all()))
        }
        #[test]
        fn registration_checks_kind_and_types() -> statebackend::Result<()> {
            suite::registration_checks_kind_and_types(open(all()))
        }
        #[test]
        fn key_outside_range_is_an_error() -> statebackend::Result<()> {
            suite::key_outside_range_is_an_error(open(suite::partial_range()))
        }
        #[test]
        fn key_context_is_the_key() -> statebackend::Result<()> {
            suite::key_context_is_the_key(open(suite::partial_range()))
        }
        #[test]
        fn update_and_with_read_modify_write() -> statebackend::Result<()> {
            suite::update_and_with_read_modify_write(open(suite::partial_range()))
        }
        #[test]
        fn get_many_is_get_per_key() -> statebackend::Result<()> {
            suite::get_many_is_get_per_key(open(suite::partial_range()))
        }
        #[test]
        fn model_based_random_operations() -> statebackend::Result<()> {
            for seed in 1..=4 {
                suite::model_based_random_operations(open(all()), seed, 2_500)?;
            }
            suite::model_based_random_operations(open(suite::partial_range()), 99, 2_500)
        }
    };
}

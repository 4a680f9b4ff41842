//! Schema evolution: restored states migrated to the registered schema version on every
//! backend, through savepoints and checkpoints. Added and removed fields, a renamed type, a
//! representation changed by a function, chains of versions, map user keys, TTL timestamps
//! kept; and refusals that leave the restored state (and the snapshot) untouched.
use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::checkpointing::{config_in, kinds, scratch};
use serde::{Deserialize, Serialize};
use statebackend::state::Migration;
use statebackend::state::ttl::StateTtlConfig;
use statebackend::{
    AnyBackend, Error, KeyGroupRange, KeyedStateBackend, ListStateDescriptor, MapStateDescriptor,
    Result, ValueStateDescriptor,
};

use super::schema_versions::restore;

fn all() -> KeyGroupRange {
    KeyGroupRange::all(128).unwrap()
}

/// Version 1 of a user's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserV1 {
    name: String,
    visits: u32,
}

/// Version 2: a field added.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserV2 {
    name: String,
    visits: u32,
    country: String,
}

/// Version 3: `name` removed, `visits` widened by a function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct UserV3 {
    visits: u64,
    country: String,
}

mod before {
    /// A type as an old release named it.
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Price {
        pub cents: u64,
    }
}

mod after {
    /// The same encoding under a new name.
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Amount {
        pub cents: u64,
    }
}

fn v1_users() -> ValueStateDescriptor<u64, (), UserV1> {
    ValueStateDescriptor::new("users").with_schema_version(1)
}

fn v3_users() -> ValueStateDescriptor<u64, (), UserV3> {
    ValueStateDescriptor::new("users")
        .with_schema_version(3)
        .with_migration(Migration::new(2, 3, |u: UserV2| UserV3 {
            visits: u64::from(u.visits) * 10,
            country: u.country,
        }))
        .with_migration(Migration::new(1, 2, |u: UserV1| UserV2 {
            name: u.name,
            visits: u.visits,
            country: "unknown".into(),
        }))
}

fn v1_events() -> ListStateDescriptor<u64, (), u32> {
    ListStateDescriptor::new("events").with_schema_version(1)
}

fn v2_events() -> ListStateDescriptor<u64, (), i64> {
    ListStateDescriptor::new("events")
        .with_schema_version(2)
        .with_migration(Migration::new(1, 2, |e: u32| -i64::from(e)))
}

fn v1_prices() -> MapStateDescriptor<u64, (), u32, before::Price> {
    MapStateDescriptor::new("prices").with_schema_version(1)
}

/// User keys become strings, values keep their bytes under a new type name.
fn v2_prices() -> MapStateDescriptor<u64, (), String, after::Amount> {
    MapStateDescriptor::new("prices")
        .with_schema_version(2)
        .with_migration(
            Migration::same_encoding(1, 2).with_user_keys(|k: u32| format!("sku-{k:04}")),
        )
}

/// Writes version 1 of every state for keys `0..n` into a backend of `kind`.
fn write_v1(b: &mut AnyBackend, n: u64) -> Result<()> {
    let users = b.value_state(&v1_users())?;
    let events = b.list_state(&v1_events())?;
    let prices = b.map_state(&v1_prices())?;
    for k in 0..n {
        users.put(
            b,
            &k,
            &(),
            UserV1 {
                name: format!("user-{k}"),
                visits: k as u32,
            },
        )?;
        for e in 0..(k % 4) as u32 {
            events.append(b, &k, &(), e + 1)?;
        }
        for sku in 0..(k % 3) as u32 {
            prices.put(
                b,
                &k,
                &(),
                10 - sku,
                before::Price {
                    cents: k * 100 + u64::from(sku),
                },
            )?;
        }
    }
    Ok(())
}

/// Checks that `b` holds version 3 / 2 of what [`write_v1`] wrote.
fn check_migrated(b: &mut AnyBackend, n: u64, ctx: &str) -> Result<()> {
    let users = b.value_state(&v3_users())?;
    let events = b.list_state(&v2_events())?;
    let prices = b.map_state(&v2_prices())?;
    for k in 0..n {
        assert_eq!(
            users.get(b, &k, &())?,
            Some(UserV3 {
                visits: k * 10,
                country: "unknown".into()
            }),
            "{ctx}: key {k}"
        );
        let expected: Vec<i64> = (0..(k % 4) as i64).map(|e| -(e + 1)).collect();
        let list = events.get(b, &k, &())?;
        assert_eq!(list, expected, "{ctx}: key {k}");
        let mut entries: Vec<(String, after::Amount)> =
            prices.entries(b, &k, &())?.collect::<Result<_>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut expected: Vec<(String, after::Amount)> = (0..(k % 3) as u32)
            .map(|sku| {
                (
                    format!("sku-{:04}", 10 - sku),
                    after::Amount {
                        cents: k * 100 + u64::from(sku),
                    },
                )
            })
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(entries, expected, "{ctx}: key {k}");
        assert_eq!(
            prices.get(b, &k, &(), &format!("sku-{:04}", 10))?.is_some(),
            k % 3 > 0,
            "{ctx}: key {k}"
        );
    }
    let versions: BTreeMap<String, u32> = b
        .states()
        .into_iter()
        .map(|s| (s.name, s.schema_version))
        .collect();
    assert_eq!(versions["users"], 3, "{ctx}");
    assert_eq!(versions["events"], 2, "{ctx}");
    assert_eq!(versions["prices"], 2, "{ctx}");
    Ok(())
}

#[test]
fn every_backend_migrates_values_lists_and_map_keys_through_chains() -> Result<()> {
    let root = scratch();
    for kind in kinds() {
        for through_checkpoint in [false, true] {
            let ctx = format!("{kind}, checkpoint: {through_checkpoint}");
            let dir = root.path().join(&ctx);
            let mut b = AnyBackend::open(&config_in(kind, all(), &dir))?;
            write_v1(&mut b, 200)?;
            let mut restored = restore(&mut b, &dir.join("v1"), through_checkpoint)?;
            check_migrated(&mut restored, 200, &ctx)?;
            // The migrated state snapshots as the new version and restores without migrating.
            let mut again = restore(&mut restored, &dir.join("v3"), through_checkpoint)?;
            check_migrated(&mut again, 200, &format!("{ctx}, restored again"))?;
        }
    }
    Ok(())
}

/// A digest of every file under `dir` but the working directories of backends restored from
/// it: what a snapshot looks like to a reader.
fn tree_digest(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !entry.file_name().to_string_lossy().starts_with("backend-") {
                    stack.push(path);
                }
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path.display().to_string(), crc32fast::hash(&bytes)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_refused_change_leaves_the_state_and_the_snapshot_untouched() -> Result<()> {
    let root = scratch();
    for kind in kinds() {
        for through_checkpoint in [false, true] {
            let ctx = format!("{kind}, checkpoint: {through_checkpoint}");
            let dir = root.path().join(&ctx);
            let mut b = AnyBackend::open(&config_in(kind, all(), &dir))?;
            write_v1(&mut b, 50)?;
            let snapshot_dir = dir.join("v1");
            let mut restored = restore(&mut b, &snapshot_dir, through_checkpoint)?;
            let before = tree_digest(&snapshot_dir);
            // A chain with a gap: version 2 has no step onward.
            let gap = ValueStateDescriptor::<u64, (), UserV3>::new("users")
                .with_schema_version(3)
                .with_migration(Migration::new(1, 2, |u: UserV1| UserV2 {
                    name: u.name,
                    visits: u.visits,
                    country: String::new(),
                }));
            match restored.value_state(&gap).err() {
                Some(Error::NoMigrationPath {
                    state,
                    from: 1,
                    to: 3,
                    stuck_at: 2,
                }) => assert_eq!(state, "users", "{ctx}"),
                other => panic!("{ctx}: {other:?}"),
            }
            // Keys keep their type.
            let rekeyed = ValueStateDescriptor::<String, (), UserV1>::new("users")
                .with_schema_version(2)
                .with_migration(Migration::same_encoding(1, 2));
            match restored.value_state(&rekeyed).err() {
                Some(Error::IncompatibleMigration { state, reason, .. }) => {
                    assert_eq!(state, "users", "{ctx}");
                    assert!(reason.contains("key type"), "{ctx}: {reason}");
                }
                other => panic!("{ctx}: {other:?}"),
            }
            // Map user keys change only with a user key migration.
            let silent = MapStateDescriptor::<u64, (), String, after::Amount>::new("prices")
                .with_schema_version(2)
                .with_migration(Migration::same_encoding(1, 2));
            assert!(
                matches!(
                    restored.map_state(&silent).err(),
                    Some(Error::IncompatibleMigration { .. })
                ),
                "{ctx}"
            );
            // Nothing changed: the full chain still migrates every row, and the snapshot's
            // files are as they were.
            check_migrated(&mut restored, 50, &ctx)?;
            assert_eq!(tree_digest(&snapshot_dir), before, "{ctx}");
            // Once registered, a state no longer migrates: handles read its layout.
            let later = ValueStateDescriptor::<u64, (), UserV3>::new("users")
                .with_schema_version(4)
                .with_migration(Migration::same_encoding(3, 4));
            assert!(
                matches!(
                    restored.value_state(&later).err(),
                    Some(Error::StateMismatch { .. })
                ),
                "{ctx}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_value_that_does_not_decode_as_the_old_version_is_a_decode_error() -> Result<()> {
    let root = scratch();
    for kind in kinds() {
        let dir = root.path().join(kind.to_string());
        let mut b = AnyBackend::open(&config_in(kind, all(), &dir))?;
        let users = b.value_state(&v1_users())?;
        users.put(
            &mut b,
            &1,
            &(),
            UserV1 {
                name: "a".into(),
                visits: 1,
            },
        )?;
        let mut restored = restore(&mut b, &dir.join("sp"), false)?;
        // The step claims version 1 held strings.
        let wrong = ValueStateDescriptor::<u64, (), String>::new("users")
            .with_schema_version(2)
            .with_migration(Migration::new(1, 2, |s: (String, String)| s.0));
        match restored.value_state(&wrong).err() {
            Some(Error::Decode { state, message }) => {
                assert_eq!(state, "users", "{kind}");
                assert!(message.contains("schema version 1"), "{kind}: {message}");
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn a_migration_keeps_ttl_timestamps_and_a_ttl_change_applies_after_it() -> Result<()> {
    let root = scratch();
    let ttl = StateTtlConfig::new(Duration::from_millis(1_000));
    for kind in kinds() {
        let dir = root.path().join(kind.to_string());
        let mut b = AnyBackend::open(&config_in(kind, all(), &dir))?;
        b.ttl_clock().set_processing_time(10_000);
        let users = b.value_state_with_ttl(&v1_users(), ttl)?;
        let events = b.list_state_with_ttl(&v1_events(), ttl)?;
        for k in 0..20u64 {
            b.ttl_clock().set_processing_time(10_000 + k * 100);
            users.put(
                &mut b,
                &k,
                &(),
                UserV1 {
                    name: String::new(),
                    visits: k as u32,
                },
            )?;
            events.append(&mut b, &k, &(), k as u32)?;
        }
        let mut restored = restore(&mut b, &dir.join("sp"), false)?;
        // At 11,000 the first ten keys (written at 10,000..10,900) have expired.
        restored.ttl_clock().set_processing_time(11_000);
        let users = restored.value_state_with_ttl(&v3_users(), ttl)?;
        let events = restored.list_state_with_ttl(&v2_events(), ttl)?;
        for k in 0..20u64 {
            let live = k >= 10;
            let user = users.get(&mut restored, &k, &())?;
            assert_eq!(
                user.map(|u| u.visits),
                live.then_some(k * 10),
                "{kind}: {k}"
            );
            let list = events.get(&mut restored, &k, &())?;
            let expected = if live { vec![-(k as i64)] } else { Vec::new() };
            assert_eq!(list, expected, "{kind}: {k}");
        }
        // Migrated and then stripped of its TTL: the rows the savepoint holds (those live at
        // 11,900, when it was taken) come back, without timestamps.
        let mut plain = restore(&mut b, &dir.join("sp2"), false)?;
        let users = plain.value_state(&v3_users())?;
        assert_eq!(
            users.get(&plain, &19, &())?.map(|u| u.visits),
            Some(190),
            "{kind}"
        );
        assert_eq!(users.get(&plain, &3, &())?, None, "{kind}");
    }
    Ok(())
}

/// A job's code through three versions, on a pair of backends: version 1 checkpoints; version
/// 2 (a field added) restores the checkpoint and takes a savepoint; the savepoint is rewritten
/// offline to rename the state; version 3 (the value changed by a function, in the other
/// backend) restores it, checkpoints, and restores once more. Every restore equals the model.
#[test]
fn a_job_upgrades_through_three_code_versions_on_both_backends() -> Result<()> {
    use statebackend::checkpoint::{CheckpointCoordinator, RestoreMode, restore_instance};
    use statebackend::savepoint::processor::SavepointRewrite;
    use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
    use statebackend::storage::{CheckpointStorage, LocalDirStorage};
    use std::sync::Arc;

    let v2_users = || -> ValueStateDescriptor<u64, (), UserV2> {
        ValueStateDescriptor::new("users")
            .with_schema_version(2)
            .with_migration(Migration::new(1, 2, |u: UserV1| UserV2 {
                name: u.name,
                visits: u.visits,
                country: "unknown".into(),
            }))
    };
    let v3_profiles = || -> ValueStateDescriptor<u64, (), UserV3> {
        ValueStateDescriptor::new("profiles")
            .with_schema_version(3)
            .with_migration(Migration::new(2, 3, |u: UserV2| UserV3 {
                visits: u64::from(u.visits) * 10,
                country: u.country,
            }))
    };
    let kinds = kinds();
    let root = scratch();
    for (i, &first) in kinds.iter().enumerate() {
        let second = kinds[(i + 1) % kinds.len()];
        let ctx = format!("{first} then {second}");
        let dir = root.path().join(&ctx);
        // The model: visits and country per key, as version 3 sees them.
        let mut model: BTreeMap<u64, UserV3> = BTreeMap::new();

        // Version 1.
        let mut b = AnyBackend::open(&config_in(first, all(), &dir))?;
        let users = b.value_state(&v1_users())?;
        for k in 0..300u64 {
            let visits = (k % 17) as u32;
            users.put(
                &mut b,
                &k,
                &(),
                UserV1 {
                    name: format!("u{k}"),
                    visits,
                },
            )?;
            model.insert(
                k,
                UserV3 {
                    visits: u64::from(visits) * 10,
                    country: "unknown".into(),
                },
            );
        }
        // Version 2 restores version 1's checkpoint.
        let mut b = restore(&mut b, &dir.join("chk-v1"), true)?;
        let users = b.value_state(&v2_users())?;
        for k in 0..300u64 {
            let u = users.get(&b, &k, &())?.expect("restored");
            assert_eq!(
                u64::from(u.visits) * 10,
                model[&k].visits,
                "{ctx}: v2 key {k}"
            );
            assert_eq!(u.country, "unknown", "{ctx}");
        }
        for k in (0..400u64).step_by(3) {
            let mut u = users.get(&b, &k, &())?.unwrap_or(UserV2 {
                name: format!("u{k}"),
                visits: 0,
                country: String::new(),
            });
            u.visits += 1;
            u.country = format!("c{}", k % 5);
            model.insert(
                k,
                UserV3 {
                    visits: u64::from(u.visits) * 10,
                    country: u.country.clone(),
                },
            );
            users.put(&mut b, &k, &(), u)?;
        }
        users.clear(&mut b, &7, &())?;
        model.remove(&7);
        // Version 2's savepoint, rewritten offline: `users` becomes `profiles`.
        let sp = dir.join("sp-v2");
        let storage = LocalDirStorage::new(&sp)?;
        let part = b.savepoint()?.write(&storage)?;
        complete_savepoint(&storage, vec![part])?;
        let renamed = dir.join("sp-v2-renamed");
        SavepointRewrite::new()
            .rename_state("", "users", "profiles")
            .write(&storage, &LocalDirStorage::new(&renamed)?)?;
        // Version 3, on the other backend, at parallelism 2.
        let renamed = LocalDirStorage::new(&renamed)?;
        let meta = read_savepoint(&renamed)?;
        let at_v3 = model.clone();
        let mut seen = BTreeMap::new();
        let mut halves = Vec::new();
        for half in 0..2 {
            let range = KeyGroupRange::for_operator(128, 2, half)?;
            let mut b = restore_savepoint(&renamed, &meta, &config_in(second, range, &dir))?;
            let profiles = b.value_state(&v3_profiles())?;
            for k in 0..400u64 {
                let Ok(key) = b.key_context(k) else { continue };
                if let Some(p) = profiles.get(&b, &key, &())? {
                    seen.insert(k, p.clone());
                }
                // Version 3 goes on.
                if k % 10 == 0 {
                    let mut p = profiles.get(&b, &key, &())?.unwrap_or(UserV3 {
                        visits: 0,
                        country: "new".into(),
                    });
                    p.visits += 5;
                    model.insert(k, p.clone());
                    profiles.put(&mut b, &key, &(), p)?;
                }
            }
            halves.push(b);
        }
        assert_eq!(seen, at_v3, "{ctx}: the renamed, migrated savepoint");
        // Version 3's checkpoint of both instances, restored instance by instance.
        let chk = dir.join("chk-v3");
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(&chk)?);
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        coordinator.begin(1)?;
        let parts = halves
            .iter_mut()
            .map(|b| Ok(b.snapshot(1)?.upload(storage.as_ref())?.0))
            .collect::<Result<Vec<_>>>()?;
        let checkpoint = coordinator.complete(1, parts)?.clone();
        let mut restored = BTreeMap::new();
        for b in &halves {
            let config = config_in(second, b.key_group_range(), &dir);
            let mut again =
                restore_instance(storage.as_ref(), &checkpoint, &config, RestoreMode::NoClaim)?;
            let profiles = again.value_state(&v3_profiles())?;
            for k in 0..400u64 {
                if let Ok(key) = again.key_context(k) {
                    if let Some(p) = profiles.get(&again, &key, &())? {
                        restored.insert(k, p);
                    }
                }
            }
        }
        assert_eq!(restored, model, "{ctx}: version 3's checkpoint");
    }
    Ok(())
}

/// A migration that fails half way (two user keys of one map migrate onto one key, in a key
/// group somewhere in the middle) changes nothing: the same state then migrates correctly.
#[test]
fn a_migration_failing_half_way_changes_nothing() -> Result<()> {
    let root = scratch();
    let old = || MapStateDescriptor::<u64, (), u32, u64>::new("m").with_schema_version(1);
    // Key 250's map holds user keys 0 and 1; every other key's map one key, 2 × key.
    let clash = 250u64;
    for kind in kinds() {
        let dir = root.path().join(kind.to_string());
        let mut b = AnyBackend::open(&config_in(kind, all(), &dir))?;
        let m = b.map_state(&old())?;
        for k in 0..500u64 {
            if k == clash {
                m.put(&mut b, &k, &(), 0, 1)?;
                m.put(&mut b, &k, &(), 1, 2)?;
            } else {
                m.put(&mut b, &k, &(), 2 * k as u32, k)?;
            }
        }
        let mut restored = restore(&mut b, &dir.join("sp"), false)?;
        let halving = MapStateDescriptor::<u64, (), u32, u64>::new("m")
            .with_schema_version(2)
            .with_migration(Migration::same_encoding(1, 2).with_user_keys(|k: u32| k / 2));
        match restored.map_state(&halving).err() {
            Some(Error::Decode { state, message }) => {
                assert_eq!(state, "m", "{kind}");
                assert!(message.contains("one"), "{kind}: {message}");
            }
            other => panic!("{kind}: {other:?}"),
        }
        // Untouched: a migration that keeps the keys finds every row as written.
        let keeping = MapStateDescriptor::<u64, (), u32, u64>::new("m")
            .with_schema_version(2)
            .with_migration(Migration::same_encoding(1, 2));
        let m = restored.map_state(&keeping)?;
        for k in 0..500u64 {
            let mut entries: Vec<(u32, u64)> =
                m.entries(&restored, &k, &())?.collect::<Result<_>>()?;
            entries.sort_unstable();
            let expected = if k == clash {
                vec![(0, 1), (1, 2)]
            } else {
                vec![(2 * k as u32, k)]
            };
            assert_eq!(entries, expected, "{kind}: key {k}");
        }
    }
    Ok(())
}

//! The savepoint format is pinned by a committed golden savepoint (format version 1): this
//! build must read it, restore it into either backend, and write byte-identical data files.
use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::checkpointing::{config, kinds};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendKind, KeyGroupRange, KeyedStateBackend, ListState, ListStateDescriptor,
    MapState, MapStateDescriptor, Result, ValueState, ValueStateDescriptor,
};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/savepoint-v1")
}

struct Golden {
    balances: ValueState<String, (), i64>,
    events: ListState<u64, (), String>,
    prices: MapState<String, u32, u16, u64>,
}

fn register<B: KeyedStateBackend>(b: &mut B) -> Result<Golden> {
    Ok(Golden {
        balances: b.value_state(&ValueStateDescriptor::new("balances"))?,
        events: b.list_state(&ListStateDescriptor::new("events"))?,
        prices: b.map_state(&MapStateDescriptor::new("prices"))?,
    })
}

/// The fixture's content, a function of the key.
fn fill(b: &mut AnyBackend) -> Result<()> {
    let g = register(b)?;
    for i in 0..40u64 {
        g.balances
            .put(b, &format!("account-{i}"), &(), i as i64 * 100 - 1_000)?;
        for j in 0..i % 4 {
            g.events.append(b, &i, &(), format!("event-{i}-{j}"))?;
        }
        for window in 0..(i % 3) as u32 {
            g.prices.put(
                b,
                &format!("item-{i}"),
                &window,
                (i % 7) as u16,
                i * 10 + u64::from(window),
            )?;
        }
    }
    Ok(())
}

/// Writes the fixture. Run once when the format version changes:
/// `STATEBACKEND_WRITE_FIXTURES=1 cargo test --test formats savepoint_golden:: -- --ignored`.
#[test]
#[ignore]
fn write_golden_savepoint() -> Result<()> {
    if std::env::var_os("STATEBACKEND_WRITE_FIXTURES").is_none() {
        return Ok(());
    }
    let mut b = AnyBackend::open(&config(BackendKind::Heap, KeyGroupRange::all(128)?))?;
    fill(&mut b)?;
    let _ = std::fs::remove_dir_all(fixture_dir());
    let storage = LocalDirStorage::new(fixture_dir())?;
    let instance = b.savepoint()?.write(&storage)?;
    complete_savepoint(&storage, vec![instance])?;
    Ok(())
}

#[test]
fn golden_savepoint_restores_into_every_backend() -> Result<()> {
    let storage = LocalDirStorage::new(fixture_dir())?;
    let meta = read_savepoint(&storage)?;
    assert_eq!(meta.instances.len(), 1);
    for kind in kinds() {
        let mut b = restore_savepoint(&storage, &meta, &config(kind, KeyGroupRange::all(128)?))?;
        let g = register(&mut b)?;
        assert_eq!(
            g.balances.get(&b, &String::from("account-0"), &())?,
            Some(-1_000)
        );
        assert_eq!(
            g.balances.get(&b, &String::from("account-39"), &())?,
            Some(2_900)
        );
        assert_eq!(
            g.events.get(&b, &7, &())?,
            vec!["event-7-0", "event-7-1", "event-7-2"]
        );
        assert!(g.events.get(&b, &8, &())?.is_empty());
        assert_eq!(g.prices.get(&b, &String::from("item-5"), &1, &5)?, Some(51));
        assert_eq!(g.prices.get(&b, &String::from("item-5"), &2, &5)?, None);
        assert_eq!(b.keys::<String, ()>(g.balances.id(), None)?.count(), 40);
    }
    Ok(())
}

#[test]
fn this_build_writes_the_golden_bytes() -> Result<()> {
    let fixture = LocalDirStorage::new(fixture_dir())?;
    let meta = read_savepoint(&fixture)?;
    let golden = fixture.get(&meta.instances[0].files[0].path)?;
    for kind in kinds() {
        // From the restored fixture, and from the same content written afresh.
        let restored = restore_savepoint(&fixture, &meta, &config(kind, KeyGroupRange::all(128)?))?;
        let mut fresh = AnyBackend::open(&config(kind, KeyGroupRange::all(128)?))?;
        fill(&mut fresh)?;
        for mut b in [restored, fresh] {
            let tmp = tempfile::tempdir().unwrap();
            let out: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(tmp.path())?);
            let instance = b.savepoint()?.write(out.as_ref())?;
            let bytes = out.get(&instance.files[0].path)?;
            assert!(bytes == golden, "{kind}: the data file format changed");
        }
    }
    Ok(())
}

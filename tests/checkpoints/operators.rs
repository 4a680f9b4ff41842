//! Jobs of several operators: one checkpoint (and one savepoint) holds every operator's
//! instances, each operator with its own parallelism and max parallelism; restores select an
//! operator by id, together or separately; state of an operator the new job lacks is refused
//! unless dropping it is allowed.
use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::checkpointing::{assert_matches_model, config, key_group, kinds, random_job};
use common::model::Handles;
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, latest_restorable, restore_instance,
};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::CheckpointStorage;
use statebackend::{
    AnyBackend, BackendConfig, CheckpointDriver, DriverOptions, Error, KeyGroupRange,
    KeyedStateBackend, OperatorInstances, Result, ValueStateDescriptor,
};

/// The "source" operator: one heap instance of max parallelism 16 with an offset per
/// partition.
fn source() -> Result<AnyBackend> {
    let mut b = AnyBackend::open(&BackendConfig::heap(16, KeyGroupRange::all(16)?))?;
    let offsets = b.value_state(&ValueStateDescriptor::<u32, (), u64>::new("offsets"))?;
    for partition in 0..8u32 {
        offsets.put(&mut b, &partition, &(), u64::from(partition) * 100)?;
    }
    Ok(b)
}

fn check_source(b: &mut AnyBackend) -> Result<()> {
    let offsets = b.value_state(&ValueStateDescriptor::<u32, (), u64>::new("offsets"))?;
    for partition in 0..8u32 {
        assert_eq!(
            offsets.get(b, &partition, &())?,
            Some(u64::from(partition) * 100)
        );
    }
    Ok(())
}

#[test]
fn two_operators_of_different_parallelism_checkpoint_together_and_restore_by_id() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
        let mut driver = CheckpointDriver::new(
            CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
            DriverOptions::default(),
        );
        let mut sources = vec![source()?];
        let (mut windows, model) = random_job(kind, 3, 77, 600)?;
        let engine = BTreeMap::from([("job".to_string(), b"two-operators".to_vec())]);
        driver.trigger_job(
            &mut [
                OperatorInstances {
                    id: "source",
                    instances: &mut sources,
                },
                OperatorInstances {
                    id: "window",
                    instances: &mut windows,
                },
            ],
            engine.clone(),
        )?;
        let report = driver.finish_job(&mut [
            OperatorInstances {
                id: "window",
                instances: &mut windows,
            },
            OperatorInstances {
                id: "source",
                instances: &mut sources,
            },
        ])?;
        assert_eq!(report.instances, 4, "{kind}");

        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(meta.operators(), ["source", "window"]);
        assert_eq!(meta.engine, engine);
        // The whole job's metadata is not one operator's: a restore must pick one.
        assert!(matches!(
            restore_instance(
                storage.as_ref(),
                &meta,
                &config(kind, KeyGroupRange::all(128)?),
                RestoreMode::NoClaim
            ),
            Err(Error::Incompatible { .. })
        ));
        assert!(matches!(
            meta.for_operator("sink"),
            Err(Error::OperatorNotFound { .. })
        ));

        // Together: the window operator at parallelism 2, the source as it was.
        let window = meta.for_operator("window")?;
        for i in 0..2 {
            let range = KeyGroupRange::for_operator(128, 2, i)?;
            let mut b = restore_instance(
                storage.as_ref(),
                &window,
                &config(kind, range),
                RestoreMode::NoClaim,
            )?;
            let h = Handles::register(&mut b)?;
            let mut own = model.clone();
            own.retain_keys(|k| range.contains(key_group(k)));
            assert_matches_model(&mut b, &h, &own)?;
        }
        let mut b = restore_instance(
            storage.as_ref(),
            &meta.for_operator("source")?,
            &BackendConfig::heap(16, KeyGroupRange::all(16)?),
            RestoreMode::NoClaim,
        )?;
        check_source(&mut b)?;

        // Separately: a new job of the window operator alone must allow dropping the source's
        // state.
        assert!(matches!(
            meta.check_operators(&["window"], false),
            Err(Error::NonRestoredState { operators }) if operators == ["source"]
        ));
        meta.check_operators(&["window"], true)?;
        meta.check_operators(&["source", "window", "new-sink"], false)?;
    }
    Ok(())
}

#[test]
fn completion_checks_the_key_groups_of_each_operator() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let mut source = source()?;
    let (mut windows, _) = random_job(kinds()[0], 2, 5, 100)?;
    coordinator.begin(1)?;
    let mut parts = Vec::new();
    let (mut part, _) = source.snapshot(1)?.upload(storage.as_ref())?;
    part.operator = "source".into();
    parts.push(part);
    // Only one of the window operator's two instances.
    let (mut part, _) = windows[0].snapshot(1)?.upload(storage.as_ref())?;
    part.operator = "window".into();
    parts.push(part);
    let incomplete = coordinator.complete(1, parts.clone());
    assert!(
        matches!(&incomplete, Err(Error::KeyGroupCoverage { what, .. }) if what.contains("\"window\"")),
        "{incomplete:?}"
    );
    let (mut part, _) = windows[1].snapshot(1)?.upload(storage.as_ref())?;
    part.operator = "window".into();
    parts.push(part);
    let meta = coordinator.complete(1, parts)?;
    assert_eq!(meta.operators(), ["source", "window"]);
    Ok(())
}

#[test]
fn a_savepoint_of_two_operators_restores_each_by_id() -> Result<()> {
    for kind in kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let storage: Arc<dyn CheckpointStorage> = crate::root::open(tmp.path())?;
        let mut source = source()?;
        let (mut windows, model) = random_job(kind, 2, 9, 400)?;
        let mut parts = Vec::new();
        let mut part = source.savepoint()?.write(storage.as_ref())?;
        part.operator = "source".into();
        parts.push(part);
        for w in &mut windows {
            let mut part = w.savepoint()?.write(storage.as_ref())?;
            part.operator = "window".into();
            parts.push(part);
        }
        complete_savepoint(storage.as_ref(), parts)?;
        let meta = read_savepoint(storage.as_ref())?;
        let all = KeyGroupRange::all(128)?;
        let mut b = restore_savepoint(
            storage.as_ref(),
            &meta.for_operator("window")?,
            &config(kind, all),
        )?;
        let h = Handles::register(&mut b)?;
        assert_matches_model(&mut b, &h, &model)?;
        let mut b = restore_savepoint(
            storage.as_ref(),
            &meta.for_operator("source")?,
            &BackendConfig::heap(16, KeyGroupRange::all(16)?),
        )?;
        check_source(&mut b)?;
    }
    Ok(())
}

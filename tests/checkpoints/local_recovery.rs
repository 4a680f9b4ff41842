//! Local recovery on every backend: the local copy holds exactly the last completed
//! checkpoint's files; a restore takes every file from it and downloads nothing; a missing,
//! truncated or wrong local file, and a local copy of another checkpoint, are each detected
//! and downloaded instead, and the state restored is always the checkpoint's.
use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::checkpointing::{config_in, kinds, scratch};
use statebackend::checkpoint::local_recovery::{LocalRecovery, RecoveryStats};
use statebackend::checkpoint::{CheckpointCoordinator, InstanceMetadata, RestoreMode};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, BackendKind, KeyGroupRange, KeyedStateBackend, Result,
    ValueStateDescriptor,
};

fn counts() -> ValueStateDescriptor<u64, (), u64> {
    ValueStateDescriptor::new("counts")
}

/// Writes `keys` (value `round * 1000 + key`) into `b` and the model.
fn write(
    b: &mut AnyBackend,
    model: &mut BTreeMap<u64, u64>,
    keys: std::ops::Range<u64>,
    round: u64,
) -> Result<()> {
    let s = b.value_state(&counts())?;
    for k in keys {
        let v = round * 1000 + k;
        s.put(b, &k, &(), v)?;
        model.insert(k, v);
    }
    Ok(())
}

fn assert_state(b: &mut AnyBackend, model: &BTreeMap<u64, u64>, ctx: &str) -> Result<()> {
    let s = b.value_state(&counts())?;
    for k in 0..2000u64 {
        assert_eq!(s.get(b, &k, &())?, model.get(&k).copied(), "{ctx}: key {k}");
    }
    Ok(())
}

/// Takes checkpoint `id` of `b` through local recovery and completes it.
fn checkpoint(
    b: &mut AnyBackend,
    coordinator: &mut CheckpointCoordinator,
    storage: &Arc<dyn CheckpointStorage>,
    local: &LocalRecovery,
    id: u64,
) -> Result<InstanceMetadata> {
    coordinator.begin(id)?;
    let (part, _) = b.snapshot(id)?.upload(&local.keeping(storage))?;
    let meta = coordinator.complete(id, vec![part.clone()])?.clone();
    b.notify_checkpoint_complete(&part)?;
    local.retain(&meta)?;
    Ok(part)
}

/// Every file below `dir`, relative to it.
fn local_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn local_path(local: &LocalRecovery, part: &InstanceMetadata, index: usize) -> PathBuf {
    local.dir().join(part.files[index].path.as_str())
}

#[test]
fn a_restore_takes_what_verifies_locally_and_downloads_the_rest() -> Result<()> {
    let root = scratch();
    for kind in kinds() {
        let dir = root.path().join(kind.to_string());
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.join("root"))?);
        let local = LocalRecovery::new(dir.join("local"))?;
        let config: BackendConfig = config_in(kind, KeyGroupRange::all(128)?, &dir);
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 3)?;
        let mut b = AnyBackend::open(&config)?;
        let mut model = BTreeMap::new();
        write(&mut b, &mut model, 0..1000, 1)?;
        checkpoint(&mut b, &mut coordinator, &storage, &local, 1)?;
        let model_1 = model.clone();
        write(&mut b, &mut model, 500..2000, 2)?;
        let part = checkpoint(&mut b, &mut coordinator, &storage, &local, 2)?;
        let checkpoint_2 = coordinator.latest_verified()?.clone();
        assert_eq!(checkpoint_2.id, 2);
        let checkpoint_1 = coordinator
            .completed()
            .find(|c| c.id == 1)
            .expect("checkpoint 1 retained")
            .clone();

        // The local copy is exactly checkpoint 2's files.
        let mut expected: Vec<String> = part.files.iter().map(|f| f.path.to_string()).collect();
        expected.sort();
        assert_eq!(local_files(local.dir()), expected, "{kind}");

        // Everything local: nothing downloaded.
        let restore = |ctx: &str| -> Result<(AnyBackend, RecoveryStats)> {
            let config = config_in(kind, KeyGroupRange::all(128)?, &dir.join(ctx));
            local.restore_instance(
                storage.as_ref(),
                &checkpoint_2,
                &config,
                RestoreMode::NoClaim,
            )
        };
        let (mut restored, stats) = restore("all-local")?;
        assert_state(&mut restored, &model, &format!("{kind}, all local"))?;
        assert_eq!(
            (
                stats.files_local,
                stats.files_downloaded,
                stats.files_rejected
            ),
            (part.files.len() as u64, 0, 0),
            "{kind}: {stats:?}"
        );
        assert_eq!(stats.bytes_local, part.total_bytes(), "{kind}");
        drop(restored);

        // A missing, a truncated and a damaged local file: each downloaded instead.
        let largest = (0..part.files.len())
            .max_by_key(|&i| part.files[i].size)
            .expect("files");
        let victim = local_path(&local, &part, largest);
        let original = std::fs::read(&victim).unwrap();
        for (damage, rejected) in [("missing", 0), ("truncated", 1), ("wrong", 1)] {
            match damage {
                "missing" => std::fs::remove_file(&victim).unwrap(),
                "truncated" => std::fs::write(&victim, &original[..original.len() / 2]).unwrap(),
                _ => {
                    let mut bytes = original.clone();
                    let at = bytes.len() / 2;
                    bytes[at] ^= 0x20;
                    std::fs::write(&victim, bytes).unwrap();
                }
            }
            let (mut restored, stats) = restore(damage)?;
            assert_state(&mut restored, &model, &format!("{kind}, {damage}"))?;
            assert_eq!(
                (
                    stats.files_downloaded,
                    stats.files_rejected,
                    stats.files_local
                ),
                (1, rejected, part.files.len() as u64 - 1),
                "{kind}, {damage}: {stats:?}"
            );
            assert_eq!(stats.bytes_downloaded, part.files[largest].size, "{kind}");
            std::fs::write(&victim, &original).unwrap();
        }

        // A local copy of another checkpoint: checkpoint 1 restores exactly, taking locally
        // only files checkpoint 1's metadata vouches for.
        let (mut restored, stats) = local.restore_instance(
            storage.as_ref(),
            &checkpoint_1,
            &config_in(kind, KeyGroupRange::all(128)?, &dir.join("older")),
            RestoreMode::NoClaim,
        )?;
        assert_state(&mut restored, &model_1, &format!("{kind}, checkpoint 1"))?;
        let files_1 = &checkpoint_1.instances[0].files;
        let shared: u64 = files_1
            .iter()
            .filter(|f| {
                part.files
                    .iter()
                    .any(|g| g.path == f.path && g.crc32 == f.crc32)
            })
            .count() as u64;
        assert_eq!(stats.files_local, shared, "{kind}: {stats:?}");
        assert_eq!(
            stats.files_downloaded,
            files_1.len() as u64 - shared,
            "{kind}: {stats:?}"
        );
        // RocksDB shares SST files between the two, and so does an incremental heap
        // checkpoint (its chain's base).
        assert!(shared > 0 || kind == BackendKind::Reference, "{kind}");
        // A file placed under a path checkpoint 1 lists, with other content (checkpoint 2's
        // data file): not trusted.
        let forged = local.dir().join(files_1[0].path.as_str());
        std::fs::create_dir_all(forged.parent().unwrap()).unwrap();
        std::fs::write(&forged, &original).unwrap();
        let (mut restored, stats) = local.restore_instance(
            storage.as_ref(),
            &checkpoint_1,
            &config_in(kind, KeyGroupRange::all(128)?, &dir.join("forged")),
            RestoreMode::NoClaim,
        )?;
        assert_state(&mut restored, &model_1, &format!("{kind}, forged"))?;
        assert!(stats.files_rejected >= 1, "{kind}: {stats:?}");
    }
    Ok(())
}

#[test]
fn retention_keeps_one_checkpoint_per_instance_and_a_rescaled_restore_uses_it() -> Result<()> {
    let root = scratch();
    for kind in kinds() {
        let dir = root.path().join(kind.to_string());
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.join("root"))?);
        let local = LocalRecovery::new(dir.join("local"))?;
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        let halves: Vec<KeyGroupRange> = (0..2)
            .map(|i| KeyGroupRange::for_operator(128, 2, i))
            .collect::<Result<_>>()?;
        let mut backends = halves
            .iter()
            .map(|&r| AnyBackend::open(&config_in(kind, r, &dir)))
            .collect::<Result<Vec<_>>>()?;
        let mut model = BTreeMap::new();
        for round in 1..=4u64 {
            for b in &mut backends {
                let s = b.value_state(&counts())?;
                for k in 0..2000u64 {
                    if let Ok(key) = b.key_context(k) {
                        if k % round == 0 {
                            s.put(b, &key, &(), round * 1000 + k)?;
                            model.insert(k, round * 1000 + k);
                        }
                    }
                }
            }
            coordinator.begin(round)?;
            let parts = backends
                .iter_mut()
                .map(|b| Ok(b.snapshot(round)?.upload(&local.keeping(&storage))?.0))
                .collect::<Result<Vec<_>>>()?;
            let meta = coordinator.complete(round, parts.clone())?.clone();
            for (b, part) in backends.iter_mut().zip(&parts) {
                b.notify_checkpoint_complete(part)?;
            }
            local.retain(&meta)?;
            // Only the last completed checkpoint's files of both instances are kept locally.
            let mut expected: Vec<String> = parts
                .iter()
                .flat_map(|p| p.files.iter().map(|f| f.path.to_string()))
                .collect();
            expected.sort();
            assert_eq!(local_files(local.dir()), expected, "{kind}, round {round}");
        }
        // Restored at parallelism 1 from both instances' local copies.
        let meta = coordinator.latest_verified()?.clone();
        let (mut restored, stats) = local.restore_instance(
            storage.as_ref(),
            &meta,
            &config_in(kind, KeyGroupRange::all(128)?, &dir.join("rescaled")),
            RestoreMode::NoClaim,
        )?;
        assert_state(&mut restored, &model, &format!("{kind}, rescaled"))?;
        assert_eq!(stats.files_downloaded, 0, "{kind}: {stats:?}");
        assert!(stats.files_local > 0, "{kind}: {stats:?}");
    }
    Ok(())
}

#[test]
fn the_driver_keeps_local_copies_and_a_restart_downloads_nothing() -> Result<()> {
    use statebackend::{CheckpointDriver, DriverOptions};
    let root = scratch();
    for kind in kinds() {
        let dir = root.path().join(kind.to_string());
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(dir.join("root"))?);
        let local = LocalRecovery::new(dir.join("local"))?;
        let options = DriverOptions {
            local_recovery: Some(local.clone()),
            ..DriverOptions::default()
        };
        let mut driver = CheckpointDriver::new(
            CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
            options,
        );
        let mut backends = vec![AnyBackend::open(&config_in(
            kind,
            KeyGroupRange::all(128)?,
            &dir,
        ))?];
        let mut model = BTreeMap::new();
        for round in 1..=3 {
            write(
                &mut backends[0],
                &mut model,
                (round * 300)..(round * 300 + 700),
                round,
            )?;
            driver.checkpoint(&mut backends)?;
        }
        let meta = driver.coordinator().latest_verified()?.clone();
        let mut expected: Vec<String> = meta.instances[0]
            .files
            .iter()
            .map(|f| f.path.to_string())
            .collect();
        expected.sort();
        assert_eq!(local_files(local.dir()), expected, "{kind}");
        let old_instance = meta.instances[0].instance_id;
        drop(backends);
        drop(driver);
        let (mut restored, stats) = local.restore_instance(
            storage.as_ref(),
            &meta,
            &config_in(kind, KeyGroupRange::all(128)?, &dir.join("restart")),
            RestoreMode::Claim,
        )?;
        assert_state(&mut restored, &model, &format!("{kind}, restart"))?;
        assert_eq!(stats.files_downloaded, 0, "{kind}: {stats:?}");
        // The restarted job (a new instance id) checkpoints on: the local copy becomes its
        // checkpoint's files, nothing of the earlier run stays behind.
        let options = DriverOptions {
            local_recovery: Some(local.clone()),
            ..DriverOptions::default()
        };
        let mut driver = CheckpointDriver::new(
            CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
            options,
        );
        let mut backends = vec![restored];
        write(&mut backends[0], &mut model, 0..50, 9)?;
        driver.checkpoint(&mut backends)?;
        let meta = driver.coordinator().latest_verified()?.clone();
        assert_ne!(meta.instances[0].instance_id, old_instance, "{kind}");
        let mut expected: Vec<String> = meta.files().map(|f| f.path.to_string()).collect();
        expected.sort();
        assert_eq!(
            local_files(local.dir()),
            expected,
            "{kind}: after the restart"
        );
    }
    Ok(())
}

//! Crash-consistency sweep of writing a savepoint: the savepoint directory's storage crashes
//! (or fails once) at the k-th write of `PendingSavepoint::write` + `complete_savepoint`, for
//! every k. Afterwards the savepoint is either complete (its `_metadata` exists, every file it
//! lists verifies, and it restores into both backends exactly) or absent (no `_metadata`, so
//! `read_savepoint` reports it missing), and anything else in the directory is a complete data
//! file of one of the instances or a temporary leftover. Writing the savepoint again into the
//! same directory then succeeds and restores exactly.
use crate::common;

use std::collections::BTreeSet;
use std::path::Path;

use common::checkpointing::{assert_matches_model, config_in, kinds, run_ops, scratch};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::{SnapshotMetadata, verify_files};
use statebackend::savepoint::data_file::DataFileReader;
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{
    CheckpointStorage, FaultMode, FaultyStorage, LocalDirStorage, is_temporary,
};
use statebackend::{AnyBackend, BackendKind, Error, KeyGroupRange, KeyedStateBackend, Result};

const PARALLELISM: u32 = 2;

/// Two instances of `kind`, each with its own share of the keys, and the union of their models.
fn job(kind: BackendKind, dir: &Path) -> Result<(Vec<AnyBackend>, Model)> {
    let mut backends = Vec::new();
    let mut union = Model::default();
    for i in 0..PARALLELISM {
        let range = KeyGroupRange::for_operator(128, PARALLELISM, i)?;
        let mut b = AnyBackend::open(&config_in(kind, range, dir))?;
        let h = Handles::register(&mut b)?;
        let mut g = OpGenerator::new(40 + u64::from(i), 30, |k| {
            range.contains(b.key_group_of(k).unwrap())
        });
        let mut model = Model::default();
        run_ops(&mut b, &h, &mut model, &mut g, 300)?;
        union.absorb(model);
        backends.push(b);
    }
    Ok((backends, union))
}

/// Writes a savepoint of every backend into `storage`: each instance's data file, then
/// `_metadata`.
fn write_savepoint(
    backends: &mut [AnyBackend],
    storage: &dyn CheckpointStorage,
) -> Result<SnapshotMetadata> {
    let mut instances = Vec::new();
    for b in backends.iter_mut() {
        instances.push(b.savepoint()?.write(storage)?);
    }
    complete_savepoint(storage, instances)
}

/// Restores the whole savepoint into one instance of each backend and compares with `model`.
fn assert_restores_exactly(dir: &Path, scratch: &Path, model: &Model) -> Result<()> {
    let storage = LocalDirStorage::new(dir)?;
    let meta = read_savepoint(&storage)?;
    verify_files(&storage, &meta)?;
    for kind in kinds() {
        let config = config_in(kind, KeyGroupRange::all(128)?, scratch);
        let mut restored = restore_savepoint(&storage, &meta, &config)?;
        let h = Handles::register(&mut restored)?;
        assert_matches_model(&mut restored, &h, model)?;
    }
    Ok(())
}

/// The files of the savepoint directory that are neither `_metadata`, nor listed in `listed`,
/// nor temporary leftovers. Each must be a whole data file: data files are written atomically.
fn strays(dir: &Path, listed: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let storage = LocalDirStorage::new(dir)?;
    let mut strays = BTreeSet::new();
    for object in storage.list(None)? {
        let path = object.path.as_str();
        if path == "_metadata" || listed.contains(path) || is_temporary(&object.path) {
            continue;
        }
        DataFileReader::open(&dir.join(path), path)?;
        strays.insert(path.to_owned());
    }
    Ok(strays)
}

fn listed(meta: &SnapshotMetadata) -> BTreeSet<String> {
    meta.files().map(|f| f.path.to_string()).collect()
}

/// Runs the savepoint write with `fault` at its k-th write; returns whether the fault fired.
fn sweep_point(kind: BackendKind, k: u64, crash: bool) -> Result<bool> {
    let tmp = scratch();
    let what = format!(
        "{kind}, {} at write {k}",
        if crash { "crash" } else { "failure" }
    );
    let (mut backends, model) = job(kind, tmp.path())?;
    let dir = tmp.path().join("savepoint");
    let faulty = FaultyStorage::new(LocalDirStorage::new(&dir)?, FaultMode::None);
    faulty.set_mode(if crash {
        FaultMode::CrashAt(k)
    } else {
        FaultMode::FailAt(k)
    });
    let written = write_savepoint(&mut backends, &faulty);
    let fired = faulty.ops() >= k;
    assert_eq!(
        written.is_err(),
        fired,
        "{what}: {:?}",
        written.as_ref().err()
    );
    if let Err(e) = &written {
        assert!(
            matches!(e, Error::InjectedFault { op } if *op == k),
            "{what}: the fault is reported as it happened: {e:?}"
        );
    }
    drop(faulty);

    // After the fault, with the storage back: complete, or absent.
    let storage = LocalDirStorage::new(&dir)?;
    let left = match read_savepoint(&storage) {
        Ok(meta) => {
            assert_restores_exactly(&dir, tmp.path(), &model)?;
            let left = strays(&dir, &listed(&meta))?;
            assert!(
                left.is_empty(),
                "{what}: files beside a complete savepoint: {left:?}"
            );
            left
        }
        Err(Error::MissingFile { .. }) => {
            assert!(
                fired,
                "{what}: a savepoint written without a fault is visible"
            );
            strays(&dir, &BTreeSet::new())?
        }
        Err(e) => panic!("{what}: a savepoint is complete or absent, got {e:?}"),
    };

    // The retry, into the same directory, from the same (still running) job: it replaces
    // every data file the failed attempt left.
    let meta = write_savepoint(&mut backends, &storage)?;
    assert_restores_exactly(&dir, tmp.path(), &model)?;
    assert!(strays(&dir, &listed(&meta))?.is_empty(), "{what}");
    // Completing the retry removes the temporary files the crashed attempt left.
    let temporaries: Vec<_> = storage
        .list(None)?
        .into_iter()
        .filter(|o| is_temporary(&o.path))
        .collect();
    assert!(temporaries.is_empty(), "{what}: {temporaries:?}");
    assert!(
        left.is_subset(&listed(&meta)),
        "{what}: {left:?} survived the retry"
    );
    Ok(fired)
}

#[test]
fn every_crash_point_of_writing_a_savepoint_leaves_it_complete_or_absent() -> Result<()> {
    for kind in kinds() {
        for crash in [true, false] {
            let mut swept = 0;
            for k in 1.. {
                if !sweep_point(kind, k, crash)? {
                    break;
                }
                swept += 1;
            }
            println!(
                "{kind}: {swept} {} points",
                if crash { "crash" } else { "failure" }
            );
            // One data file per instance, then `_metadata`.
            assert_eq!(swept, u64::from(PARALLELISM) + 1, "{kind}");
        }
    }
    Ok(())
}

//! What the S3 protocol adds to the storage contract: conditional creates, multipart uploads,
//! throttling and errors retried, lost responses, lost create races, slowness, a stale second
//! coordinator, and how many requests garbage collection makes. Each test starts its own server
//! (faults and counts are per server).

use std::sync::Arc;
use std::time::Duration;

use crate::common::checkpointing::{assert_matches_model, config, kinds, random_job};
use crate::common::model::Handles;
use statebackend::checkpoint::{
    CheckpointCoordinator, RestoreMode, latest_restorable, restore_instance,
};
use statebackend::storage::{CheckpointStorage, MULTIPART_THRESHOLD, StoragePath};
use statebackend::{BackendKind, CheckpointDriver, DriverOptions, Error, KeyGroupRange, Result};
use statebackend_s3_loopback::{Fault, FaultRule, LoopbackS3, RequestKind};

mod faults;
mod untrusted;

fn sp(path: &str) -> StoragePath {
    StoragePath::parse(path).unwrap()
}

fn start() -> LoopbackS3 {
    LoopbackS3::start().expect("start the loopback S3 server")
}

#[test]
fn the_storage_contract_holds_over_s3() -> Result<()> {
    let server = start();
    let storage = server.storage("root")?;
    storage.put(&sp("chk-0000000001/_metadata"), b"one")?;
    storage.put(&sp("chk-0000000001/_metadata"), b"two")?;
    assert_eq!(storage.get(&sp("chk-0000000001/_metadata"))?, b"two");
    storage.put_new(&sp("chk-0000000002/_metadata"), b"first")?;
    assert!(matches!(
        storage.put_new(&sp("chk-0000000002/_metadata"), b"second"),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(storage.get(&sp("chk-0000000002/_metadata"))?, b"first");
    assert!(matches!(
        storage.get(&sp("shared/missing.sst")),
        Err(Error::MissingFile { .. })
    ));
    assert_eq!(storage.size(&sp("shared/missing.sst"))?, None);
    storage.put(&sp("chk-00000000010/x"), b"x")?;
    assert_eq!(storage.list(Some(&sp("chk-0000000001")))?.len(), 1);
    storage.delete(&sp("chk-0000000001/_metadata"))?;
    storage.delete(&sp("chk-0000000001/_metadata"))?;
    assert!(!storage.exists(&sp("chk-0000000001/_metadata"))?);
    // Another prefix of the bucket is another root.
    let other = server.storage("other")?;
    assert!(other.list(None)?.is_empty());
    Ok(())
}

#[test]
fn a_large_file_goes_up_in_parts_streamed_and_comes_back_whole() -> Result<()> {
    let server = start();
    let storage = server.storage("root")?;
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("big.sst");
    let size = MULTIPART_THRESHOLD as usize + 5 * 1024 * 1024 + 3;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let before = server.counts();
    assert_eq!(
        storage.put_file(&sp("shared/a/big.sst"), &local)?,
        size as u64
    );
    let upload = server.counts().since(&before);
    assert_eq!(upload.of(RequestKind::CreateMultipart), 1, "{upload:?}");
    assert_eq!(upload.of(RequestKind::UploadPart), 2, "{upload:?}");
    assert_eq!(upload.of(RequestKind::CompleteMultipart), 1, "{upload:?}");
    assert_eq!(upload.of(RequestKind::Put), 0, "{upload:?}");
    assert_eq!(upload.bytes_in, size as u64);
    let back = tmp.path().join("back.sst");
    assert_eq!(
        storage.get_to_file(&sp("shared/a/big.sst"), &back)?,
        size as u64
    );
    assert!(std::fs::read(&back).unwrap() == data);
    // A failed part abandons the upload: nothing appears.
    server.inject(
        FaultRule::new(Fault::Reject(500))
            .on(RequestKind::UploadPart)
            .times(50),
    );
    assert!(matches!(
        storage.put_file(&sp("shared/a/failed.sst"), &local),
        Err(Error::ObjectStore { .. })
    ));
    server.clear_faults();
    assert_eq!(storage.size(&sp("shared/a/failed.sst"))?, None);
    Ok(())
}

#[test]
fn throttling_and_server_errors_are_retried_and_the_last_failure_is_typed() -> Result<()> {
    let server = start();
    let storage = server.storage_with_retries("root", 3)?;
    server.inject(
        FaultRule::new(Fault::Reject(503))
            .on(RequestKind::Put)
            .times(2),
    );
    let before = server.counts();
    storage.put(&sp("chk-0000000001/a"), b"a")?;
    let counts = server.counts().since(&before);
    assert_eq!(
        counts.of(RequestKind::Put),
        3,
        "two throttled, then served: {counts:?}"
    );
    assert_eq!(counts.faulted, 2);
    assert_eq!(storage.get(&sp("chk-0000000001/a"))?, b"a");

    // More failures than retries: a typed error, and nothing half done.
    server.inject(
        FaultRule::new(Fault::Reject(500))
            .on(RequestKind::Get)
            .times(10),
    );
    let failed = storage.get(&sp("chk-0000000001/a"));
    assert!(
        matches!(failed, Err(Error::ObjectStore { .. })),
        "{failed:?}"
    );
    server.clear_faults();
    assert_eq!(storage.get(&sp("chk-0000000001/a"))?, b"a");
    Ok(())
}

/// The `_metadata` create takes effect but its response is lost: the client's retry finds the
/// object (412), and the coordinator, finding its own bytes there, reports the checkpoint
/// complete, as it is. Without retries the same holds through the coordinator's own check.
#[test]
fn a_lost_response_to_the_metadata_create_still_completes_the_checkpoint() -> Result<()> {
    for retries in [0, 2] {
        let server = start();
        let storage: Arc<dyn CheckpointStorage> =
            Arc::new(server.storage_with_retries("root", retries)?);
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
        let (mut job, model) = random_job(BackendKind::Heap, 2, 5, 300)?;
        coordinator.begin(1)?;
        let parts = job
            .iter_mut()
            .map(|b| Ok(b.snapshot(1)?.upload(storage.as_ref())?.0))
            .collect::<Result<Vec<_>>>()?;
        server.inject(
            FaultRule::new(Fault::LoseResponse(500))
                .on(RequestKind::Put)
                .key_contains("_metadata"),
        );
        coordinator.complete(1, parts)?;
        assert_eq!(server.counts().faulted, 1);
        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(meta.id, 1);
        let all = KeyGroupRange::all(128)?;
        let mut b = restore_instance(
            storage.as_ref(),
            &meta,
            &config(BackendKind::Heap, all),
            RestoreMode::NoClaim,
        )?;
        let h = Handles::register(&mut b)?;
        assert_matches_model(&mut b, &h, &model)?;
    }
    Ok(())
}

/// Another writer creates `_metadata` between the coordinator's decision and its PUT: the
/// conditional create fails, the other writer's object stays, and the coordinator reports
/// itself stale.
#[test]
fn a_lost_create_race_is_a_typed_error_and_replaces_nothing() -> Result<()> {
    let server = start();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(server.storage("root")?);
    let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
    let (mut job, _) = random_job(BackendKind::Heap, 1, 9, 100)?;
    coordinator.begin(1)?;
    let part = job[0].snapshot(1)?.upload(storage.as_ref())?.0;
    server.inject(
        FaultRule::new(Fault::RaceCreate(b"the other writer's".to_vec()))
            .on(RequestKind::Put)
            .key_contains("_metadata"),
    );
    let refused = coordinator.complete(1, vec![part]);
    assert!(
        matches!(&refused, Err(Error::CheckpointState { id: 1, reason }) if reason.contains("stale")),
        "{refused:?}"
    );
    assert_eq!(
        storage.get(&sp("chk-0000000001/_metadata"))?,
        b"the other writer's"
    );
    Ok(())
}

/// Two coordinators on one root: the zombie (opened first) and the live one (opened after a
/// failover). The zombie can neither complete a checkpoint nor delete anything, whatever ids
/// it uses; the live one's checkpoints restore.
#[test]
fn a_stale_coordinator_can_neither_complete_nor_delete() -> Result<()> {
    let server = start();
    let storage: Arc<dyn CheckpointStorage> = Arc::new(server.storage("root")?);
    let all = KeyGroupRange::all(128)?;
    let mut zombie = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    let (mut zombie_job, model) = random_job(BackendKind::Heap, 1, 1, 200)?;
    for id in 1..=2 {
        zombie.begin(id)?;
        let part = zombie_job[0].snapshot(id)?.upload(storage.as_ref())?.0;
        zombie.complete(id, vec![part])?;
    }
    // Failover: the live coordinator opens the root and restores the zombie's checkpoint 2.
    let mut live = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    assert!(live.epoch() > zombie.epoch());
    let meta = live.prepare_restore(2, RestoreMode::Claim)?;
    let mut live_b = restore_instance(
        storage.as_ref(),
        &meta,
        &config(BackendKind::Heap, all),
        RestoreMode::Claim,
    )?;
    live.begin(3)?;
    let live_part = live_b.snapshot(3)?.upload(storage.as_ref())?.0;
    live.complete(3, vec![live_part])?;
    live_b.notify_checkpoint_complete(&live.latest().unwrap().instances[0])?;
    let files_before: Vec<_> = storage.list(None)?;

    // The zombie goes on: a new id, and the id the live coordinator used.
    for id in [3, 4] {
        let begun = zombie.begin(id);
        if begun.is_err() {
            continue;
        }
        let part = zombie_job[0].snapshot(id)?.upload(storage.as_ref())?.0;
        let refused = zombie.complete(id, vec![part]);
        assert!(
            matches!(refused, Err(Error::Fenced { .. })),
            "zombie completed {id}: {refused:?}"
        );
        zombie.abort(id)?;
    }
    let refused = zombie.collect_orphans();
    assert!(matches!(refused, Err(Error::Fenced { .. })), "{refused:?}");
    // Nothing the live coordinator wrote is gone, and no zombie checkpoint appeared.
    let files_after = storage.list(None)?;
    for file in &files_before {
        assert!(files_after.contains(file), "{} deleted", file.path);
    }
    let restorable = latest_restorable(storage.as_ref())?;
    assert_eq!(restorable.id, 3);
    let mut restored = restore_instance(
        storage.as_ref(),
        &restorable,
        &config(BackendKind::Heap, all),
        RestoreMode::NoClaim,
    )?;
    let h = Handles::register(&mut restored)?;
    assert_matches_model(&mut restored, &h, &model)?;
    Ok(())
}

/// Completions list nothing: retention deletes what the dropped checkpoints listed. Only an
/// abort (whose uploads nothing lists) makes the next quiet completion list the root, once.
#[test]
fn garbage_collection_lists_the_root_only_after_failures() -> Result<()> {
    for kind in kinds() {
        let server = start();
        let storage: Arc<dyn CheckpointStorage> = Arc::new(server.storage("root")?);
        let mut driver = CheckpointDriver::new(
            CheckpointCoordinator::open(Arc::clone(&storage), 1)?,
            DriverOptions::default(),
        );
        let (mut job, _) = random_job(kind, 2, 3, 400)?;
        let after_open = server.counts();
        for _ in 0..5 {
            driver.checkpoint(&mut job)?;
        }
        let counts = server.counts().since(&after_open);
        assert_eq!(counts.of(RequestKind::List), 0, "{kind}: {counts:?}");
        // Each retention pass: the dropped `_metadata`, then one batch for its files.
        let deletes = counts.of(RequestKind::Delete);
        assert!(deletes > 0 && deletes <= 2 * 5, "{kind}: {counts:?}");
        println!("{kind}: 5 checkpoints of 2 instances: {counts:?}");
        // Only the newest checkpoint's files are left (and the coordinator's epoch and, while
        // it lives, its lease).
        let newest = driver.coordinator().latest().unwrap().clone();
        let mut expected: Vec<String> = newest.files().map(|f| f.path.to_string()).collect();
        expected.push(format!("chk-{:010}/_metadata", newest.id));
        expected.push("_coordinator/epoch-00000000000000000001".into());
        expected.push("_coordinator/lease-00000000000000000001".into());
        expected.sort();
        let mut found: Vec<String> = storage
            .list(None)?
            .into_iter()
            .map(|o| o.path.to_string())
            .collect();
        found.sort();
        assert_eq!(found, expected, "{kind}");
    }
    Ok(())
}

/// With a slow server, the files of one checkpoint go up several at a time (bounded by the
/// storage's transfer concurrency), and one at a time when it is 1.
#[test]
fn the_files_of_one_checkpoint_are_transferred_concurrently_within_the_bound() -> Result<()> {
    if !cfg!(feature = "rocksdb") {
        // Only RocksDB checkpoints have several files per instance.
        return Ok(());
    }
    for (concurrency, expect_parallel) in [(1, false), (4, true)] {
        let server = start();
        server.set_latency(Duration::from_millis(30));
        let storage: Arc<dyn CheckpointStorage> = Arc::new(
            server
                .storage("root")?
                .with_transfer_concurrency(concurrency),
        );
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
        let (mut job, _) = random_job(BackendKind::RocksDb, 1, 4, 500)?;
        let before = server.counts();
        coordinator.begin(1)?;
        let part = job[0].snapshot(1)?.upload(storage.as_ref())?.0;
        coordinator.complete(1, vec![part])?;
        let counts = server.counts().since(&before);
        if expect_parallel {
            assert!(counts.max_in_flight > 1, "{counts:?}");
            assert!(counts.max_in_flight <= concurrency as u64 + 1, "{counts:?}");
        } else {
            assert_eq!(counts.max_in_flight, 1, "{counts:?}");
        }
    }
    Ok(())
}

/// A rescaled restore of a savepoint reads only the ranges of the data file that hold its key
/// groups (plus header, index and footer), and restores exactly those key groups.
#[test]
fn a_rescaled_savepoint_restore_reads_only_its_key_groups() -> Result<()> {
    use statebackend::savepoint::{complete_savepoint, restore_savepoint};
    use statebackend::{AnyBackend, KeyedStateBackend, ValueState, ValueStateDescriptor};

    const KEYS: u64 = 20_000;
    let value = |k: u64| -> Vec<u8> { (0..200).map(|i| (k * 31 + i) as u8).collect() };
    let descriptor = ValueStateDescriptor::new("values");
    let server = start();
    let storage = server.storage("savepoints/sp-1")?;
    let all = KeyGroupRange::all(128)?;
    let mut b = AnyBackend::open(&config(BackendKind::Heap, all))?;
    let values: ValueState<u64, (), Vec<u8>> = b.value_state(&descriptor)?;
    for k in 0..KEYS {
        values.put(&mut b, &k, &(), value(k))?;
    }
    let part = b.savepoint()?.write(&storage)?;
    let meta = complete_savepoint(&storage, vec![part])?;
    let file_bytes = meta.total_bytes();
    assert!(file_bytes > 3 << 20, "{file_bytes}: several read windows");

    let mut restored_keys = 0;
    let mut read_in_all = 0;
    for i in 0..4 {
        let range = KeyGroupRange::for_operator(128, 4, i)?;
        let before = server.counts();
        let mut r = restore_savepoint(&storage, &meta, &config(BackendKind::Heap, range))?;
        let read = server.counts().since(&before);
        // A quarter of the key groups, read in 1 MiB windows: well under the whole file.
        assert!(read.bytes_out < file_bytes / 2, "{read:?} of {file_bytes}");
        read_in_all += read.bytes_out;
        println!(
            "key groups {range:?}: {} GETs, {} of {file_bytes} bytes",
            read.of(RequestKind::Get),
            read.bytes_out
        );
        let values: ValueState<u64, (), Vec<u8>> = r.value_state(&descriptor)?;
        for k in 0..KEYS {
            let context = match r.key_context(k) {
                Ok(context) => context,
                Err(_) => continue,
            };
            assert_eq!(values.get(&r, &context, &())?, Some(value(k)), "key {k}");
            restored_keys += 1;
        }
    }
    assert_eq!(restored_keys, KEYS);
    assert!(read_in_all >= file_bytes, "{read_in_all} of {file_bytes}");
    // Restoring every key group downloads the file whole (and verifies its crc32).
    let before = server.counts();
    restore_savepoint(&storage, &meta, &config(BackendKind::Heap, all))?;
    let read = server.counts().since(&before);
    assert_eq!(read.of(RequestKind::Get), 1, "{read:?}");
    assert_eq!(read.bytes_out, file_bytes);
    Ok(())
}

/// The k-th request of a checkpoint cycle (snapshot upload, completion, retention) fails, for
/// every k, with no retries left: the cycle fails with a typed error or completes, and after a
/// restart on the healthy server the newest completed checkpoint restores exactly, with no
/// file of it lost.
#[test]
fn any_failed_request_of_a_checkpoint_cycle_loses_nothing() -> Result<()> {
    let server = start();
    for kind in kinds() {
        let mut k = 1;
        loop {
            let prefix = format!("sweep/{kind}/{k}");
            let storage: Arc<dyn CheckpointStorage> =
                Arc::new(server.storage_with_retries(&prefix, 0)?);
            let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
            let (mut job, first) = random_job(kind, 1, 40 + k, 200)?;
            coordinator.begin(1)?;
            let part = job[0].snapshot(1)?.upload(storage.as_ref())?.0;
            coordinator.complete(1, vec![part])?;
            job[0].notify_checkpoint_complete(&coordinator.latest().unwrap().instances[0])?;
            // Checkpoint 2 of the same state, with the k-th request from here failing.
            let before = server.counts();
            server.inject(FaultRule::new(Fault::Reject(500)).skip(k - 1));
            let cycle = (|| -> Result<()> {
                coordinator.begin(2)?;
                let part = job[0].snapshot(2)?.upload(storage.as_ref())?.0;
                coordinator.complete(2, vec![part])?;
                Ok(())
            })();
            let fired = server.counts().since(&before).faulted == 1;
            server.clear_faults();
            if let Err(e) = &cycle {
                assert!(
                    matches!(e, Error::ObjectStore { .. }),
                    "{kind} k={k}: {e:?}"
                );
            }
            drop(coordinator);
            let meta = latest_restorable(storage.as_ref())?;
            assert!(meta.id == 2 || cycle.is_err(), "{kind} k={k}");
            let all = KeyGroupRange::all(128)?;
            let mut b = restore_instance(
                storage.as_ref(),
                &meta,
                &config(kind, all),
                RestoreMode::NoClaim,
            )?;
            let h = Handles::register(&mut b)?;
            assert_matches_model(&mut b, &h, &first)?;
            if !fired {
                // The cycle made fewer than k requests: every one has been broken once.
                assert!(k > 3, "{kind}: only {k} requests");
                break;
            }
            k += 1;
        }
    }
    Ok(())
}

/// Issue 25, item 9: a multipart upload whose completion fails (an error past the client's
/// retries, connection resets, a "no such upload" as a completion retried after it took effect
/// gets) is aborted: its parts are not left behind, no object appears, and the error is the
/// upload's (`ObjectStore`), never a missing file.
#[test]
fn a_multipart_upload_whose_completion_fails_is_aborted() -> Result<()> {
    let server = start();
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("big.sst");
    let data: Vec<u8> = (0..MULTIPART_THRESHOLD as usize + 1024)
        .map(|i| (i % 249) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();
    let faults = [
        (0, Fault::Reject(500)),
        (2, Fault::Reset),
        (0, Fault::Reject(404)),
    ];
    for (retries, fault) in faults {
        let storage = server.storage_with_retries("root", retries)?;
        let path = sp(&format!("shared/a/{retries}.sst"));
        server.inject(
            FaultRule::new(fault.clone())
                .on(RequestKind::CompleteMultipart)
                .times(retries as u64 + 1),
        );
        let before = server.counts();
        let failed = storage.put_file(&path, &local);
        let counts = server.counts().since(&before);
        server.clear_faults();
        assert!(
            matches!(failed, Err(Error::ObjectStore { .. })),
            "{fault:?}: {failed:?}"
        );
        assert_eq!(
            counts.of(RequestKind::CompleteMultipart),
            retries as u64 + 1,
            "{fault:?}: {counts:?}"
        );
        assert_eq!(
            counts.of(RequestKind::AbortMultipart),
            1,
            "{fault:?}: {counts:?}"
        );
        assert_eq!(storage.size(&path)?, None, "{fault:?}");
        // The server holds no upload in progress either.
        assert!(
            !walk(server.data_dir()).iter().any(|f| f.contains("upload")),
            "{fault:?}: {:?}",
            walk(server.data_dir())
        );
    }
    Ok(())
}

/// Every file below `dir`, as paths relative to it.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// Issue 25, item 15: a conditional create (an epoch file when a coordinator opens, a
/// `_metadata` when it completes) whose connection is reset, before or after the create took
/// effect, or whose answer is lost with no retries left, is retried: the open and the
/// completion succeed, and a retry that finds the object holding its own bytes takes it as its
/// own (the epoch is not skipped).
#[test]
fn a_reset_conditional_create_is_retried_and_finds_its_own_object() -> Result<()> {
    let faults = [
        (3, Fault::Reset),
        (3, Fault::ResetAfterServing),
        (0, Fault::Reset),
        (0, Fault::ResetAfterServing),
        (0, Fault::LoseResponse(500)),
    ];
    for (retries, fault) in faults {
        let server = start();
        let storage: Arc<dyn CheckpointStorage> =
            Arc::new(server.storage_with_retries("root", retries)?);
        let case = format!("{fault:?} with {retries} retries");
        // The epoch file.
        server.inject(
            FaultRule::new(fault.clone())
                .conditional()
                .key_contains("_coordinator/epoch-"),
        );
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)
            .unwrap_or_else(|e| panic!("{case}: open failed: {e:?}"));
        assert_eq!(server.counts().faulted, 1, "{case}");
        assert_eq!(coordinator.epoch(), 1, "{case}");
        let epoch = storage.get(&sp("_coordinator/epoch-00000000000000000001"))?;
        assert!(epoch.starts_with(b"1 "), "{case}: {epoch:?}");
        // The `_metadata`.
        let (mut job, model) = random_job(BackendKind::Heap, 2, 31, 300)?;
        coordinator.begin(1)?;
        let parts = job
            .iter_mut()
            .map(|b| Ok(b.snapshot(1)?.upload(storage.as_ref())?.0))
            .collect::<Result<Vec<_>>>()?;
        server.inject(
            FaultRule::new(fault.clone())
                .conditional()
                .key_contains("_metadata"),
        );
        coordinator
            .complete(1, parts)
            .unwrap_or_else(|e| panic!("{case}: completion failed: {e:?}"));
        assert_eq!(server.counts().faulted, 2, "{case}");
        let meta = latest_restorable(storage.as_ref())?;
        assert_eq!(meta.id, 1, "{case}");
        let mut b = restore_instance(
            storage.as_ref(),
            &meta,
            &config(BackendKind::Heap, KeyGroupRange::all(128)?),
            RestoreMode::NoClaim,
        )?;
        let h = Handles::register(&mut b)?;
        assert_matches_model(&mut b, &h, &model)?;
    }
    Ok(())
}

/// A conditional create whose first attempt is reset, and which another writer then wins with
/// other bytes, is still `AlreadyExists`, and the other writer's object stays. Two openers of
/// one root never write the same epoch file bytes.
#[test]
fn a_retried_create_that_lost_to_another_writer_is_already_exists() -> Result<()> {
    let server = start();
    let storage = server.storage_with_retries("root", 0)?;
    let path = sp("chk-0000000001/_metadata");
    server.inject(FaultRule::new(Fault::Reset).conditional());
    server.inject(
        FaultRule::new(Fault::RaceCreate(b"the other writer's".to_vec()))
            .on(RequestKind::Put)
            .key_contains("_metadata"),
    );
    let before = server.counts();
    let lost = storage.put_new(&path, b"mine");
    assert!(matches!(lost, Err(Error::AlreadyExists { .. })), "{lost:?}");
    let counts = server.counts().since(&before);
    assert_eq!((counts.conditional, counts.faulted), (2, 2), "{counts:?}");
    assert_eq!(storage.get(&path)?, b"the other writer's");
    // Epoch files: one per opener, each with bytes of its own.
    let storage: Arc<dyn CheckpointStorage> = Arc::new(storage);
    let first = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    let second = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    assert_eq!((first.epoch(), second.epoch()), (1, 2));
    let one = storage.get(&sp("_coordinator/epoch-00000000000000000001"))?;
    let two = storage.get(&sp("_coordinator/epoch-00000000000000000002"))?;
    assert!(one.starts_with(b"1 ") && two.starts_with(b"2 "));
    assert_ne!(one[2..], two[2..], "the nonces differ");
    Ok(())
}

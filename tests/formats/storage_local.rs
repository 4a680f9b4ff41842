//! Checkpoint storage: path validation, the local directory storage and the fault injector.

use std::sync::Arc;

use statebackend::storage::{is_temporary, temporary_path};
use statebackend::{
    CheckpointStorage, Error, FaultMode, FaultyStorage, LocalDirStorage, ObjectMeta, StoragePath,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn sp(path: &str) -> StoragePath {
    StoragePath::parse(path).expect("test paths are valid")
}

fn paths(list: &[ObjectMeta]) -> Vec<&str> {
    list.iter().map(|m| m.path.as_str()).collect()
}

/// Deterministic, non-repeating-looking content.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------------
// StoragePath

#[test]
fn path_validation_rejects_unsafe_paths() {
    let long_component = "a".repeat(256);
    let long_path = vec!["a".repeat(200); 6].join("/"); // 1205 bytes
    let rejected = [
        "",
        "..",
        ".",
        "../x",
        "a/../b",
        "a/..",
        "/abs",
        "/",
        "a//b",
        "a/",
        "a/./b",
        "a\\b",
        "a\0b",
        "a b",
        "é",
        "chk-1/métadata",
        long_component.as_str(),
        long_path.as_str(),
    ];
    for path in rejected {
        match StoragePath::parse(path) {
            Err(Error::InvalidPath { path: reported, .. }) => assert_eq!(reported, path),
            other => panic!("{path:?} should be rejected, got {other:?}"),
        }
        assert!(StoragePath::try_from(path).is_err());
    }
}

#[test]
fn path_validation_accepts_checkpoint_names_and_limits() -> TestResult {
    for path in [
        "chk-00000001/_metadata",
        "shared/ab12/000123.sst",
        "a",
        ".hidden",
        "x..y",
        "A-Z_0.9",
    ] {
        assert_eq!(StoragePath::parse(path)?.as_str(), path);
    }
    // Exactly at the limits.
    StoragePath::parse(&"a".repeat(StoragePath::MAX_COMPONENT_LEN))?;
    let at_limit = [
        "a".repeat(255),
        "b".repeat(255),
        "c".repeat(255),
        "d".repeat(254),
        "e".to_string(),
    ]
    .join("/");
    assert_eq!(at_limit.len(), StoragePath::MAX_LEN);
    StoragePath::parse(&at_limit)?;
    assert!(StoragePath::parse(&format!("{at_limit}f")).is_err());
    Ok(())
}

#[test]
fn path_accessors() -> TestResult {
    let p = StoragePath::try_from("shared/ab12/000123.sst")?;
    assert_eq!(p.file_name(), "000123.sst");
    assert_eq!(p.parent(), Some(sp("shared/ab12")));
    assert_eq!(sp("top").parent(), None);
    assert_eq!(sp("top").file_name(), "top");
    assert_eq!(p.to_string(), "shared/ab12/000123.sst");
    assert_eq!(
        p.components().collect::<Vec<_>>(),
        ["shared", "ab12", "000123.sst"]
    );
    assert_eq!(sp("shared").join("ab12")?.join("000123.sst")?, p);
    assert!(sp("a").join("..").is_err());
    assert!(sp("a").join("b/c").is_err());
    assert!(sp("a").join("").is_err());
    assert!(sp("a").join(&"x".repeat(256)).is_err());
    assert!(p.starts_with(&sp("shared")));
    assert!(p.starts_with(&p));
    assert!(!p.starts_with(&sp("share")));
    assert!(!sp("chk-10").starts_with(&sp("chk-1")));
    Ok(())
}

#[test]
fn temporary_names_are_valid_paths_and_recognised() -> TestResult {
    let target = sp("chk-1/_metadata");
    let temp = temporary_path(&target, 0x0123_4567_89ab_cdef)?;
    assert_eq!(temp.as_str(), "chk-1/_metadata.tmp-0123456789abcdef");
    assert!(is_temporary(&temp));
    assert!(!is_temporary(&target));
    assert!(!is_temporary(&sp("a.tmp-0123")));
    assert!(!is_temporary(&sp("a.tmp-0123456789ABCDEF")));
    assert!(!is_temporary(&sp(".tmp-0123456789abcdef")));
    assert!(!is_temporary(&sp("a.tmp-0123456789abcdef/child")));

    // A maximal name is shortened so that its temp sibling is still a valid path.
    let long = sp(&"n".repeat(255));
    let temp = temporary_path(&long, 7)?;
    assert!(is_temporary(&temp));
    assert_eq!(temp.file_name().len(), 255);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// LocalDirStorage

#[test]
fn put_get_round_trip_and_overwrite() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(dir.path().join("nested/root"))?;
    assert!(storage.root().is_dir());

    let path = sp("chk-00000001/_metadata");
    storage.put(&path, b"first version")?;
    assert_eq!(storage.get(&path)?, b"first version");
    assert_eq!(std::fs::read(storage.local_path(&path))?, b"first version");

    storage.put(&path, b"v2")?;
    assert_eq!(storage.get(&path)?, b"v2");
    storage.put(&path, b"")?;
    assert_eq!(storage.get(&path)?, b"");

    // No temporary files are left after successful writes.
    assert_eq!(paths(&storage.list(None)?), ["chk-00000001/_metadata"]);

    match storage.get(&sp("chk-00000001/missing")) {
        Err(Error::MissingFile { file }) => assert_eq!(file, "chk-00000001/missing"),
        other => panic!("expected MissingFile, got {other:?}"),
    }
    // A directory is not a file.
    assert!(matches!(
        storage.get(&sp("chk-00000001")),
        Err(Error::MissingFile { .. })
    ));
    // Nor is a path below a file.
    assert!(matches!(
        storage.get(&sp("chk-00000001/_metadata/x")),
        Err(Error::MissingFile { .. })
    ));
    Ok(())
}

#[test]
fn put_file_and_get_to_file_stream_large_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(dir.path().join("storage"))?;
    let data = pattern(5 * 1024 * 1024 + 17);
    let source = dir.path().join("source.sst");
    std::fs::write(&source, &data)?;

    let path = sp("shared/ab12/000123.sst");
    assert_eq!(storage.put_file(&path, &source)?, data.len() as u64);
    assert_eq!(storage.size(&path)?, Some(data.len() as u64));
    assert!(storage.get(&path)? == data);

    // Download replaces an existing local file.
    let restored = dir.path().join("restored.sst");
    std::fs::write(&restored, b"stale")?;
    assert_eq!(storage.get_to_file(&path, &restored)?, data.len() as u64);
    assert!(std::fs::read(&restored)? == data);

    // A missing source is an I/O error naming the local file, and stores nothing.
    let missing_source = dir.path().join("nope.sst");
    match storage.put_file(&sp("shared/other.sst"), &missing_source) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing_source),
        other => panic!("expected Io, got {other:?}"),
    }
    // A missing stored file is MissingFile, and the local target is not created.
    let not_created = dir.path().join("not-created");
    assert!(matches!(
        storage.get_to_file(&sp("shared/absent.sst"), &not_created),
        Err(Error::MissingFile { .. })
    ));
    assert!(!not_created.exists());
    assert_eq!(paths(&storage.list(None)?), ["shared/ab12/000123.sst"]);
    Ok(())
}

#[test]
fn list_is_recursive_sorted_and_filtered_by_prefix() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(dir.path())?;
    for (path, len) in [
        ("shared/b/2.sst", 2),
        ("chk-2/_metadata", 22),
        ("chk-1/_metadata", 11),
        ("shared/a/1.sst", 1),
        ("chk-10/_metadata", 10),
        ("chk-1/private/x", 3),
        ("top", 0),
    ] {
        storage.put(&sp(path), &pattern(len))?;
    }
    // Not a valid storage name: invisible.
    std::fs::write(dir.path().join("has space"), b"x")?;

    let all = storage.list(None)?;
    assert_eq!(
        paths(&all),
        [
            "chk-1/_metadata",
            "chk-1/private/x",
            "chk-10/_metadata",
            "chk-2/_metadata",
            "shared/a/1.sst",
            "shared/b/2.sst",
            "top",
        ]
    );
    assert_eq!(
        all[0],
        ObjectMeta {
            path: sp("chk-1/_metadata"),
            size: 11
        }
    );
    assert_eq!(
        all.iter().map(|m| m.size).sum::<u64>(),
        11 + 3 + 10 + 22 + 1 + 2
    );

    // Prefixes match whole components.
    assert_eq!(
        paths(&storage.list(Some(&sp("chk-1")))?),
        ["chk-1/_metadata", "chk-1/private/x"]
    );
    assert_eq!(
        paths(&storage.list(Some(&sp("shared")))?),
        ["shared/a/1.sst", "shared/b/2.sst"]
    );
    // A prefix naming a file lists that file.
    assert_eq!(paths(&storage.list(Some(&sp("top")))?), ["top"]);
    assert!(storage.list(Some(&sp("chk-3")))?.is_empty());
    assert!(storage.list(Some(&sp("top/below")))?.is_empty());
    Ok(())
}

#[test]
fn delete_is_idempotent_and_prunes_empty_directories() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(dir.path().join("root"))?;
    let a = sp("chk-1/private/a");
    let b = sp("chk-1/b");
    storage.put(&a, b"a")?;
    storage.put(&b, b"b")?;

    storage.delete(&a)?;
    assert!(!storage.exists(&a)?);
    storage.delete(&a)?; // again
    storage.delete(&sp("never/existed"))?;
    // `chk-1/private` became empty and is gone; `chk-1` still holds `b`.
    assert!(!storage.root().join("chk-1/private").exists());
    assert!(storage.root().join("chk-1").is_dir());

    storage.delete(&b)?;
    assert!(!storage.root().join("chk-1").exists());
    assert!(storage.root().is_dir(), "the root itself is kept");
    assert!(storage.list(None)?.is_empty());

    // Writing below a pruned directory recreates it.
    storage.put(&a, b"again")?;
    assert_eq!(storage.get(&a)?, b"again");
    Ok(())
}

#[test]
fn exists_and_size() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(dir.path())?;
    let path = sp("chk-1/_metadata");
    assert!(!storage.exists(&path)?);
    assert_eq!(storage.size(&path)?, None);
    storage.put(&path, &[0u8; 1234])?;
    assert!(storage.exists(&path)?);
    assert_eq!(storage.size(&path)?, Some(1234));
    // Directories are not objects.
    assert!(!storage.exists(&sp("chk-1"))?);
    assert_eq!(storage.size(&sp("chk-1"))?, None);
    Ok(())
}

#[test]
fn paths_too_long_for_a_temp_sibling_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(dir.path())?;
    // Directory part of 1011 bytes: no room for `<name>.tmp-<16 hex>`.
    let dirs = [
        "a".repeat(255),
        "b".repeat(255),
        "c".repeat(255),
        "d".repeat(243),
    ]
    .join("/");
    let path = sp(&format!("{dirs}/x"));
    assert!(matches!(
        storage.put(&path, b"x"),
        Err(Error::InvalidPath { .. })
    ));
    assert!(!storage.exists(&path)?);
    assert_eq!(
        std::fs::read_dir(storage.root())?.count(),
        0,
        "no directories created"
    );
    Ok(())
}

#[test]
fn link_or_copy_to_shares_or_copies_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(dir.path().join("storage"))?;
    let path = sp("shared/000007.sst");
    storage.put(&path, b"immutable sst")?;

    let restored = dir.path().join("restored.sst");
    assert_eq!(storage.link_or_copy_to(&path, &restored)?, 13);
    assert_eq!(std::fs::read(&restored)?, b"immutable sst");

    // The target must not exist.
    assert!(matches!(
        storage.link_or_copy_to(&path, &restored),
        Err(Error::Io { .. })
    ));
    // Overwriting the stored file does not change the restored one.
    storage.put(&path, b"replaced")?;
    assert_eq!(std::fs::read(&restored)?, b"immutable sst");

    assert!(matches!(
        storage.link_or_copy_to(&sp("shared/absent.sst"), &dir.path().join("absent")),
        Err(Error::MissingFile { .. })
    ));
    Ok(())
}

/// With the storage on another filesystem (tmpfs `/dev/shm` where there is one), hard links
/// fail and `link_or_copy_to` falls back to copying, with the same contract.
#[test]
fn link_or_copy_to_falls_back_to_copying_across_filesystems() -> TestResult {
    let shm = std::path::Path::new("/dev/shm");
    let storage_dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let local_dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(storage_dir.path())?;
    let path = sp("shared/000009.sst");
    let data = pattern(300_000);
    storage.put(&path, &data)?;

    let restored = local_dir.path().join("000009.sst");
    assert_eq!(
        storage.link_or_copy_to(&path, &restored)?,
        data.len() as u64
    );
    assert!(std::fs::read(&restored)? == data);
    assert!(matches!(
        storage.link_or_copy_to(&path, &restored),
        Err(Error::Io { .. })
    ));
    assert!(
        std::fs::read(&restored)? == data,
        "existing target untouched"
    );
    // Only the restored file is in the local directory: no temp leftovers.
    assert_eq!(std::fs::read_dir(local_dir.path())?.count(), 1);
    Ok(())
}

#[test]
fn concurrent_writers_never_expose_partial_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(dir.path())?;
    let path = sp("chk-1/_metadata");
    const LEN: usize = 256 * 1024;
    storage.put(&path, &vec![0u8; LEN])?;

    std::thread::scope(|scope| -> TestResult {
        let writers: Vec<_> = (1..=4u8)
            .map(|w| {
                let (storage, path) = (&storage, &path);
                scope.spawn(move || -> statebackend::Result<()> {
                    for _ in 0..10 {
                        storage.put(path, &vec![w; LEN])?;
                    }
                    Ok(())
                })
            })
            .collect();
        for _ in 0..40 {
            let data = storage.get(&path)?;
            assert_eq!(data.len(), LEN);
            assert!(data.iter().all(|&b| b == data[0]), "mixed versions");
        }
        for writer in writers {
            writer.join().expect("writer panicked")?;
        }
        Ok(())
    })?;
    assert_eq!(paths(&storage.list(None)?), ["chk-1/_metadata"]);
    Ok(())
}

#[test]
fn storage_is_object_safe_and_forwards_through_pointers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let boxed: Box<dyn CheckpointStorage> = Box::new(LocalDirStorage::new(dir.path())?);
    boxed.put(&sp("a"), b"1")?;
    let shared: Arc<dyn CheckpointStorage> = Arc::from(boxed);
    assert_eq!(shared.get(&sp("a"))?, b"1");
    let faulty = FaultyStorage::new(Arc::clone(&shared), FaultMode::None);
    faulty.put(&sp("b"), b"2")?;
    let by_ref = FaultyStorage::new(&*shared, FaultMode::None);
    by_ref.put(&sp("c"), b"3")?;
    assert_eq!(paths(&shared.list(None)?), ["a", "b", "c"]);
    Ok(())
}

#[cfg(unix)]
fn assert_symlink_refused<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::InvalidPath { reason, .. }) => assert_eq!(reason, "symlink"),
        other => panic!("expected a symlink refusal, got {other:?}"),
    }
}

#[cfg(unix)]
#[test]
fn symlinks_out_of_the_root_are_refused_and_not_listed() -> TestResult {
    use std::os::unix::fs::symlink;

    let outside = tempfile::tempdir()?;
    let secret = outside.path().join("secret");
    std::fs::write(&secret, b"outside the root")?;
    std::fs::create_dir(outside.path().join("dir"))?;
    std::fs::write(outside.path().join("dir/file"), b"also outside")?;

    let dir = tempfile::tempdir()?;
    let storage = LocalDirStorage::new(dir.path())?;
    storage.put(&sp("real"), b"inside")?;
    symlink(&secret, dir.path().join("escape"))?;
    symlink(outside.path().join("dir"), dir.path().join("linked-dir"))?;

    for path in [sp("escape"), sp("linked-dir/file"), sp("linked-dir/new")] {
        assert_symlink_refused(storage.get(&path));
        assert_symlink_refused(storage.get_to_file(&path, &dir.path().join("out")));
        assert_symlink_refused(storage.exists(&path));
        assert_symlink_refused(storage.size(&path));
        assert_symlink_refused(storage.put(&path, b"overwrite"));
        assert_symlink_refused(storage.delete(&path));
        assert_symlink_refused(storage.link_or_copy_to(&path, &dir.path().join("linked")));
    }
    assert_eq!(paths(&storage.list(None)?), ["real"]);
    assert!(storage.list(Some(&sp("linked-dir")))?.is_empty());
    // Nothing outside was touched or created.
    assert_eq!(std::fs::read(&secret)?, b"outside the root");
    assert!(!outside.path().join("dir/new").exists());
    assert!(!dir.path().join("out").exists());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// FaultyStorage

fn injected_op(result: Result<impl std::fmt::Debug, Error>) -> u64 {
    match result {
        Err(Error::InjectedFault { op }) => op,
        other => panic!("expected an injected fault, got {other:?}"),
    }
}

#[test]
fn fail_at_fails_exactly_one_mutating_operation() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = FaultyStorage::new(LocalDirStorage::new(dir.path())?, FaultMode::FailAt(2));
    storage.put(&sp("a"), b"a")?; // op 1
    assert_eq!(storage.get(&sp("a"))?, b"a"); // reads are not counted
    assert_eq!(injected_op(storage.put(&sp("b"), b"b")), 2);
    assert!(!storage.exists(&sp("b"))?, "a failed op does nothing");
    storage.put(&sp("c"), b"c")?; // op 3
    storage.delete(&sp("a"))?; // op 4
    assert_eq!(storage.ops(), 4);
    assert_eq!(paths(&storage.list(None)?), ["c"]);

    // Deletes count and can fail too.
    storage.set_mode(FaultMode::FailAt(storage.ops() + 1));
    assert_eq!(injected_op(storage.delete(&sp("c"))), 5);
    assert!(storage.exists(&sp("c"))?);
    storage.delete(&sp("c"))?;
    assert_eq!(storage.ops(), 6);
    Ok(())
}

#[test]
fn crash_at_odd_op_fails_everything_after_and_leaves_a_temp_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = FaultyStorage::new(LocalDirStorage::new(dir.path())?, FaultMode::CrashAt(3));
    storage.put(&sp("chk-1/a"), b"a")?; // op 1
    storage.put(&sp("chk-1/b"), b"b")?; // op 2
    assert_eq!(
        injected_op(storage.put(&sp("chk-1/_metadata"), b"0123456789")),
        3
    );

    // The process is dead: everything fails, mutations are still counted.
    assert!(injected_op(storage.get(&sp("chk-1/a"))) >= 3);
    assert!(injected_op(storage.exists(&sp("chk-1/a"))) >= 3);
    assert!(injected_op(storage.size(&sp("chk-1/a"))) >= 3);
    assert!(injected_op(storage.list(None)) >= 3);
    assert!(injected_op(storage.get_to_file(&sp("chk-1/a"), &dir.path().join("x"))) >= 3);
    assert_eq!(injected_op(storage.put(&sp("chk-1/c"), b"c")), 4);
    assert_eq!(injected_op(storage.delete(&sp("chk-1/a"))), 5);
    assert_eq!(storage.ops(), 5);

    // What the crash left: the complete earlier files and a truncated temp file.
    let listed = storage.inner().list(None)?;
    assert_eq!(
        paths(&listed),
        ["chk-1/_metadata.tmp-deadbeefdeadbeef", "chk-1/a", "chk-1/b"]
    );
    assert!(is_temporary(&listed[0].path));
    assert!(!is_temporary(&listed[1].path));
    assert_eq!(storage.inner().get(&listed[0].path)?, b"01234");
    assert!(!storage.inner().exists(&sp("chk-1/_metadata"))?);

    // "Restarting" the process makes the storage usable again.
    storage.set_mode(FaultMode::None);
    assert_eq!(storage.get(&sp("chk-1/a"))?, b"a");
    storage.delete(&listed[0].path)?;
    assert_eq!(paths(&storage.list(None)?), ["chk-1/a", "chk-1/b"]);
    Ok(())
}

#[test]
fn crash_at_even_op_leaves_no_temp_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = FaultyStorage::new(LocalDirStorage::new(dir.path())?, FaultMode::CrashAt(2));
    storage.put(&sp("a"), b"a")?;
    assert_eq!(injected_op(storage.put(&sp("b"), b"bbbb")), 2);
    assert_eq!(paths(&storage.inner().list(None)?), ["a"]);
    Ok(())
}

#[test]
fn crash_during_put_file_leaves_half_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = FaultyStorage::new(
        LocalDirStorage::new(dir.path().join("storage"))?,
        FaultMode::CrashAt(1),
    );
    let source = dir.path().join("000001.sst");
    std::fs::write(&source, pattern(1000))?;
    assert_eq!(
        injected_op(storage.put_file(&sp("shared/000001.sst"), &source)),
        1
    );
    let listed = storage.inner().list(None)?;
    assert_eq!(paths(&listed), ["shared/000001.sst.tmp-deadbeefdeadbeef"]);
    assert_eq!(listed[0].size, 500);
    assert!(is_temporary(&listed[0].path));
    assert_eq!(storage.bytes_written(), 0);
    Ok(())
}

#[test]
fn bytes_written_counts_successful_uploads_only() -> TestResult {
    let dir = tempfile::tempdir()?;
    let storage = FaultyStorage::new(LocalDirStorage::new(dir.path().join("s"))?, FaultMode::None);
    assert_eq!(storage.bytes_written(), 0);
    storage.put(&sp("a"), &[1; 100])?;
    let source = dir.path().join("src");
    std::fs::write(&source, [2; 250])?;
    assert_eq!(storage.put_file(&sp("b"), &source)?, 250);
    assert_eq!(storage.bytes_written(), 350);

    storage.set_mode(FaultMode::FailAt(storage.ops() + 1));
    injected_op(storage.put(&sp("c"), &[3; 1000]));
    assert_eq!(storage.bytes_written(), 350);
    // A failing inner put is not counted either.
    let missing = dir.path().join("missing");
    assert!(matches!(
        storage.put_file(&sp("d"), &missing),
        Err(Error::Io { .. })
    ));
    storage.delete(&sp("a"))?;
    assert_eq!(storage.bytes_written(), 350);
    assert_eq!(storage.ops(), 5);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Create-if-absent on filesystems without hard links, and creates that are not durable
// (issue 25, items 7 and 8)

/// A root on a filesystem without hard links (every link fails with `EPERM`, as on FAT and
/// many FUSE and SMB mounts): coordinators open it (each claiming its epoch with a
/// create-if-absent write), complete checkpoints and restore them.
#[test]
fn a_coordinator_opens_completes_and_restores_on_a_root_without_hard_links() -> TestResult {
    use crate::common::checkpointing::{assert_matches_model, config, random_job};
    use crate::common::model::Handles;
    use statebackend::checkpoint::{
        CheckpointCoordinator, RestoreMode, latest_restorable, restore_instance,
    };
    use statebackend::{BackendKind, CheckpointDriver, DriverOptions, KeyGroupRange};

    let tmp = tempfile::tempdir()?;
    let storage: Arc<dyn CheckpointStorage> =
        Arc::new(LocalDirStorage::new(tmp.path())?.without_hard_links());
    let coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    assert_eq!(coordinator.epoch(), 1);
    let mut driver = CheckpointDriver::new(coordinator, DriverOptions::default());
    let (mut job, model) = random_job(BackendKind::Heap, 2, 17, 300)?;
    assert_eq!(driver.checkpoint(&mut job)?.id, 1);
    assert_eq!(driver.checkpoint(&mut job)?.id, 2);
    // A second coordinator claims the next epoch and fences the first.
    let second = CheckpointCoordinator::open(Arc::clone(&storage), 1)?;
    assert_eq!(second.epoch(), 2);
    assert!(matches!(
        driver.checkpoint(&mut job),
        Err(Error::Fenced { .. })
    ));
    // Creating an existing `_metadata` still fails and replaces nothing.
    let metadata = sp("chk-0000000002/_metadata");
    let before = storage.get(&metadata)?;
    assert!(matches!(
        storage.put_new(&metadata, b"another writer"),
        Err(Error::AlreadyExists { .. })
    ));
    assert_eq!(storage.get(&metadata)?, before);
    let meta = latest_restorable(storage.as_ref())?;
    assert_eq!(meta.id, 2);
    let mut restored = restore_instance(
        storage.as_ref(),
        &meta,
        &config(BackendKind::Heap, KeyGroupRange::all(128)?),
        RestoreMode::NoClaim,
    )?;
    let h = Handles::register(&mut restored)?;
    assert_matches_model(&mut restored, &h, &model)?;
    // Nothing but the layout's files: no temporary file of a create is left.
    assert!(storage.list(None)?.iter().all(|o| !is_temporary(&o.path)));
    Ok(())
}

/// A completion whose `_metadata` was written but whose directory `fsync` failed is not a
/// completed checkpoint: the name is taken back, the completion fails with `NotDurable`, and
/// nothing reports or restores it. The next checkpoint completes.
#[test]
fn a_completion_whose_metadata_is_not_durable_fails_and_leaves_no_checkpoint() -> TestResult {
    use crate::common::checkpointing::random_job;
    use statebackend::checkpoint::{CheckpointCoordinator, latest_restorable};
    use statebackend::{BackendKind, CheckpointDriver, DriverOptions};

    for no_links in [false, true] {
        let tmp = tempfile::tempdir()?;
        let mut local = LocalDirStorage::new(tmp.path())?;
        if no_links {
            local = local.without_hard_links();
        }
        let local = Arc::new(local);
        let storage: Arc<dyn CheckpointStorage> = local.clone();
        let mut driver = CheckpointDriver::new(
            CheckpointCoordinator::open(Arc::clone(&storage), 1)?,
            DriverOptions::default(),
        );
        let (mut job, _) = random_job(BackendKind::Heap, 2, 23, 200)?;
        local.fail_put_new_dir_syncs(1);
        let failed = driver.checkpoint(&mut job);
        assert!(
            matches!(&failed, Err(Error::NotDurable { file, .. }) if file == "chk-0000000001/_metadata"),
            "no links {no_links}: {failed:?}"
        );
        assert!(driver.coordinator().latest().is_none());
        assert!(!storage.exists(&sp("chk-0000000001/_metadata"))?);
        assert!(matches!(
            latest_restorable(storage.as_ref()),
            Err(Error::NoRestorableCheckpoint { .. })
        ));
        let next = driver.checkpoint(&mut job)?;
        assert_eq!(next.id, 2);
        assert_eq!(latest_restorable(storage.as_ref())?.id, 2);
    }
    Ok(())
}

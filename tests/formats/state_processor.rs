//! The state processor: savepoints read as typed data, bootstrapped from iterators (byte for
//! byte what a backend writes), rewritten offline (states and operators dropped and renamed,
//! rescaled, rows changed by a function) and compared; bad input refused without a partial
//! output, the source never touched.
use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use common::checkpointing::{config_in, kinds, scratch};
use statebackend::savepoint::processor::{
    SavepointBuilder, SavepointRewrite, SnapshotFiles, diff, typed,
};
use statebackend::savepoint::{complete_savepoint, read_savepoint, restore_savepoint};
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendKind, CheckpointedBackend, Error, KeyGroupRange, KeyedStateBackend,
    ListStateDescriptor, MapStateDescriptor, Result, ValueStateDescriptor,
};

fn counts() -> ValueStateDescriptor<u64, (), u64> {
    ValueStateDescriptor::new("counts")
}

fn counts_info() -> statebackend::state::StateInfo {
    counts().info()
}

fn tags() -> ListStateDescriptor<u64, (), String> {
    ListStateDescriptor::new("tags")
}

fn prices() -> MapStateDescriptor<u64, (), u32, i64> {
    MapStateDescriptor::new("prices")
}

/// The data files of a savepoint directory, by instance key groups.
fn data_files(dir: &Path) -> Result<BTreeMap<u32, Vec<u8>>> {
    let storage = LocalDirStorage::new(dir)?;
    let meta = read_savepoint(&storage)?;
    Ok(meta
        .instances
        .iter()
        .map(|i| {
            let bytes = std::fs::read(dir.join(i.files[0].path.to_string())).unwrap();
            (i.key_groups.start(), bytes)
        })
        .collect())
}

#[test]
fn a_bootstrapped_savepoint_is_what_a_backend_writes_and_restores_into_every_backend() -> Result<()>
{
    const ROWS: u64 = 1_000_000;
    let root = scratch();
    let built = root.path().join("built");
    let mut builder = SavepointBuilder::new(128)?;
    builder
        .value_state(&counts(), (0..ROWS).map(|k| (k, (), k * 3)))?
        .list_state(
            &tags(),
            (0..1000u64).flat_map(|k| (0..k % 3).map(move |t| (k, (), format!("t{t}")))),
        )?
        .map_state(
            &prices(),
            (0..1000u64).map(|k| (k % 100, (), k as u32, -(k as i64))),
        )?;
    let meta = builder.write(&LocalDirStorage::new(&built)?, "", 2)?;
    assert_eq!(meta.instances.len(), 2);

    // The same state, written by a backend per instance.
    let written = root.path().join("written");
    let storage = LocalDirStorage::new(&written)?;
    let mut parts = Vec::new();
    for i in 0..2 {
        let range = KeyGroupRange::for_operator(128, 2, i)?;
        let mut b = AnyBackend::open(&config_in(BackendKind::Heap, range, root.path()))?;
        let (c, t, p) = (
            b.value_state(&counts())?,
            b.list_state(&tags())?,
            b.map_state(&prices())?,
        );
        for k in 0..ROWS {
            let key = b.key_context(k);
            if let Ok(key) = key {
                c.put(&mut b, &key, &(), k * 3)?;
                if k < 1000 {
                    for tag in 0..k % 3 {
                        t.append(&mut b, &key, &(), format!("t{tag}"))?;
                    }
                }
            }
        }
        for k in 0..1000u64 {
            if let Ok(key) = b.key_context(k % 100) {
                p.put(&mut b, &key, &(), k as u32, -(k as i64))?;
            }
        }
        parts.push(b.savepoint()?.write(&storage)?);
    }
    complete_savepoint(&storage, parts)?;
    assert_eq!(data_files(&built)?, data_files(&written)?);

    // Restores at two parallelisms into every backend read every row.
    let storage = LocalDirStorage::new(&built)?;
    let meta = read_savepoint(&storage)?;
    for kind in kinds() {
        for parallelism in [1, 3] {
            let mut seen = 0u64;
            for i in 0..parallelism {
                let range = KeyGroupRange::for_operator(128, parallelism, i)?;
                let mut b =
                    restore_savepoint(&storage, &meta, &config_in(kind, range, root.path()))?;
                let c = b.value_state(&counts())?;
                for k in (0..ROWS).step_by(7) {
                    if let Ok(key) = b.key_context(k) {
                        assert_eq!(c.get(&b, &key, &())?, Some(k * 3), "{kind} {parallelism}");
                        seen += 1;
                    }
                }
                let t = b.list_state(&tags())?;
                if let Ok(key) = b.key_context(5u64) {
                    assert_eq!(t.get(&b, &key, &())?, vec!["t0", "t1"], "{kind}");
                }
            }
            assert_eq!(seen, ROWS.div_ceil(7), "{kind} {parallelism}");
        }
    }
    Ok(())
}

/// A savepoint of two operators: "orders" (2 instances: counts, tags, prices, and a split
/// list of offsets) and "audit" (1 instance: counts).
fn two_operator_savepoint(dir: &Path, work: &Path) -> Result<()> {
    let storage = LocalDirStorage::new(dir)?;
    let mut parts = Vec::new();
    for (operator, parallelism) in [("orders", 2), ("audit", 1)] {
        for i in 0..parallelism {
            let range = KeyGroupRange::for_operator(128, parallelism, i)?;
            let mut b = AnyBackend::open(&config_in(BackendKind::Heap, range, work))?;
            let c = b.value_state(&counts())?;
            let t = b.list_state(&tags())?;
            let p = b.map_state(&prices())?;
            for k in 0..500u64 {
                let Ok(key) = b.key_context(k) else { continue };
                c.put(&mut b, &key, &(), k)?;
                if operator == "orders" {
                    t.append(&mut b, &key, &(), format!("tag-{k}"))?;
                    p.put(&mut b, &key, &(), 1, k as i64)?;
                }
            }
            let offsets = b.operator_state_mut().list_state::<u64>("offsets")?;
            offsets.add(b.operator_state_mut(), &(u64::from(i) * 10))?;
            let mut part = b.savepoint()?.write(&storage)?;
            part.operator = operator.to_owned();
            parts.push(part);
        }
    }
    complete_savepoint(&storage, parts)?;
    Ok(())
}

/// Every `(key, value)` of a value state, read offline.
fn read_counts(files: &SnapshotFiles, operator: &str, state: &str) -> Result<BTreeMap<u64, u64>> {
    let mut out = BTreeMap::new();
    files.read_values(
        operator,
        &ValueStateDescriptor::<u64, (), u64>::new(state),
        |_, k, (), v| {
            assert!(out.insert(k, v).is_none());
            Ok(())
        },
    )?;
    Ok(out)
}

fn open(dir: &Path) -> Result<SnapshotFiles> {
    let storage = LocalDirStorage::new(dir)?;
    let meta = read_savepoint(&storage)?;
    SnapshotFiles::open(&storage, meta)
}

#[test]
fn a_rewrite_drops_renames_rescales_and_changes_rows() -> Result<()> {
    let root = scratch();
    let source = root.path().join("source");
    two_operator_savepoint(&source, root.path())?;
    let target = root.path().join("target");
    let report = SavepointRewrite::new()
        .drop_state("orders", "prices")
        .rename_state("orders", "counts", "visits")
        .change_rows(
            "orders",
            "counts",
            typed::values::<u64, (), u64>("counts", |k, (), v| (k % 2 == 0).then_some(v + 1)),
            None,
        )
        .rescale("orders", 4)
        .rename_operator("audit", "audit-v2")
        .write(
            &LocalDirStorage::new(&source)?,
            &LocalDirStorage::new(&target)?,
        )?;
    assert_eq!(report.files_written, 4);
    assert_eq!(report.files_copied, 1);
    assert_eq!(report.changes.len(), 5, "{:?}", report.changes);

    let files = open(&target)?;
    assert_eq!(files.meta().operators(), vec!["audit-v2", "orders"]);
    let names: Vec<String> = files
        .states("orders")?
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["tags", "visits"]);
    let expected: BTreeMap<u64, u64> = (0..500)
        .filter(|k| k % 2 == 0)
        .map(|k| (k, k + 1))
        .collect();
    assert_eq!(read_counts(&files, "orders", "visits")?, expected);
    let all: BTreeMap<u64, u64> = (0..500).map(|k| (k, k)).collect();
    assert_eq!(read_counts(&files, "audit-v2", "counts")?, all);
    // Operator state was handed out as a restore at 4 would: every offset exactly once.
    let mut state = files.operator_state("orders")?;
    let mut offsets = state.list_state::<u64>("offsets")?.get(&state)?;
    offsets.sort_unstable();
    assert_eq!(offsets, vec![0, 10]);
    // The copied operator's file is byte for byte the source's.
    let source_files = open(&source)?;
    let audit = &source_files.meta().for_operator("audit")?.instances[0].files[0];
    assert_eq!(
        std::fs::read(source.join(audit.path.to_string())).unwrap(),
        std::fs::read(target.join(audit.path.to_string())).unwrap()
    );

    // Each rescaled instance restores into every backend.
    let storage = LocalDirStorage::new(&target)?;
    let orders = read_savepoint(&storage)?.for_operator("orders")?;
    for kind in kinds() {
        let mut seen = BTreeMap::new();
        for instance in &orders.instances {
            let mut b = restore_savepoint(
                &storage,
                &orders,
                &config_in(kind, instance.key_groups, root.path()),
            )?;
            let visits = b.value_state(&ValueStateDescriptor::<u64, (), u64>::new("visits"))?;
            for k in 0..500u64 {
                if let Ok(key) = b.key_context(k) {
                    if let Some(v) = visits.get(&b, &key, &())? {
                        seen.insert(k, v);
                    }
                }
            }
        }
        assert_eq!(seen, expected, "{kind}");
    }

    // Dropping an operator leaves only the other.
    let dropped = root.path().join("dropped");
    SavepointRewrite::new().drop_operator("audit").write(
        &LocalDirStorage::new(&source)?,
        &LocalDirStorage::new(&dropped)?,
    )?;
    assert_eq!(open(&dropped)?.meta().operators(), vec!["orders"]);

    // diff: the rewrite in numbers.
    let d = diff(&open(&source)?, &open(&target)?)?;
    assert!(!d.is_same());
    let by: BTreeMap<(String, String), _> = d
        .states
        .iter()
        .map(|s| ((s.operator.clone(), s.state.clone()), s))
        .collect();
    let counts = by[&("orders".to_owned(), "counts".to_owned())];
    assert_eq!((counts.removed, counts.added), (500, 0));
    let visits = by[&("orders".to_owned(), "visits".to_owned())];
    assert_eq!((visits.added, visits.removed), (250, 0));
    let tags = by[&("orders".to_owned(), "tags".to_owned())];
    assert!(tags.is_same() && tags.unchanged == 500, "{tags:?}");
    let prices = by[&("orders".to_owned(), "prices".to_owned())];
    assert_eq!(prices.removed, 500);
    assert!(by[&("audit".to_owned(), "counts".to_owned())].removed == 500);
    assert!(by[&("audit-v2".to_owned(), "counts".to_owned())].added == 500);
    assert_eq!(counts.info_after, None);
    assert_eq!(visits.info_before, None);
    assert_eq!(tags.info_before, tags.info_after);
    // A rescale alone changes no row and no operator state.
    let rescaled = root.path().join("rescaled-only");
    SavepointRewrite::new().rescale("orders", 3).write(
        &LocalDirStorage::new(&source)?,
        &LocalDirStorage::new(&rescaled)?,
    )?;
    let same = diff(&open(&source)?, &open(&rescaled)?)?;
    assert!(same.is_same(), "{same:?}");
    // A schema version recorded differently is a difference, with the same rows.
    let bumped = root.path().join("bumped");
    SavepointRewrite::new()
        .change_rows(
            "audit",
            "counts",
            std::sync::Arc::new(|_: &[u8], v: &[u8]| Ok(Some(v.to_vec()))),
            Some(counts_info().with_schema_version(2)),
        )
        .write(
            &LocalDirStorage::new(&source)?,
            &LocalDirStorage::new(&bumped)?,
        )?;
    let d = diff(&open(&source)?, &open(&bumped)?)?;
    let audit = d
        .states
        .iter()
        .find(|s| s.operator == "audit" && s.state == "counts")
        .expect("audit counts");
    assert_eq!((audit.changed, audit.unchanged), (0, 500));
    assert!(
        !audit.is_same()
            && audit
                .info_after
                .as_deref()
                .is_some_and(|i| i.contains("schema version 2"))
    );
    // A new info that changes how rows are laid out is refused.
    let refused = SavepointRewrite::new()
        .change_rows(
            "audit",
            "counts",
            std::sync::Arc::new(|_: &[u8], v: &[u8]| Ok(Some(v.to_vec()))),
            Some(
                counts_info().with_ttl(statebackend::state::ttl::StateTtlConfig::new(
                    std::time::Duration::from_secs(1),
                )),
            ),
        )
        .write(
            &LocalDirStorage::new(&source)?,
            &LocalDirStorage::new(root.path().join("refused"))?,
        );
    assert!(
        matches!(refused, Err(Error::StateMismatch { .. })),
        "{refused:?}"
    );
    Ok(())
}

/// A digest of every file under `dir`.
fn digest(dir: &Path) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                crc32fast::hash(&std::fs::read(e.path()).unwrap()),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_bad_rewrite_fails_loudly_and_writes_nothing() -> Result<()> {
    let root = scratch();
    let source = root.path().join("source");
    two_operator_savepoint(&source, root.path())?;
    let before = digest(&source);
    let src = LocalDirStorage::new(&source)?;
    let target = root.path().join("target");
    let fresh = || LocalDirStorage::new(&target);

    let unknown_state = SavepointRewrite::new()
        .drop_state("orders", "nope")
        .write(&src, &fresh()?);
    assert!(
        matches!(unknown_state, Err(Error::UnknownStateName { ref state, .. }) if state == "nope"),
        "{unknown_state:?}"
    );
    let unknown_operator = SavepointRewrite::new()
        .drop_operator("nobody")
        .write(&src, &fresh()?);
    assert!(
        matches!(unknown_operator, Err(Error::OperatorNotFound { .. })),
        "{unknown_operator:?}"
    );
    let taken = SavepointRewrite::new()
        .rename_state("orders", "counts", "tags")
        .write(&src, &fresh()?);
    assert!(
        matches!(taken, Err(Error::StateMismatch { .. })),
        "{taken:?}"
    );
    let clash = SavepointRewrite::new()
        .rename_operator("audit", "orders")
        .write(&src, &fresh()?);
    assert!(
        matches!(clash, Err(Error::Incompatible { .. })),
        "{clash:?}"
    );
    // A row function failing half way: the data files written so far are removed again.
    let failing = SavepointRewrite::new()
        .change_rows(
            "orders",
            "counts",
            std::sync::Arc::new(|_: &[u8], value: &[u8]| {
                if value.first() == Some(&200) {
                    Err(Error::Decode {
                        state: "counts".into(),
                        message: "refused by the test".into(),
                    })
                } else {
                    Ok(Some(value.to_vec()))
                }
            }),
            None,
        )
        .rescale("orders", 3)
        .write(&src, &fresh()?);
    assert!(matches!(failing, Err(Error::Decode { .. })), "{failing:?}");
    assert!(
        !target.exists() || std::fs::read_dir(&target).unwrap().next().is_none(),
        "a failed rewrite left files behind"
    );
    // A target holding files is refused before anything is read.
    let occupied = root.path().join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), b"x").unwrap();
    let refused = SavepointRewrite::new().write(&src, &LocalDirStorage::new(&occupied)?);
    assert!(
        matches!(refused, Err(Error::AlreadyExists { .. })),
        "{refused:?}"
    );
    assert_eq!(std::fs::read(occupied.join("keep")).unwrap(), b"x");
    // A type that does not match the stored one is a typed error on read.
    let files = open(&source)?;
    let wrong = files.read_values(
        "orders",
        &ValueStateDescriptor::<String, (), u64>::new("counts"),
        |_, _, (), _| Ok(()),
    );
    assert!(
        matches!(wrong, Err(Error::StateMismatch { .. })),
        "{wrong:?}"
    );
    assert_eq!(digest(&source), before, "the source changed");
    Ok(())
}

#[test]
fn every_backends_checkpoint_reads_offline() -> Result<()> {
    use statebackend::checkpoint::CheckpointCoordinator;
    let root = scratch();
    for kind in kinds() {
        let dir = root.path().join(kind.to_string());
        let storage: std::sync::Arc<dyn CheckpointStorage> =
            std::sync::Arc::new(LocalDirStorage::new(&dir)?);
        let mut b = AnyBackend::open(&config_in(kind, KeyGroupRange::all(128)?, &dir))?;
        let c = b.value_state(&counts())?;
        for k in 0..100u64 {
            c.put(&mut b, &k, &(), k + 1)?;
        }
        let mut coordinator = CheckpointCoordinator::open(std::sync::Arc::clone(&storage), 1)?;
        coordinator.begin(1)?;
        let part = b.snapshot(1)?.upload(storage.as_ref())?.0;
        let meta = coordinator.complete(1, vec![part])?.clone();
        // RocksDB's SST files go through a temporary backend into a canonical data file.
        let files = SnapshotFiles::open(storage.as_ref(), meta)?;
        let read = read_counts(&files, "", "counts")?;
        assert_eq!(read, (0..100).map(|k| (k, k + 1)).collect(), "{kind}");
        // And compares with the savepoint of the same state as equal.
        let sp = dir.join("sp");
        let sp_storage = LocalDirStorage::new(&sp)?;
        let part = b.savepoint()?.write(&sp_storage)?;
        complete_savepoint(&sp_storage, vec![part])?;
        let same = diff(&files, &open(&sp)?)?;
        assert!(
            same.states
                .iter()
                .all(|s| s.added == 0 && s.removed == 0 && s.changed == 0),
            "{kind}: {same:?}"
        );
    }
    Ok(())
}

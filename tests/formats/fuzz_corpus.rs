//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and the minimized inputs of
//! problems fuzzing found (`tests/fixtures/fuzz/<target>/`) through the same entry points the
//! cargo-fuzz targets call (`statebackend::fuzzing`), so every input keeps giving a typed
//! result in a plain `cargo test`, without cargo-fuzz or a nightly compiler.
//!
//! The seeds the corpus grew from are written by the ignored test below (see
//! `docs/reliability.md`).
use crate::common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::checkpointing::{checkpoint, config_in, kinds, run_ops, scratch};
use common::model::{Handles, Model, OpGenerator};
use statebackend::checkpoint::CheckpointCoordinator;
use statebackend::fuzzing::{self, is_format_error};
use statebackend::savepoint::complete_savepoint;
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{AnyBackend, BackendKind, Error, KeyGroupRange, KeyedStateBackend, Result};

const TARGETS: [&str; 3] = ["metadata", "data_file", "storage_path"];

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every input of `target`: the fuzz corpus and the regression inputs.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [
        manifest().join("fuzz/corpus").join(target),
        manifest().join("tests/fixtures/fuzz").join(target),
    ] {
        if let Ok(entries) = fs::read_dir(&dir) {
            files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    files
}

fn assert_typed<T: std::fmt::Debug>(target: &str, file: &Path, result: &Result<T>) {
    if let Err(e) = result {
        assert!(
            is_format_error(e),
            "{target}: {} gave an error a reader of bytes in memory cannot have: {e:?}",
            file.display()
        );
    }
}

#[test]
fn every_corpus_input_gives_a_typed_result() {
    for target in TARGETS {
        let files = inputs(target);
        assert!(
            files.len() >= 5,
            "{target}: the committed corpus is missing ({} inputs)",
            files.len()
        );
        let mut accepted = 0;
        for file in &files {
            let data = fs::read(file).unwrap();
            // The entry points panic on a broken property; a panic fails this test.
            match target {
                "metadata" => {
                    let outcome = fuzzing::metadata(&data);
                    for r in outcome.results() {
                        assert_typed(target, file, r);
                        accepted += usize::from(r.is_ok());
                    }
                }
                "data_file" => {
                    let outcome = fuzzing::data_file(&data);
                    for r in outcome.results() {
                        assert_typed(target, file, r);
                        accepted += usize::from(r.is_ok());
                    }
                }
                _ => {
                    let r = fuzzing::storage_path(&data);
                    assert_typed(target, file, &r);
                    accepted += usize::from(r.is_ok());
                }
            }
        }
        println!(
            "{target}: {} inputs, {accepted} results accepted",
            files.len()
        );
        // A corpus of nothing but rejects would no longer exercise what lies behind the checks.
        assert!(accepted > 0, "{target}: no corpus input is valid");
    }
}

/// The seeds are real files, so the valid ones must read back; a seed that no longer does
/// means the corpus no longer starts from the current format.
#[test]
fn the_golden_savepoint_reads_through_the_fuzz_entry_points() -> Result<()> {
    let dir = manifest().join("tests/fixtures/savepoint-v1");
    let meta = fuzzing::metadata(&fs::read(dir.join("_metadata")).unwrap()).raw?;
    let file = &meta.instances[0].files[0];
    let rows = fuzzing::data_file(&fs::read(dir.join(file.path.as_str())).unwrap()).raw?;
    // 40 balances, 30 list rows (one per key with events), 39 map entries.
    assert_eq!(rows, 109);
    let flipped = {
        let mut d = fs::read(dir.join(file.path.as_str())).unwrap();
        let mid = d.len() / 2;
        d[mid] ^= 0x40;
        d
    };
    let outcome = fuzzing::data_file(&flipped);
    assert!(matches!(outcome.raw, Err(Error::ChecksumMismatch { .. })));
    Ok(())
}

/// Writes the seed inputs the corpus was grown from into `$STATEBACKEND_FUZZ_SEEDS/<target>/`:
/// `STATEBACKEND_FUZZ_SEEDS=/tmp/seeds cargo test --test formats fuzz_corpus:: -- --ignored`.
#[test]
#[ignore]
fn write_fuzz_seeds() -> Result<()> {
    let Some(out) = std::env::var_os("STATEBACKEND_FUZZ_SEEDS") else {
        return Ok(());
    };
    let out = PathBuf::from(out);
    for target in TARGETS {
        fs::create_dir_all(out.join(target)).unwrap();
    }
    let write = |target: &str, name: &str, data: &[u8]| {
        fs::write(out.join(target).join(name), data).unwrap();
    };
    let golden = manifest().join("tests/fixtures/savepoint-v1");
    for entry in fs::read_dir(&golden).unwrap() {
        let path = entry.unwrap().path();
        let target = if path.ends_with("_metadata") {
            "metadata"
        } else {
            "data_file"
        };
        write(target, "golden", &fs::read(&path).unwrap());
    }
    let tmp = scratch();
    // Checkpoints of both backends, two instances each: heap data files and RocksDB shared
    // and private file lists.
    for kind in kinds() {
        let root = tmp.path().join(format!("{kind}-root"));
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(&root)?);
        let mut coordinator = CheckpointCoordinator::open(Arc::clone(&storage), 2)?;
        let range = KeyGroupRange::all(128)?;
        let mut b = AnyBackend::open(&config_in(kind, range, tmp.path()))?;
        let h = Handles::register(&mut b)?;
        let mut g = OpGenerator::new(11, 12, |_| true);
        let mut model = Model::default();
        for id in 1..=2 {
            run_ops(&mut b, &h, &mut model, &mut g, 60)?;
            checkpoint(&mut b, &mut coordinator, id, |_| Ok(()))?;
        }
        for object in storage.list(None)? {
            let name = object.path.as_str().replace('/', "_");
            write("storage_path", &name, object.path.as_str().as_bytes());
            if object.path.file_name() == "_metadata" {
                write(
                    "metadata",
                    &format!("{kind}-{name}"),
                    &storage.get(&object.path)?,
                );
            } else if object.path.file_name() == "state.sbdf" && object.size < 16 << 10 {
                write(
                    "data_file",
                    &format!("{kind}-{name}"),
                    &storage.get(&object.path)?,
                );
            }
        }
    }
    // A savepoint of three heap instances with all five state kinds.
    let sp = tmp.path().join("savepoint");
    let storage = LocalDirStorage::new(&sp)?;
    let mut instances = Vec::new();
    for i in 0..3 {
        let range = KeyGroupRange::for_operator(128, 3, i)?;
        let mut b = AnyBackend::open(&config_in(BackendKind::Heap, range, tmp.path()))?;
        let h = Handles::register(&mut b)?;
        let mut g = OpGenerator::new(20 + u64::from(i), 10, |k| {
            range.contains(b.key_group_of(k).unwrap())
        });
        run_ops(&mut b, &h, &mut Model::default(), &mut g, 50)?;
        instances.push(b.savepoint()?.write(&storage)?);
    }
    let meta = complete_savepoint(&storage, instances)?;
    write("metadata", "savepoint-3", &meta.encode());
    // Version 2: operator ids, operator state of every mode, engine metadata.
    let mut v2 = meta.clone();
    v2.engine.insert("job".into(), b"fuzz".to_vec());
    v2.engine
        .insert("watermark".into(), 42i64.to_le_bytes().to_vec());
    for (i, instance) in v2.instances.iter_mut().enumerate() {
        instance.operator = if i == 0 {
            "source".into()
        } else {
            "window".into()
        };
        let state = &mut instance.operator_state;
        state
            .list_state::<u64>("offsets")?
            .update(state, vec![i as u64, 7])?;
        state
            .union_list_state::<String>("seen")?
            .add(state, &format!("from-{i}"))?;
        state
            .broadcast_state::<String, u32>("rules")?
            .put(state, "max".into(), 10)?;
    }
    write("metadata", "savepoint-3-v2", &v2.encode());
    for (i, file) in meta.files().enumerate() {
        write(
            "data_file",
            &format!("savepoint-{i}"),
            &storage.get(&file.path)?,
        );
    }
    for (i, name) in [
        "chk-0000000001",
        "chk-18446744073709551615",
        "chk-00000000001",
        "shared/0123456789abcdef0123456789abcdef/000012.sst",
        "_metadata.tmp-0123456789abcdef",
        "a/../b",
        "./x",
        "/abs",
        "a\\b",
    ]
    .iter()
    .enumerate()
    {
        write("storage_path", &format!("named-{i}"), name.as_bytes());
    }
    Ok(())
}

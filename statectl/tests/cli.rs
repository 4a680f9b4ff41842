//! `statectl` end to end: the built binary run as a process over real checkpoints and
//! savepoints written by the library in temporary directories.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::Value;
use statebackend::checkpoint::{CheckpointCoordinator, FileEntry, SnapshotMetadata};
use statebackend::savepoint::complete_savepoint;
use statebackend::storage::{CheckpointStorage, LocalDirStorage};
use statebackend::{
    AnyBackend, BackendConfig, KeyGroupRange, KeyedStateBackend, ListState, ListStateDescriptor,
    MapState, MapStateDescriptor, ValueState, ValueStateDescriptor,
};

type TestResult = Result<(), Box<dyn StdError>>;

const MAX_PARALLELISM: u32 = 128;

// ---------------------------------------------------------------------------------------------
// Running the binary.

fn statectl<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_statectl"))
        .args(args)
        .output()
        .expect("statectl runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit code, showing the output on failure.
fn expect_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

// ---------------------------------------------------------------------------------------------
// Writing real checkpoints and savepoints.

/// One backend instance with three states registered.
struct Instance {
    backend: AnyBackend,
    range: KeyGroupRange,
    counts: ValueState<String, (), u64>,
    events: ListState<String, (), String>,
    pages: MapState<String, u32, String, u64>,
}

/// `parallelism` instances of the backend `config` builds for a key-group range.
fn open_job(
    parallelism: u32,
    config: impl Fn(KeyGroupRange) -> BackendConfig,
) -> statebackend::Result<Vec<Instance>> {
    (0..parallelism)
        .map(|i| {
            let range = KeyGroupRange::for_operator(MAX_PARALLELISM, parallelism, i)?;
            let mut backend = AnyBackend::open(&config(range))?;
            let counts = backend.value_state(&ValueStateDescriptor::new("counts"))?;
            let events = backend.list_state(&ListStateDescriptor::new("events"))?;
            let pages = backend.map_state(&MapStateDescriptor::new("pages"))?;
            Ok(Instance {
                backend,
                range,
                counts,
                events,
                pages,
            })
        })
        .collect()
}

fn heap_job(parallelism: u32) -> statebackend::Result<Vec<Instance>> {
    open_job(parallelism, |range| {
        BackendConfig::heap(MAX_PARALLELISM, range)
    })
}

/// Writes users `from..to` into whichever instance owns them; returns how many each got.
fn fill(job: &mut [Instance], from: u64, to: u64) -> statebackend::Result<Vec<u64>> {
    let mut per_instance = vec![0; job.len()];
    for i in from..to {
        let user = format!("user-{i}");
        let (n, inst) = job
            .iter_mut()
            .enumerate()
            .find(|(_, inst)| {
                inst.range
                    .contains(inst.backend.key_group_of(&user).expect("keys encode"))
            })
            .expect("some instance owns every key group");
        inst.counts.put(&mut inst.backend, &user, &(), i)?;
        inst.events
            .append(&mut inst.backend, &user, &(), format!("login-{i}"))?;
        inst.events
            .append(&mut inst.backend, &user, &(), format!("click-{i}"))?;
        inst.pages
            .put(&mut inst.backend, &user, &7, "/home".to_string(), i * 10)?;
        per_instance[n] += 1;
    }
    Ok(per_instance)
}

/// Takes and completes checkpoint `id` of every instance.
fn checkpoint(
    job: &mut [Instance],
    coordinator: &mut CheckpointCoordinator,
    id: u64,
) -> statebackend::Result<SnapshotMetadata> {
    coordinator.begin(id)?;
    let storage = Arc::clone(coordinator.storage());
    let mut parts = Vec::new();
    for inst in job.iter_mut() {
        let (part, _stats) = inst.backend.snapshot(id)?.upload(storage.as_ref())?;
        parts.push(part);
    }
    let meta = coordinator.complete(id, parts.clone())?.clone();
    for (inst, part) in job.iter_mut().zip(&parts) {
        inst.backend.notify_checkpoint_complete(part)?;
    }
    Ok(meta)
}

/// Writes a savepoint of every instance into `dir`.
fn savepoint(job: &mut [Instance], dir: &Path) -> statebackend::Result<SnapshotMetadata> {
    let storage = LocalDirStorage::new(dir)?;
    let mut parts = Vec::new();
    for inst in job.iter_mut() {
        parts.push(inst.backend.savepoint()?.write(&storage)?);
    }
    complete_savepoint(&storage, parts)
}

fn coordinator(root: &Path) -> statebackend::Result<CheckpointCoordinator> {
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(root)?);
    CheckpointCoordinator::open(storage, 3)
}

/// A heap checkpoint root with checkpoints 1 and 2 (two instances each) and a savepoint in
/// `<root>/savepoints/sp-1`.
struct HeapFixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    chk1: SnapshotMetadata,
    chk2: SnapshotMetadata,
    savepoint_dir: PathBuf,
    savepoint: SnapshotMetadata,
    /// Users per instance at checkpoint 2 / the savepoint.
    users: Vec<u64>,
}

impl HeapFixture {
    fn new() -> statebackend::Result<Self> {
        let tmp = tempfile::tempdir().expect("temporary directory");
        let root = tmp.path().join("root");
        let mut coordinator = coordinator(&root)?;
        let mut job = heap_job(2)?;
        let first = fill(&mut job, 0, 40)?;
        let chk1 = checkpoint(&mut job, &mut coordinator, 1)?;
        let second = fill(&mut job, 40, 100)?;
        let chk2 = checkpoint(&mut job, &mut coordinator, 2)?;
        let savepoint_dir = root.join("savepoints").join("sp-1");
        let savepoint = savepoint(&mut job, &savepoint_dir)?;
        let users = first.iter().zip(&second).map(|(a, b)| a + b).collect();
        Ok(Self {
            _tmp: tmp,
            root,
            chk1,
            chk2,
            savepoint_dir,
            savepoint,
            users,
        })
    }

    fn chk_dir(&self, id: u64) -> PathBuf {
        self.root.join(format!("chk-{id:010}"))
    }

    /// The local path of a checkpoint file.
    fn file(&self, entry: &FileEntry) -> PathBuf {
        self.root.join(entry.path.as_str())
    }
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, by: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - by).unwrap();
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", stdout(o)))
}

// ---------------------------------------------------------------------------------------------
// list

#[test]
fn list_json_reports_checkpoints_savepoints_and_new_bytes() -> TestResult {
    let f = HeapFixture::new()?;
    let o = statectl(&["list", p(&f.root), "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    let entries = v.as_array().expect("one JSON array");
    assert_eq!(entries.len(), 3, "{v:#}");
    for e in entries {
        for field in ["id", "kind", "path", "total_bytes", "new_bytes", "files"] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
    }
    let (c1, c2, sp) = (&entries[0], &entries[1], &entries[2]);
    assert_eq!(c1["kind"], "checkpoint");
    assert_eq!(c1["id"], 1);
    assert_eq!(c1["state"], "completed");
    assert_eq!(c1["instances"], 2);
    assert_eq!(c1["backends"], serde_json::json!(["heap"]));
    assert_eq!(c1["total_bytes"], f.chk1.total_bytes());
    assert_eq!(c1["new_bytes"], f.chk1.total_bytes());
    assert_eq!(c1["files"], f.chk1.files().count());
    assert!(c1["path"].as_str().unwrap().ends_with("chk-0000000001"));

    // Bytes of checkpoint 2's files that checkpoint 1 does not reference (heap checkpoints
    // are full: all of them).
    let old: HashSet<_> = f.chk1.files().map(|e| e.path.clone()).collect();
    let new_bytes: u64 = f
        .chk2
        .files()
        .filter(|e| !old.contains(&e.path))
        .map(|e| e.size)
        .sum();
    assert_eq!(c2["id"], 2);
    assert_eq!(c2["total_bytes"], f.chk2.total_bytes());
    assert_eq!(c2["new_bytes"], new_bytes);
    assert!(f.chk2.total_bytes() > f.chk1.total_bytes());

    assert_eq!(sp["kind"], "savepoint");
    assert_eq!(sp["state"], "completed");
    assert_eq!(sp["total_bytes"], f.savepoint.total_bytes());
    assert_eq!(sp["new_bytes"], f.savepoint.total_bytes());
    assert_eq!(sp["files"], 2);
    assert!(sp["path"].as_str().unwrap().ends_with("sp-1"));

    // The human table shows the same.
    let o = statectl(&["list", p(&f.root)]);
    expect_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("chk-0000000001") && out.contains("chk-0000000002"),
        "{out}"
    );
    assert!(out.contains("savepoint") && out.contains("sp-1"), "{out}");

    // A checkpoint directory is not a root.
    let o = statectl(&["list", p(&f.chk_dir(1))]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains("list its parent"), "{}", stderr(&o));
    Ok(())
}

#[test]
fn list_marks_an_unreadable_checkpoint_and_does_not_touch_the_root() -> TestResult {
    let f = HeapFixture::new()?;
    let metadata = f.chk_dir(1).join("_metadata");
    flip_byte(&metadata, 20);
    let orphan = f.root.join("shared").join("orphan.sst");
    std::fs::create_dir_all(orphan.parent().unwrap())?;
    std::fs::write(&orphan, b"orphan")?;

    let o = statectl(&["list", p(&f.root), "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    let c1 = &v.as_array().unwrap()[0];
    assert_eq!(c1["id"], 1);
    assert_eq!(c1["state"], "unreadable");
    assert!(c1["error"].as_str().unwrap().contains("_metadata"), "{c1}");
    // Checkpoint 2 is now the first readable one: all its bytes are new.
    assert_eq!(v[1]["new_bytes"], f.chk2.total_bytes());
    // Read-only: nothing was collected.
    assert!(orphan.exists());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// inspect

#[test]
fn inspect_shows_states_ranges_and_entry_counts() -> TestResult {
    let f = HeapFixture::new()?;
    let o = statectl(&["inspect", p(&f.chk_dir(2))]);
    expect_code(&o, 0);
    let out = stdout(&o);
    for needle in [
        "checkpoint",
        "format version: 1",
        "bincode2-standard",
        "[0, 64) of max parallelism 128",
        "[64, 128) of max parallelism 128",
        "counts (value)",
        "events (list)",
        "pages (map)",
        "alloc::string::String",
        "state.sbdf",
        "private",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }

    let o = statectl(&["inspect", p(&f.chk_dir(2)), "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    assert_eq!(v["kind"], "checkpoint");
    assert_eq!(v["id"], 2);
    assert_eq!(v["format_version"], 1);
    let instances = v["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    for (inst, users) in instances.iter().zip(&f.users) {
        assert_eq!(inst["backend"], "heap");
        assert_eq!(inst["max_parallelism"], 128);
        let states = inst["states"].as_array().unwrap();
        let by_name = |n: &str| states.iter().find(|s| s["name"] == n).unwrap().clone();
        assert_eq!(by_name("counts")["entries"], *users);
        assert_eq!(by_name("counts")["value_type"], "u64");
        assert_eq!(by_name("events")["entries"], *users);
        assert_eq!(by_name("pages")["entries"], *users);
        assert_eq!(by_name("pages")["user_key_type"], "alloc::string::String");
        assert_eq!(inst["files"][0]["shared"], false);
    }
    assert_eq!(
        instances[0]["key_groups"],
        serde_json::json!({"start": 0, "end": 64})
    );
    assert_eq!(
        instances[1]["key_groups"],
        serde_json::json!({"start": 64, "end": 128})
    );

    // A savepoint: file paths relative to its own directory.
    let o = statectl(&["inspect", p(&f.savepoint_dir), "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    assert_eq!(v["kind"], "savepoint");
    let file = v["instances"][0]["files"][0]["path"].as_str().unwrap();
    assert!(file.ends_with(".sbdf") && !file.contains('/'), "{file}");
    assert_eq!(
        v["instances"][1]["states"][0]["entries"], f.users[1],
        "{v:#}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// verify

#[test]
fn verify_passes_on_a_good_root_checkpoint_and_savepoint() -> TestResult {
    let f = HeapFixture::new()?;
    for path in [f.root.clone(), f.chk_dir(1), f.savepoint_dir.clone()] {
        let o = statectl(&["verify", p(&path)]);
        expect_code(&o, 0);
        assert!(stdout(&o).contains("all good"), "{}", stdout(&o));
        assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    }
    let o = statectl(&["verify", p(&f.root), "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    assert_eq!(v["ok"], true);
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 3);
    assert_eq!(v["files_checked"], 6);
    Ok(())
}

#[test]
fn verify_names_a_corrupted_data_file() -> TestResult {
    let f = HeapFixture::new()?;
    let entry = &f.chk2.instances[1].files[0];
    flip_byte(&f.file(entry), 200);
    for path in [f.root.clone(), f.chk_dir(2)] {
        let o = statectl(&["verify", p(&path)]);
        expect_code(&o, 1);
        let err = stderr(&o);
        assert!(err.starts_with("error: checksum mismatch in "), "{err}");
        assert!(err.contains(entry.path.as_str()), "{err}");
        assert!(stdout(&o).contains("FAILED"), "{}", stdout(&o));
    }
    // The other checkpoint is fine on its own.
    expect_code(&statectl(&["verify", p(&f.chk_dir(1))]), 0);
    Ok(())
}

#[test]
fn verify_names_a_truncated_file() -> TestResult {
    let f = HeapFixture::new()?;
    let entry = &f.savepoint.instances[0].files[0];
    truncate(&f.savepoint_dir.join(entry.path.as_str()), 7);
    let o = statectl(&["verify", p(&f.savepoint_dir)]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("size mismatch"), "{err}");
    assert!(err.contains(entry.path.as_str()), "{err}");
    Ok(())
}

#[test]
fn verify_all_reports_every_bad_file() -> TestResult {
    let f = HeapFixture::new()?;
    let first = &f.chk1.instances[0].files[0];
    let second = &f.chk2.instances[1].files[0];
    flip_byte(&f.file(first), 100);
    truncate(&f.file(second), 3);

    let o = statectl(&["verify", p(&f.root), "--all"]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        2,
        "{err}"
    );
    assert!(err.contains(first.path.as_str()), "{err}");
    assert!(err.contains(second.path.as_str()), "{err}");
    assert!(stdout(&o).contains("2 problems found"), "{}", stdout(&o));

    let o = statectl(&["verify", p(&f.root), "--all", "--json"]);
    expect_code(&o, 1);
    let v = json(&o);
    assert_eq!(v["ok"], false);
    assert_eq!(v["failures"].as_array().unwrap().len(), 2);

    // Without --all: the first failure only (checkpoints newest first).
    let o = statectl(&["verify", p(&f.root)]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(second.path.as_str()), "{err}");
    Ok(())
}

#[test]
fn verify_names_a_missing_file() -> TestResult {
    let f = HeapFixture::new()?;
    let entry = &f.chk2.instances[0].files[0];
    std::fs::remove_file(f.file(entry))?;
    let o = statectl(&["verify", p(&f.chk_dir(2))]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(err.starts_with("error: missing file "), "{err}");
    assert!(err.contains(entry.path.as_str()), "{err}");
    Ok(())
}

#[test]
fn verify_fails_on_corrupted_metadata() -> TestResult {
    let f = HeapFixture::new()?;
    let metadata = f.chk_dir(2).join("_metadata");
    flip_byte(&metadata, 30);
    for path in [f.chk_dir(2), f.root.clone()] {
        let o = statectl(&["verify", p(&path)]);
        expect_code(&o, 1);
        let err = stderr(&o);
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(p(&metadata)), "{err}");
    }
    // inspect cannot read it either.
    let o = statectl(&["inspect", p(&f.chk_dir(2))]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains("_metadata"), "{}", stderr(&o));

    // Truncated to nothing.
    std::fs::write(&metadata, b"")?;
    expect_code(&statectl(&["verify", p(&f.chk_dir(2))]), 1);
    Ok(())
}

#[test]
fn verify_of_a_directory_without_snapshots_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let o = statectl(&["verify", p(tmp.path())]);
    expect_code(&o, 1);
    assert!(
        stderr(&o).contains("no checkpoint or savepoint"),
        "{}",
        stderr(&o)
    );
    let o = statectl(&["verify", p(&tmp.path().join("nope"))]);
    expect_code(&o, 1);
    assert!(
        !tmp.path().join("nope").exists(),
        "a read-only command created a directory"
    );
}

// ---------------------------------------------------------------------------------------------
// dump

fn dump_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn dump_prints_decoded_json_lines() -> TestResult {
    let f = HeapFixture::new()?;
    let o = statectl(&[
        "dump",
        p(&f.savepoint_dir),
        "--state",
        "counts",
        "--limit",
        "3",
    ]);
    expect_code(&o, 0);
    let rows = dump_lines(&o);
    assert_eq!(rows.len(), 3, "{}", stdout(&o));
    for row in &rows {
        let key = row["key"].as_str().expect("string key");
        let n: u64 = key.strip_prefix("user-").unwrap().parse()?;
        assert_eq!(row["value"], n, "{row}");
        assert_eq!(row["namespace"], Value::Null);
        assert!(row.get("user_key").is_none());
        assert!(row["key_group"].as_u64().unwrap() < 128);
    }

    // Every entry, from a heap checkpoint: list values are arrays of elements.
    let o = statectl(&["dump", p(&f.chk_dir(2)), "--state", "events"]);
    expect_code(&o, 0);
    let rows = dump_lines(&o);
    assert_eq!(rows.len(), 100);
    for row in &rows {
        let n = row["key"].as_str().unwrap().strip_prefix("user-").unwrap();
        assert_eq!(
            row["value"],
            serde_json::json!([format!("login-{n}"), format!("click-{n}")])
        );
    }
    let groups: Vec<u64> = rows
        .iter()
        .map(|r| r["key_group"].as_u64().unwrap())
        .collect();
    assert!(groups.windows(2).all(|w| w[0] <= w[1]), "key-group order");

    // Map states: namespace and user key.
    let o = statectl(&["dump", p(&f.chk_dir(1)), "--state", "pages", "--limit", "1"]);
    expect_code(&o, 0);
    let rows = dump_lines(&o);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["namespace"], 7);
    assert_eq!(rows[0]["user_key"], "/home");
    let n: u64 = rows[0]["key"].as_str().unwrap()[5..].parse()?;
    assert_eq!(rows[0]["value"], n * 10);

    // One key group.
    let kg = groups[groups.len() / 2];
    let o = statectl(&[
        "dump",
        p(&f.savepoint_dir),
        "--state",
        "events",
        "--key-group",
        &kg.to_string(),
    ]);
    expect_code(&o, 0);
    let rows = dump_lines(&o);
    assert_eq!(rows.len(), groups.iter().filter(|g| **g == kg).count());
    assert!(rows.iter().all(|r| r["key_group"] == kg));
    Ok(())
}

#[test]
fn dump_refuses_unknown_states_and_rocksdb_checkpoints() -> TestResult {
    let f = HeapFixture::new()?;
    let o = statectl(&["dump", p(&f.savepoint_dir), "--state", "nope"]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("no state named 'nope'") && err.contains("counts"),
        "{err}"
    );

    // A checkpoint whose instance has RocksDB files (forged: this build may have no RocksDB).
    let mut meta = f.chk2.clone();
    let instance = &mut meta.instances[0];
    instance.backend = statebackend::BackendKind::RocksDb;
    let sst = f
        .root
        .join("shared")
        .join(instance.instance_id.hex())
        .join("000001.sst");
    std::fs::create_dir_all(sst.parent().unwrap())?;
    std::fs::write(&sst, b"not really an sst")?;
    instance.files = vec![FileEntry {
        path: format!("shared/{}/000001.sst", instance.instance_id.hex()).parse()?,
        local_name: "000001.sst".into(),
        size: 17,
        crc32: crc32fast::hash(b"not really an sst"),
        shared: true,
    }];
    std::fs::write(f.chk_dir(2).join("_metadata"), meta.encode())?;
    let o = statectl(&["dump", p(&f.chk_dir(2)), "--state", "counts"]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("rocksdb checkpoint") && err.contains("statectl convert"),
        "{err}"
    );
    // inspect: entry counts of that instance are unknown.
    let o = statectl(&["inspect", p(&f.chk_dir(2))]);
    expect_code(&o, 0);
    assert!(stdout(&o).contains("entries unknown"), "{}", stdout(&o));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// convert

#[test]
fn convert_writes_a_savepoint_that_verifies() -> TestResult {
    let f = HeapFixture::new()?;
    let target = f._tmp.path().join("converted");
    let o = statectl(&["convert", p(&f.chk_dir(2)), "--to", p(&target)]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("converted checkpoint 2"),
        "{}",
        stdout(&o)
    );

    let o = statectl(&["verify", p(&target)]);
    expect_code(&o, 0);
    let o = statectl(&["inspect", p(&target), "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    assert_eq!(v["kind"], "savepoint");
    assert_eq!(v["instances"].as_array().unwrap().len(), 2);
    // Canonical: the same state as the savepoint taken directly, byte for byte.
    for (a, b) in f
        .savepoint
        .instances
        .iter()
        .zip(&v["instances"].as_array().unwrap()[..])
    {
        assert_eq!(b["files"][0]["crc32"], a.files[0].crc32);
    }
    let o = statectl(&["dump", p(&target), "--state", "counts"]);
    expect_code(&o, 0);
    assert_eq!(dump_lines(&o).len(), 100);

    // Not into a non-empty directory.
    let o = statectl(&["convert", p(&f.chk_dir(2)), "--to", p(&target)]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    Ok(())
}

#[cfg(not(feature = "rocksdb"))]
#[test]
fn convert_of_a_rocksdb_checkpoint_fails_without_the_rocksdb_feature() -> TestResult {
    let f = HeapFixture::new()?;
    let mut meta = f.chk2.clone();
    for instance in &mut meta.instances {
        instance.backend = statebackend::BackendKind::RocksDb;
    }
    std::fs::write(f.chk_dir(2).join("_metadata"), meta.encode())?;
    let target = f._tmp.path().join("converted");
    let o = statectl(&["convert", p(&f.chk_dir(2)), "--to", p(&target)]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.starts_with("error: cannot restore: this build has no RocksDB backend"),
        "{err}"
    );
    assert!(
        !target.exists(),
        "a failed conversion leaves nothing behind"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// gc

#[test]
fn gc_dry_run_lists_an_orphan_and_gc_deletes_it() -> TestResult {
    let f = HeapFixture::new()?;
    let hex = f.chk2.instances[0].instance_id.hex();
    let orphan = f.root.join("shared").join(&hex).join("000099.sst");
    std::fs::create_dir_all(orphan.parent().unwrap())?;
    std::fs::write(&orphan, b"left behind by a failed checkpoint")?;
    let orphan_path = format!("shared/{hex}/000099.sst");

    let o = statectl(&["gc", p(&f.root), "--dry-run"]);
    expect_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains(&format!("would delete {orphan_path}")),
        "{out}"
    );
    assert!(out.contains("would delete 1 file"), "{out}");
    assert!(orphan.exists(), "a dry run deletes nothing");

    let o = statectl(&["gc", p(&f.root), "--dry-run", "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    assert_eq!(
        v["deleted"],
        serde_json::json!([{"path": orphan_path, "size": 34}])
    );
    assert_eq!(v["retained_checkpoints"], serde_json::json!([1, 2]));

    let o = statectl(&["gc", p(&f.root)]);
    expect_code(&o, 0);
    let out = stdout(&o);
    assert!(out.contains(&format!("deleted {orphan_path}")), "{out}");
    assert!(!orphan.exists());
    // Everything retained still verifies, the savepoint included.
    expect_code(&statectl(&["verify", p(&f.root)]), 0);
    Ok(())
}

#[test]
fn gc_honours_the_retention() -> TestResult {
    let f = HeapFixture::new()?;
    let o = statectl(&["gc", p(&f.root), "--retained", "1", "--dry-run", "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    assert_eq!(v["dropped_checkpoints"], serde_json::json!([1]));
    let planned: Vec<String> = v["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        planned.iter().all(|p| p.starts_with("chk-0000000001/")),
        "{planned:?}"
    );
    assert_eq!(planned.len(), 3, "{planned:?}");
    assert!(f.chk_dir(1).join("_metadata").exists());

    let o = statectl(&["gc", p(&f.root), "--retained", "1", "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    let deleted: Vec<String> = v["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deleted, planned, "the dry run predicted the real run");
    assert!(!f.chk_dir(1).exists());
    expect_code(&statectl(&["verify", p(&f.root)]), 0);

    // Retaining nothing is a usage error.
    expect_code(&statectl(&["gc", p(&f.root), "--retained", "0"]), 2);
    Ok(())
}

/// Every file below `dir` (relative paths), to show that a refused command changed nothing.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Issue 25.1: gc ran on any directory. A directory that is not a checkpoint root by its
/// layout is refused (exit 1, saying what it is), dry run or not, and loses nothing; in a real
/// root, files the layout does not name (`shared/team-docs/plan.txt`) are never deleted.
#[test]
fn gc_refuses_what_is_not_a_checkpoint_root_and_keeps_stray_files_of_a_root() -> TestResult {
    let f = HeapFixture::new()?;
    let hex = f.chk2.instances[0].instance_id.hex();

    // A directory with a `shared/` folder, but no checkpoint or coordinator.
    let docs = f._tmp.path().join("docs");
    std::fs::create_dir_all(docs.join("shared/team-docs"))?;
    std::fs::write(docs.join("shared/team-docs/plan.txt"), b"the plan")?;
    std::fs::create_dir_all(docs.join(format!("shared/{hex}")))?;
    std::fs::write(docs.join(format!("shared/{hex}/000001.sst")), b"not ours")?;
    // `/etc`-like: configuration files and folders.
    let etc = f._tmp.path().join("etc");
    std::fs::create_dir_all(etc.join("ssl"))?;
    std::fs::write(etc.join("hosts"), b"127.0.0.1 localhost")?;
    std::fs::write(etc.join("ssl/openssl.cnf"), b"[req]")?;
    let before: Vec<(PathBuf, Vec<String>)> = [&docs, &etc, &f.root]
        .iter()
        .map(|d| (d.to_path_buf(), tree(d)))
        .collect();

    let parent = f._tmp.path().to_path_buf();
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            docs.clone(),
            vec!["is not a checkpoint root", "changes nothing here"],
        ),
        (etc.clone(), vec!["is not a checkpoint root"]),
        (
            f.savepoint_dir.clone(),
            vec!["is a savepoint, not a checkpoint root"],
        ),
        (
            f.chk_dir(2),
            vec![
                "is the directory of checkpoint 2",
                "its root is",
                p(&f.root),
            ],
        ),
        (
            parent.clone(),
            vec!["is not a checkpoint root", "did you mean it?", p(&f.root)],
        ),
    ];
    for (dir, needles) in &cases {
        for extra in [&[][..], &["--dry-run"][..], &["--retained", "1"][..]] {
            let mut args = vec!["gc", p(dir)];
            args.extend_from_slice(extra);
            let o = statectl(&args);
            expect_code(&o, 1);
            let err = stderr(&o);
            for needle in needles {
                assert!(err.contains(needle), "{args:?}: {needle:?} not in {err}");
            }
            assert!(o.stdout.is_empty(), "{args:?}: {}", stdout(&o));
        }
    }
    // The real `/etc` (dry run: a refusal changes nothing anyway).
    let o = statectl(&["gc", "/etc", "--dry-run"]);
    expect_code(&o, 1);
    assert!(
        stderr(&o).contains("is not a checkpoint root"),
        "{}",
        stderr(&o)
    );
    for (dir, files) in &before {
        assert_eq!(&tree(dir), files, "{} changed", dir.display());
    }

    // In a real root, a stray folder under `shared/` stays, while an orphan of the layout goes.
    let plan = f.root.join("shared/team-docs/plan.txt");
    std::fs::create_dir_all(plan.parent().unwrap())?;
    std::fs::write(&plan, b"the plan")?;
    let orphan = f.root.join(format!("shared/{hex}/000099.sst"));
    std::fs::create_dir_all(orphan.parent().unwrap())?;
    std::fs::write(&orphan, b"left by a failed checkpoint")?;
    let o = statectl(&["gc", p(&f.root), "--retained", "1"]);
    expect_code(&o, 0);
    assert!(plan.exists(), "gc deleted a file the layout does not name");
    assert!(!orphan.exists(), "{}", stdout(&o));
    expect_code(&statectl(&["verify", p(&f.root)]), 0);
    Ok(())
}

/// Issue 25.4: `verify` and `list` of a directory holding a checkpoint root and a savepoint
/// (the demo's `--dir`) cover both, and say which checkpoint a restore would pick.
#[test]
fn verify_and_list_cover_every_root_and_savepoint_below_a_directory() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("demo");
    let root = dir.join("checkpoints");
    let mut coordinator = coordinator(&root)?;
    let mut job = heap_job(2)?;
    fill(&mut job, 0, 30)?;
    checkpoint(&mut job, &mut coordinator, 1)?;
    fill(&mut job, 30, 60)?;
    checkpoint(&mut job, &mut coordinator, 2)?;
    let sp = dir.join("savepoints").join("sp-final");
    savepoint(&mut job, &sp)?;

    let o = statectl(&["verify", p(&dir)]);
    expect_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("checkpoint 2") && out.contains("checkpoint 1"),
        "{out}"
    );
    assert!(out.contains("sp-final"), "{out}");
    assert!(
        out.contains(&format!(
            "root {}: a restore would pick checkpoint 2",
            p(&root)
        )),
        "{out}"
    );
    assert!(out.contains("all good: 3 snapshots, 6 files"), "{out}");
    let v = json(&statectl(&["verify", p(&dir), "--json"]));
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 3, "{v:#}");
    assert_eq!(v["roots"][0]["restore"]["checkpoint"], 2, "{v:#}");
    assert_eq!(v["skipped"], serde_json::json!([]));

    let v = json(&statectl(&["list", p(&dir), "--json"]));
    let entries = v.as_array().unwrap();
    let kinds: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["restore"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("checkpoint", "-"),
            ("checkpoint", "picked"),
            ("savepoint", "-")
        ],
        "{v:#}"
    );
    assert_eq!(entries[0]["root"], p(&root));
    let o = statectl(&["list", p(&dir)]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("a restore would pick checkpoint 2"),
        "{}",
        stdout(&o)
    );
    Ok(())
}

/// Issue 25.4: without `--all`, what verification did not reach after the first failure is
/// reported as not checked, never passed over in silence; with `--all` everything is checked,
/// and the restore choice passes over the damaged newest checkpoint.
#[test]
fn verify_says_what_it_did_not_check() -> TestResult {
    let f = HeapFixture::new()?;
    flip_byte(&f.file(&f.chk2.instances[0].files[0]), 100);
    std::fs::create_dir_all(f.chk_dir(3).join(f.chk2.instances[0].instance_id.hex()))?;
    std::fs::write(
        f.chk_dir(3)
            .join(f.chk2.instances[0].instance_id.hex())
            .join("state.sbdf"),
        b"in flight",
    )?;

    let o = statectl(&["verify", p(&f.root)]);
    expect_code(&o, 1);
    let out = stdout(&o);
    assert!(out.contains("FAILED  checkpoint 2"), "{out}");
    for skipped in [
        format!(
            "skipped checkpoint 1  {}: not checked: stopped at the first failure; --all checks them",
            p(&f.chk_dir(1))
        ),
        format!(
            "skipped savepoint  {}: not checked: stopped at the first failure",
            p(&f.savepoint_dir)
        ),
        format!("skipped checkpoint 3  {}: no _metadata", p(&f.chk_dir(3))),
    ] {
        assert!(out.contains(&skipped), "{skipped:?} not in:\n{out}");
    }
    assert!(out.contains("not determined"), "{out}");
    assert!(out.contains("3 not checked"), "{out}");
    let v = json(&statectl(&["verify", p(&f.root), "--json"]));
    assert_eq!(v["skipped"].as_array().unwrap().len(), 3, "{v:#}");
    assert_eq!(v["roots"][0]["restore"]["checkpoint"], Value::Null, "{v:#}");

    let o = statectl(&["verify", p(&f.root), "--all"]);
    expect_code(&o, 1);
    let out = stdout(&o);
    assert!(out.contains("ok      checkpoint 1"), "{out}");
    assert!(!out.contains("not checked: stopped"), "{out}");
    assert!(
        out.contains("a restore would pick checkpoint 1 (2 is damaged: checksum mismatch"),
        "{out}"
    );
    let v = json(&statectl(&["verify", p(&f.root), "--all", "--json"]));
    assert_eq!(v["roots"][0]["restore"]["checkpoint"], 1, "{v:#}");
    assert_eq!(v["roots"][0]["restore"]["passed_over"][0]["id"], 2, "{v:#}");
    Ok(())
}

/// Issue 25.4: `list` showed damaged checkpoints as completed and hid `chk-*` directories
/// without `_metadata`. Now each has its state, and the restore pick is shown.
#[test]
fn list_shows_damaged_and_incomplete_checkpoints_and_the_restore_pick() -> TestResult {
    let f = HeapFixture::new()?;
    let gone = &f.chk2.instances[1].files[0];
    std::fs::remove_file(f.file(gone))?;
    std::fs::create_dir_all(f.chk_dir(3))?;
    std::fs::write(f.chk_dir(3).join("_metadata.tmp-0123456789abcdef"), b"half")?;

    let o = statectl(&["list", p(&f.root), "--json"]);
    expect_code(&o, 0);
    let v = json(&o);
    let by_id = |id: u64| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "checkpoint" && e["id"] == id)
            .unwrap_or_else(|| panic!("no checkpoint {id} in {v:#}"))
            .clone()
    };
    let (c1, c2, c3) = (by_id(1), by_id(2), by_id(3));
    assert_eq!(c1["state"], "completed");
    assert_eq!(c1["metadata"], "ok");
    assert_eq!(c1["files_present"], true);
    assert_eq!(c1["restore"], "picked");
    assert_eq!(c2["state"], "damaged");
    assert_eq!(c2["metadata"], "ok");
    assert_eq!(c2["files_present"], false);
    assert!(
        c2["file_problems"][0]
            .as_str()
            .unwrap()
            .contains(gone.path.as_str()),
        "{c2}"
    );
    assert!(
        c2["restore"]
            .as_str()
            .unwrap()
            .starts_with("passed over: missing file"),
        "{c2}"
    );
    assert_eq!(c3["state"], "incomplete");
    assert_eq!(c3["metadata"], "missing");

    let o = statectl(&["list", p(&f.root)]);
    expect_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("damaged") && out.contains("incomplete"),
        "{out}"
    );
    assert!(
        out.contains("a restore would pick checkpoint 1 (2 is damaged: missing file"),
        "{out}"
    );

    // No checkpoint restores: said so.
    std::fs::remove_file(f.file(&f.chk1.instances[0].files[0]))?;
    let o = statectl(&["list", p(&f.root)]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("no checkpoint would restore: every checkpoint is damaged (2, 1)"),
        "{}",
        stdout(&o)
    );
    Ok(())
}

/// Issue 25.6: a truncated `_metadata` is reported as truncated, not as a checksum mismatch
/// against an "expected" value read from whatever bytes are left.
#[test]
fn a_truncated_metadata_is_reported_as_truncated() -> TestResult {
    let f = HeapFixture::new()?;
    let metadata = f.chk_dir(2).join("_metadata");
    truncate(&metadata, 9);
    let o = statectl(&["verify", p(&f.chk_dir(2))]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("truncated"), "{err}");
    assert!(!err.contains("checksum mismatch"), "{err}");
    assert!(err.contains(p(&metadata)), "{err}");
    std::fs::write(&metadata, b"SBMD\x01\x00")?;
    let err = stderr(&statectl(&["verify", p(&f.chk_dir(2))]));
    assert!(err.contains("truncated: 6 bytes"), "{err}");
    Ok(())
}

/// Issue 25.6: `--help` lists the exit statuses.
#[test]
fn help_lists_the_exit_statuses() {
    for args in [vec!["--help"], vec!["-h"]] {
        let o = statectl(&args);
        expect_code(&o, 0);
        let out = stdout(&o);
        assert!(out.contains("Exit status:"), "{out}");
        for line in ["0  success", "1  failure", "2  usage error"] {
            assert!(out.contains(line), "{line:?} not in {out}");
        }
    }
}

/// Issue 25.3: gc on the root of a running job deleted files of checkpoints in flight. While a
/// coordinator holds the root (its lease is live), gc and discard refuse; `--ignore-lease`
/// overrides; once the coordinator is gone, gc runs.
#[test]
fn gc_and_discard_refuse_a_root_a_live_coordinator_holds() -> TestResult {
    let f = HeapFixture::new()?;
    let live = coordinator(&f.root)?;
    let before = tree(&f.root);
    for args in [
        vec!["gc", p(&f.root)],
        vec!["gc", p(&f.root), "--retained", "1"],
        vec!["discard", p(&f.root), "1", "--force"],
    ] {
        let o = statectl(&args);
        expect_code(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains("a coordinator (epoch 2) holds"),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("stop the job first, or pass --ignore-lease"),
            "{err}"
        );
    }
    assert_eq!(tree(&f.root), before, "a refused command changed the root");

    let o = statectl(&["gc", p(&f.root), "--ignore-lease"]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("ignored the live lease of coordinator epoch 2"),
        "{}",
        stdout(&o)
    );
    drop(live);
    let o = statectl(&["gc", p(&f.root), "--retained", "1"]);
    expect_code(&o, 0);
    assert!(!stdout(&o).contains("lease"), "{}", stdout(&o));
    assert!(!f.chk_dir(1).exists());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// usage

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        vec!["list", p(tmp.path()), "--bogus"],
        vec!["--bogus"],
        vec![],
        vec!["frobnicate"],
        vec!["dump", p(tmp.path())],
        vec!["convert", p(tmp.path())],
        vec!["dump", p(tmp.path()), "--state", "x", "--limit", "many"],
    ] {
        let o = statectl(&args);
        expect_code(&o, 2);
        // clap's own messages: an error, or the overview when no command is given.
        let err = stderr(&o);
        assert!(
            err.starts_with("error: ") || err.contains("Usage: statectl"),
            "{args:?}: {err}"
        );
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn every_subcommand_has_help() {
    let o = statectl(&["--help"]);
    expect_code(&o, 0);
    for sub in [
        "list",
        "inspect",
        "verify",
        "dump",
        "convert",
        "gc",
        "discard",
        "rename-state",
        "drop-state",
        "rename-operator",
        "drop-operator",
        "rescale",
        "diff",
    ] {
        assert!(stdout(&o).contains(sub), "{sub} not in the overview");
        for args in [vec![sub, "--help"], vec!["help", sub]] {
            let o = statectl(&args);
            expect_code(&o, 0);
            let out = stdout(&o);
            assert!(out.contains("Usage: statectl"), "{args:?}: {out}");
            assert!(out.contains(sub), "{args:?}: {out}");
        }
    }
    let o = statectl(&["verify", "--help"]);
    assert!(stdout(&o).contains("--all"));
    let o = statectl(&["gc", "--help"]);
    assert!(stdout(&o).contains("--dry-run") && stdout(&o).contains("--retained"));
}

// ---------------------------------------------------------------------------------------------
// RocksDB (incremental checkpoints)

#[cfg(feature = "rocksdb")]
mod rocksdb_backend {
    use super::*;

    /// Three incremental RocksDB checkpoints of one instance.
    fn rocksdb_root(root: &Path) -> statebackend::Result<Vec<SnapshotMetadata>> {
        let mut coordinator = coordinator(root)?;
        let mut job = open_job(1, |range| BackendConfig::rocksdb(MAX_PARALLELISM, range))?;
        let mut metas = Vec::new();
        for id in 1..=3u64 {
            fill(&mut job, (id - 1) * 200, id * 200)?;
            metas.push(checkpoint(&mut job, &mut coordinator, id)?);
        }
        Ok(metas)
    }

    #[test]
    fn list_reports_incremental_new_bytes() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let metas = rocksdb_root(&root)?;
        let o = statectl(&["list", p(&root), "--json"]);
        expect_code(&o, 0);
        let v = json(&o);
        let entries = v.as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["new_bytes"], metas[0].total_bytes());
        for (i, e) in entries.iter().enumerate().skip(1) {
            let old: HashSet<_> = metas[i - 1].files().map(|f| f.path.clone()).collect();
            let new_bytes: u64 = metas[i]
                .files()
                .filter(|f| !old.contains(&f.path))
                .map(|f| f.size)
                .sum();
            assert_eq!(e["backends"], serde_json::json!(["rocksdb"]));
            assert_eq!(e["total_bytes"], metas[i].total_bytes());
            assert_eq!(e["new_bytes"], new_bytes);
            assert!(
                new_bytes < metas[i].total_bytes(),
                "shared files are reused"
            );
        }
        Ok(())
    }

    /// Issue 13.1: a truncated newest `_metadata` made `gc --dry-run` plan to delete every
    /// shared file only that checkpoint lists. A root that cannot be fully read is refused,
    /// by statectl and by the library's coordinator, which keeps all of `shared/`.
    #[test]
    fn gc_refuses_a_root_with_an_unreadable_checkpoint_and_keeps_its_files() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let metas = rocksdb_root(&root)?;
        let newest = root.join("chk-0000000003").join("_metadata");
        truncate(&newest, 9);
        let listed: Vec<PathBuf> = metas[2]
            .files()
            .map(|f| root.join(f.path.as_str()))
            .collect();
        let only_newest: Vec<&PathBuf> = listed
            .iter()
            .filter(|f| {
                metas[..2]
                    .iter()
                    .all(|m| m.files().all(|g| root.join(g.path.as_str()) != **f))
            })
            .collect();
        assert!(!only_newest.is_empty(), "checkpoint 3 has files of its own");

        for args in [
            vec!["gc", p(&root), "--dry-run"],
            vec!["gc", p(&root), "--retained", "1"],
        ] {
            let o = statectl(&args);
            expect_code(&o, 1);
            assert!(
                stderr(&o).contains("checkpoint 3 cannot be read"),
                "{}",
                stderr(&o)
            );
        }
        // The job's coordinator opens (it can restore checkpoint 2) but deletes nothing the
        // unreadable checkpoint may need, even with a retention of 1.
        let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(&root)?);
        let coordinator = CheckpointCoordinator::open(storage, 1)?;
        assert_eq!(coordinator.unreadable().len(), 1);
        assert_eq!(coordinator.latest().map(|m| m.id), Some(2));
        for file in &listed {
            assert!(file.exists(), "{} was deleted", file.display());
        }
        expect_code(&statectl(&["verify", p(&root)]), 1);
        Ok(())
    }

    /// Restores `root`'s checkpoint as a job's start would (`latest_restorable`), and returns
    /// its id and which of the users `0..to` it holds.
    fn restore_latest(root: &Path, to: u64) -> statebackend::Result<(u64, Vec<u64>)> {
        use statebackend::checkpoint::{RestoreMode, latest_restorable, restore_instance};
        let storage = LocalDirStorage::new(root)?;
        let meta = latest_restorable(&storage)?;
        let config = BackendConfig::rocksdb(MAX_PARALLELISM, KeyGroupRange::all(MAX_PARALLELISM)?);
        let mut backend = restore_instance(&storage, &meta, &config, RestoreMode::Claim)?;
        let counts: ValueState<String, (), u64> =
            backend.value_state(&ValueStateDescriptor::new("counts"))?;
        let mut users = Vec::new();
        for i in 0..to {
            if let Some(n) = counts.get(&backend, &format!("user-{i}"), &())? {
                assert_eq!(n, i);
                users.push(i);
            }
        }
        Ok((meta.id, users))
    }

    /// Issue 25.2: with one byte flipped in an SST file the two newest checkpoints share,
    /// `gc --retained 1` dropped the only checkpoint that still restored. It keeps the newest
    /// that verifies, says so, and that checkpoint restores; if none verifies it drops none.
    #[test]
    fn gc_never_drops_the_newest_checkpoint_that_verifies() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let metas = rocksdb_root(&root)?;
        let in_first: HashSet<_> = metas[0].files().map(|f| f.path.clone()).collect();
        let in_third: HashSet<_> = metas[2].files().map(|f| f.path.clone()).collect();
        let sst = metas[1]
            .files()
            .find(|f| f.shared && in_third.contains(&f.path) && !in_first.contains(&f.path))
            .expect("an SST file checkpoints 2 and 3 share and 1 does not list");
        flip_byte(&root.join(sst.path.as_str()), 100);

        // Checkpoint 1 damaged too: no checkpoint verifies, gc drops none.
        let private = metas[0]
            .files()
            .find(|f| !f.shared && f.size > 16)
            .expect("a private file");
        flip_byte(&root.join(private.path.as_str()), 3);
        let before = tree(&root);
        let o = statectl(&["gc", p(&root), "--retained", "1"]);
        expect_code(&o, 1);
        let err = stderr(&o);
        assert!(err.contains("verifies, so gc drops none"), "{err}");
        assert!(err.contains("statectl discard"), "{err}");
        assert_eq!(tree(&root), before);
        flip_byte(&root.join(private.path.as_str()), 3);

        let o = statectl(&["gc", p(&root), "--retained", "1", "--dry-run", "--json"]);
        expect_code(&o, 0);
        let v = json(&o);
        assert_eq!(v["dropped_checkpoints"], serde_json::json!([2]), "{v:#}");
        assert_eq!(
            v["retained_checkpoints"],
            serde_json::json!([1, 3]),
            "{v:#}"
        );
        assert_eq!(v["kept_beyond_retention"]["id"], 1, "{v:#}");
        let damaged: Vec<u64> = v["kept_beyond_retention"]["damaged"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_u64().unwrap())
            .collect();
        assert_eq!(damaged, [3, 2], "{v:#}");

        let o = statectl(&["gc", p(&root), "--retained", "1"]);
        expect_code(&o, 0);
        let out = stdout(&o);
        assert!(
            out.contains(&format!(
                "kept checkpoint 1 beyond the newest 1: the newest checkpoint that verifies (3 is \
                 damaged: checksum mismatch in {}",
                sst.path
            )),
            "{out}"
        );
        assert!(root.join("chk-0000000001/_metadata").exists());
        assert!(!root.join("chk-0000000002").exists());
        let (id, users) = restore_latest(&root, 600)?;
        assert_eq!(id, 1);
        assert_eq!(users, (0..200).collect::<Vec<_>>());
        Ok(())
    }

    /// Issue 25.5: gc refuses a root with an unreadable checkpoint and says how to discard it;
    /// `statectl discard` moves its `_metadata` aside, the next gc collects its directory and
    /// the shared files only it listed, and the other checkpoints restore.
    #[test]
    fn discard_sets_an_unreadable_checkpoint_aside_for_gc() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let metas = rocksdb_root(&root)?;
        let chk3 = root.join("chk-0000000003");
        truncate(&chk3.join("_metadata"), 9);

        let o = statectl(&["gc", p(&root)]);
        expect_code(&o, 1);
        let err = stderr(&o);
        assert!(err.contains("checkpoint 3 cannot be read"), "{err}");
        assert!(
            err.contains(&format!("statectl discard {} 3", p(&root))),
            "{err}"
        );

        // A checkpoint that verifies is not discarded without --force; nor is a non-root.
        let o = statectl(&["discard", p(&root.join("chk-0000000002"))]);
        expect_code(&o, 1);
        assert!(stderr(&o).contains("pass --force"), "{}", stderr(&o));
        let o = statectl(&["discard", p(tmp.path()), "3"]);
        expect_code(&o, 1);
        assert!(
            stderr(&o).contains("not a checkpoint root"),
            "{}",
            stderr(&o)
        );
        assert!(root.join("chk-0000000002/_metadata").exists());

        let o = statectl(&["discard", p(&root), "3", "--json"]);
        expect_code(&o, 0);
        let v = json(&o);
        assert_eq!(v["id"], 3);
        assert_eq!(v["was"], "unreadable");
        assert!(v["problem"].as_str().unwrap().contains("truncated"), "{v}");
        assert!(!chk3.join("_metadata").exists());
        assert!(chk3.join("_metadata.discarded").exists());
        let o = statectl(&["discard", p(&root), "3"]);
        expect_code(&o, 1);
        assert!(stderr(&o).contains("discarded already"), "{}", stderr(&o));
        let v = json(&statectl(&["list", p(&root), "--json"]));
        assert_eq!(v[2]["id"], 3, "{v:#}");
        assert_eq!(v[2]["state"], "discarded", "{v:#}");
        assert_eq!(v[1]["restore"], "picked", "{v:#}");

        let kept: HashSet<_> = metas[..2]
            .iter()
            .flat_map(|m| m.files().map(|f| f.path.clone()))
            .collect();
        let only_third: Vec<_> = metas[2]
            .files()
            .filter(|f| !kept.contains(&f.path))
            .map(|f| root.join(f.path.as_str()))
            .collect();
        assert!(
            only_third
                .iter()
                .any(|f| f.starts_with(root.join("shared")))
        );
        let o = statectl(&["gc", p(&root)]);
        expect_code(&o, 0);
        assert!(!chk3.exists(), "{}", stdout(&o));
        for f in &only_third {
            assert!(!f.exists(), "{} was kept", f.display());
        }
        for f in &kept {
            assert!(root.join(f.as_str()).exists(), "{f} was deleted");
        }
        expect_code(&statectl(&["verify", p(&root)]), 0);
        let (id, users) = restore_latest(&root, 600)?;
        assert_eq!(id, 2);
        assert_eq!(users, (0..400).collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn verify_and_convert_rocksdb_checkpoints() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("root");
        let metas = rocksdb_root(&root)?;
        expect_code(&statectl(&["verify", p(&root)]), 0);

        let chk = root.join("chk-0000000003");
        let o = statectl(&["inspect", p(&chk)]);
        expect_code(&o, 0);
        assert!(stdout(&o).contains("entries unknown"), "{}", stdout(&o));
        let o = statectl(&["dump", p(&chk), "--state", "counts"]);
        expect_code(&o, 1);
        assert!(stderr(&o).contains("statectl convert"), "{}", stderr(&o));

        let target = tmp.path().join("sp");
        expect_code(&statectl(&["convert", p(&chk), "--to", p(&target)]), 0);
        expect_code(&statectl(&["verify", p(&target)]), 0);
        let o = statectl(&["dump", p(&target), "--state", "counts"]);
        expect_code(&o, 0);
        assert_eq!(dump_lines(&o).len(), 600);

        // A corrupted shared SST file is named.
        let sst = metas[2].files().find(|f| f.shared).expect("a shared file");
        flip_byte(&root.join(sst.path.as_str()), 64);
        let o = statectl(&["verify", p(&root), "--all"]);
        expect_code(&o, 1);
        assert!(stderr(&o).contains(sst.path.as_str()), "{}", stderr(&o));
        Ok(())
    }
}

#[test]
fn inspect_shows_operators_operator_state_and_engine_metadata() -> TestResult {
    use statebackend::{CheckpointDriver, CheckpointedBackend, DriverOptions, OperatorInstances};
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("root");
    let storage: Arc<dyn CheckpointStorage> = Arc::new(LocalDirStorage::new(&root)?);
    let mut driver = CheckpointDriver::new(
        CheckpointCoordinator::open(Arc::clone(&storage), 2)?,
        DriverOptions::default(),
    );
    let mut sources = vec![AnyBackend::open(&BackendConfig::heap(
        16,
        KeyGroupRange::all(16)?,
    ))?];
    let operator = sources[0].operator_state_mut();
    let offsets = operator.list_state::<u64>("offsets")?;
    offsets.update(operator, vec![1, 2, 3])?;
    let mut windows: Vec<AnyBackend> = heap_job(2)?.into_iter().map(|i| i.backend).collect();
    let engine = std::collections::BTreeMap::from([("job".to_string(), b"clicks".to_vec())]);
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
        engine,
    )?;
    driver.finish_job(&mut [
        OperatorInstances {
            id: "source",
            instances: &mut sources,
        },
        OperatorInstances {
            id: "window",
            instances: &mut windows,
        },
    ])?;
    let dir = root.join("chk-0000000001");
    let o = statectl(&["inspect", p(&dir)]);
    expect_code(&o, 0);
    let out = stdout(&o);
    for needle in [
        "format version: 2",
        "operator:        source",
        "operator:        window",
        "offsets (split-list, u64): 3 elements",
        "engine metadata:",
        "job: 6 bytes",
    ] {
        assert!(out.contains(needle), "{needle:?} not in:\n{out}");
    }
    let v = json(&statectl(&["inspect", p(&dir), "--json"]));
    assert_eq!(v["format_version"], 2);
    assert_eq!(v["instances"][0]["operator"], "source");
    assert_eq!(v["instances"][0]["operator_states"][0]["elements"], 3);
    assert_eq!(v["engine_metadata"]["job"], 6);
    Ok(())
}

/// A URL whose client this build lacks is a clear error (exit 1), not a local path: the
/// object-store commands themselves are tested in `s3-loopback/tests/statectl.rs`.
#[cfg(not(feature = "gcp"))]
#[test]
fn a_url_without_its_cloud_feature_is_refused_with_the_feature_named() {
    for command in [
        vec!["list", "gs://bucket/root"],
        vec!["verify", "gs://bucket/root"],
        vec!["gc", "gs://bucket/root", "--dry-run"],
    ] {
        let o = statectl(&command);
        expect_code(&o, 1);
        assert!(stderr(&o).contains("gcp"), "{command:?}: {}", stderr(&o));
        assert!(
            !Path::new("gs:").exists(),
            "{command:?} created a local directory"
        );
    }
}

#[test]
fn inspect_and_dump_show_ttl_settings_timestamps_and_expired_rows() -> TestResult {
    use statebackend::state::ttl::StateTtlConfig;
    let dir = tempfile::tempdir()?;
    let range = KeyGroupRange::all(MAX_PARALLELISM)?;
    let mut backend = AnyBackend::open(&BackendConfig::heap(MAX_PARALLELISM, range))?;
    backend.ttl_clock().set_processing_time(1_000);
    let ttl = StateTtlConfig::new(std::time::Duration::from_millis(100));
    let seen =
        backend.value_state_with_ttl(&ValueStateDescriptor::<u64, (), u64>::new("seen"), ttl)?;
    let clicks =
        backend.list_state_with_ttl(&ListStateDescriptor::<u64, (), u64>::new("clicks"), ttl)?;
    for key in 0..10 {
        seen.put(&mut backend, &key, &(), key)?;
        clicks.append(&mut backend, &key, &(), key)?;
    }
    backend.ttl_clock().set_processing_time(1_050);
    for key in 0..4 {
        seen.put(&mut backend, &key, &(), key)?;
        clicks.append(&mut backend, &key, &(), 100 + key)?;
    }
    let sp = dir.path().join("sp");
    let storage = LocalDirStorage::new(&sp)?;
    let part = backend.savepoint()?.write(&storage)?;
    complete_savepoint(&storage, vec![part])?;

    // At 1,120 the rows (list elements) written at 1,000 have expired: 6 values, 10 elements.
    let o = statectl(&["inspect", p(&sp), "--expired-at", "1120"]);
    expect_code(&o, 0);
    let text = stdout(&o);
    assert!(
        text.contains(
            "ttl:       ttl 100 ms, processing time, on create and write, never return expired"
        ),
        "{text}"
    );
    let report = json(&statectl(&[
        "inspect",
        p(&sp),
        "--json",
        "--expired-at",
        "1120",
    ]));
    let states = report["instances"][0]["states"].as_array().unwrap();
    let state = |name: &str| states.iter().find(|s| s["name"] == name).unwrap().clone();
    assert_eq!(state("seen")["entries"], 10);
    assert_eq!(state("seen")["expired"], 6);
    assert_eq!(state("clicks")["expired"], 10);
    // Without the option nothing is counted.
    let report = json(&statectl(&["inspect", p(&sp), "--json"]));
    assert!(report["instances"][0]["states"][0].get("expired").is_none());

    // Dump shows each value (element) with its timestamp.
    let o = statectl(&["dump", p(&sp), "--state", "clicks"]);
    expect_code(&o, 0);
    let rows = dump_lines(&o);
    let row = rows.iter().find(|r| r["key"] == 2).expect("key 2");
    assert_eq!(
        row["value"],
        serde_json::json!([{"timestamp": 1000, "value": 2}, {"timestamp": 1050, "value": 102}])
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Rewriting savepoints (the state processor) and comparing them

/// crc32 of every file directly in `dir`, by name.
fn digest(dir: &Path) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = std::fs::read_dir(dir)
        .expect("readable")
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("readable");
            (
                e.file_name().to_string_lossy().into_owned(),
                crc32fast::hash(&bytes),
            )
        })
        .collect();
    out.sort();
    out
}

/// The dumped `(key, value)` lines of one state, sorted.
fn dumped(dir: &Path, state: &str) -> Vec<(String, String)> {
    let o = statectl(&["dump", p(dir), "--state", state]);
    expect_code(&o, 0);
    let mut rows: Vec<(String, String)> = dump_lines(&o)
        .iter()
        .map(|r| (r["key"].to_string(), r["value"].to_string()))
        .collect();
    rows.sort();
    rows
}

#[test]
fn rewrite_commands_write_verified_savepoints_and_leave_the_source_alone() -> TestResult {
    let f = HeapFixture::new()?;
    let source = &f.savepoint_dir;
    let before = digest(source);
    let out = f
        .root
        .parent()
        .expect("root has a parent")
        .join("rewritten");
    let counts = dumped(source, "counts");
    assert_eq!(counts.len(), 100);

    // rename-state: the rows move to the new name.
    let renamed = out.join("renamed");
    let o = statectl(&[
        "rename-state",
        p(source),
        "--to",
        p(&renamed),
        "counts",
        "visits",
    ]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("renamed state \"counts\" of operator \"\" to \"visits\""),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("verified"), "{}", stdout(&o));
    assert_eq!(dumped(&renamed, "visits"), counts);
    expect_code(&statectl(&["verify", p(&renamed)]), 0);

    // drop-state: gone, the others intact.
    let dropped = out.join("dropped");
    let o = statectl(&[
        "drop-state",
        p(source),
        "--to",
        p(&dropped),
        "pages",
        "--json",
    ]);
    expect_code(&o, 0);
    assert_eq!(json(&o)["files_written"], 2);
    expect_code(&statectl(&["dump", p(&dropped), "--state", "pages"]), 1);
    assert_eq!(dumped(&dropped, "counts"), counts);

    // rescale: 2 → 4 instances, the same rows.
    let rescaled = out.join("rescaled");
    let o = statectl(&[
        "rescale",
        p(source),
        "--to",
        p(&rescaled),
        "--parallelism",
        "4",
    ]);
    expect_code(&o, 0);
    let inspected = json(&statectl(&["inspect", p(&rescaled), "--json"]));
    assert_eq!(inspected["instances"].as_array().map(Vec::len), Some(4));
    assert_eq!(dumped(&rescaled, "counts"), counts);
    assert_eq!(dumped(&rescaled, "events"), dumped(source, "events"));
    expect_code(&statectl(&["verify", p(&rescaled)]), 0);

    // rename-operator, then drop-operator of a two-operator savepoint.
    let named = out.join("named");
    let o = statectl(&[
        "rename-operator",
        p(source),
        "--to",
        p(&named),
        "",
        "clicks",
    ]);
    expect_code(&o, 0);
    let inspected = json(&statectl(&["inspect", p(&named), "--json"]));
    assert!(
        inspected["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .all(|i| i["operator"] == "clicks"),
        "{inspected}"
    );
    let two = out.join("two-operators");
    {
        let storage = LocalDirStorage::new(&two)?;
        let mut parts = Vec::new();
        for operator in ["clicks", "views"] {
            let mut job = heap_job(1)?;
            fill(&mut job, 0, 30)?;
            let mut part = job[0].backend.savepoint()?.write(&storage)?;
            part.operator = operator.to_owned();
            parts.push(part);
        }
        complete_savepoint(&storage, parts)?;
    }
    let one = out.join("one-operator");
    let o = statectl(&["drop-operator", p(&two), "--to", p(&one), "views"]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("dropped operator \"views\""),
        "{}",
        stdout(&o)
    );
    let inspected = json(&statectl(&["inspect", p(&one), "--json"]));
    assert_eq!(inspected["instances"].as_array().map(Vec::len), Some(1));
    assert_eq!(inspected["instances"][0]["operator"], "clicks");

    // diff: what the rename did.
    let o = statectl(&["diff", p(source), p(&renamed)]);
    expect_code(&o, 0);
    let text = stdout(&o);
    assert!(
        text.contains("counts: 0 added, 100 removed, 0 changed, 0 unchanged"),
        "{text}"
    );
    assert!(
        text.contains("visits: 100 added, 0 removed, 0 changed, 0 unchanged"),
        "{text}"
    );
    assert!(
        text.contains("events: 0 added, 0 removed, 0 changed, 100 unchanged"),
        "{text}"
    );
    assert!(text.contains("the state differs"), "{text}");
    let o = statectl(&["diff", p(source), p(&rescaled), "--json"]);
    expect_code(&o, 0);
    assert!(
        json(&o)["states"]
            .as_array()
            .expect("states")
            .iter()
            .all(|s| s["added"] == 0 && s["removed"] == 0 && s["changed"] == 0),
        "{}",
        stdout(&o)
    );

    // Mistakes cost nothing: exit 1, no target left behind, the source as it was.
    let nowhere = out.join("nowhere");
    for args in [
        vec!["drop-state", p(source), "--to", p(&nowhere), "nope"],
        vec![
            "rename-state",
            p(source),
            "--to",
            p(&nowhere),
            "counts",
            "events",
        ],
        vec!["drop-operator", p(source), "--to", p(&nowhere), "nobody"],
        vec![
            "rename-state",
            p(&f.chk_dir(2)),
            "--to",
            p(&nowhere),
            "counts",
            "x",
        ],
        vec![
            "rescale",
            p(source),
            "--to",
            p(&renamed),
            "--parallelism",
            "3",
        ],
        vec![
            "rescale",
            p(source),
            "--to",
            p(&nowhere),
            "--parallelism",
            "1000",
        ],
    ] {
        let o = statectl(&args);
        expect_code(&o, 1);
        assert!(
            stderr(&o).starts_with("error: "),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!nowhere.exists(), "{args:?} left {}", nowhere.display());
    }
    let o = statectl(&["drop-state", p(source), "--to", p(&nowhere), "nope"]);
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    // Into a checkpoint directory of a root, where gc would delete it: refused.
    let in_root = f.chk_dir(2).join("sp");
    let o = statectl(&[
        "rescale",
        p(source),
        "--to",
        p(&in_root),
        "--parallelism",
        "2",
    ]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains("chk-*/shared area"), "{}", stderr(&o));
    assert!(!in_root.exists());
    let o = statectl(&[
        "rename-state",
        p(&f.chk_dir(2)),
        "--to",
        p(&nowhere),
        "counts",
        "x",
    ]);
    assert!(stderr(&o).contains("convert"), "{}", stderr(&o));
    // The occupied target was not touched either.
    assert_eq!(dumped(&renamed, "visits"), counts);
    assert_eq!(digest(source), before);

    // A savepoint of a format version this build does not know: refused by name, nothing
    // written.
    let future = out.join("future");
    std::fs::create_dir_all(&future)?;
    for entry in std::fs::read_dir(source)?.flatten() {
        std::fs::copy(entry.path(), future.join(entry.file_name()))?;
    }
    let mut metadata = std::fs::read(future.join("_metadata"))?;
    metadata[4..6].copy_from_slice(&99u16.to_le_bytes());
    std::fs::write(future.join("_metadata"), metadata)?;
    for args in [
        vec![
            "rescale",
            p(&future),
            "--to",
            p(&nowhere),
            "--parallelism",
            "2",
        ],
        vec!["diff", p(source), p(&future)],
    ] {
        let o = statectl(&args);
        expect_code(&o, 1);
        assert!(
            stderr(&o).contains("metadata version 99"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(!nowhere.exists());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Incremental heap checkpoints (chains)

#[test]
fn inspect_dump_verify_and_convert_read_an_incremental_heap_chain() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("root");
    let mut coordinator = coordinator(&root)?;
    let mut job = open_job(2, |range| {
        let mut c = BackendConfig::heap(MAX_PARALLELISM, range);
        c.heap_chains = Some(statebackend::backends::incremental_snapshot::ChainPolicy::default());
        c
    })?;
    fill(&mut job, 0, 60)?;
    checkpoint(&mut job, &mut coordinator, 1)?;
    fill(&mut job, 40, 100)?;
    // Ten users leave: their counts are cleared (tombstones in the delta).
    for i in 0..10 {
        let user = format!("user-{i}");
        for inst in job.iter_mut() {
            if inst.range.contains(inst.backend.key_group_of(&user)?) {
                inst.counts.clear(&mut inst.backend, &user, &())?;
            }
        }
    }
    let meta = checkpoint(&mut job, &mut coordinator, 2)?;
    assert!(meta.instances.iter().all(|i| i.files.len() >= 2), "chains");
    let chk = root.join("chk-0000000002");

    expect_code(&statectl(&["verify", p(&chk)]), 0);
    let inspected = json(&statectl(&["inspect", p(&chk), "--json"]));
    let counts: u64 = inspected["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .flat_map(|i| i["states"].as_array().expect("states").iter())
        .filter(|s| s["name"] == "counts")
        .map(|s| s["entries"].as_u64().expect("entries counted"))
        .sum();
    assert_eq!(counts, 90, "{inspected}");
    let o = statectl(&["dump", p(&chk), "--state", "counts"]);
    expect_code(&o, 0);
    let rows = dump_lines(&o);
    assert_eq!(rows.len(), 90);
    assert!(rows.iter().all(|r| {
        let n: u64 = r["key"].as_str().unwrap()[5..].parse().unwrap();
        n >= 10 && r["value"] == n
    }));
    // convert merges the chain into a savepoint that dumps the same.
    let sp = tmp.path().join("sp");
    expect_code(&statectl(&["convert", p(&chk), "--to", p(&sp)]), 0);
    let o = statectl(&["dump", p(&sp), "--state", "counts"]);
    let mut from_savepoint: Vec<String> = dump_lines(&o).iter().map(|r| r.to_string()).collect();
    let mut from_chain: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
    from_savepoint.sort();
    from_chain.sort();
    assert_eq!(from_savepoint, from_chain);
    Ok(())
}

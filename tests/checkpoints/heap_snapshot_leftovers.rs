//! Heap snapshots are written through a temporary directory in the system's temporary
//! directory; a process that dies during an upload leaves it behind. The next process that
//! writes a heap snapshot removes the directories whose owner process is gone, and only those.
//! The scenario runs in a child process with its own `TMPDIR`.

use std::path::Path;

use statebackend::storage::LocalDirStorage;
use statebackend::{AnyBackend, BackendConfig, KeyGroupRange, KeyedStateBackend, Result};

const PREFIX: &str = "statebackend-heap-snapshot-";
const CHILD: &str = "STATEBACKEND_TEST_HEAP_SNAPSHOT_CHILD";

/// Field 22 of `/proc/<pid>/stat`: the process's start time.
fn start_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Child: one heap checkpoint upload into `root`.
fn upload_one_heap_snapshot(root: &Path) -> Result<()> {
    let mut b = AnyBackend::open(&BackendConfig::heap(128, KeyGroupRange::all(128)?))?;
    let state = b.value_state(&statebackend::ValueStateDescriptor::<u32, (), u32>::new(
        "v",
    ))?;
    state.put(&mut b, &1, &(), 1)?;
    let storage = LocalDirStorage::new(root)?;
    b.snapshot(1)?.upload(&storage)?;
    Ok(())
}

#[test]
fn heap_snapshot_directories_of_dead_processes_are_removed() -> Result<()> {
    if let Some(root) = std::env::var_os(CHILD) {
        upload_one_heap_snapshot(Path::new(&root))?;
        return Ok(());
    }
    let me = std::process::id();
    let Some(my_start) = start_of(me) else {
        println!("skipped: no /proc/<pid>/stat on this platform, orphans are never removed");
        return Ok(());
    };
    let tmp = tempfile::tempdir().unwrap();
    let temp_dir = tmp.path().join("tmp");
    std::fs::create_dir_all(&temp_dir).unwrap();
    // A process that has exited: its pid is free.
    let mut exited = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "no-such-test"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dead = exited.id();
    exited.wait().unwrap();
    let removed = [
        format!("{PREFIX}{dead}-1-a1b2c3"),
        // This process's pid with another start time: the pid was reused.
        format!("{PREFIX}{me}-{}-d4e5f6", my_start + 1),
    ];
    let kept = [
        // A live process's.
        format!("{PREFIX}{me}-{my_start}-g7h8i9"),
        // Without an owner (another platform's, or an older release's).
        format!("{PREFIX}j0k1l2"),
        "statebackend-other-1-2-3".to_owned(),
    ];
    for name in removed.iter().chain(&kept) {
        std::fs::create_dir_all(temp_dir.join(name)).unwrap();
        std::fs::write(temp_dir.join(name).join("state.sbdf"), b"partial").unwrap();
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            // The harness names tests by their path without the crate's name.
            &format!(
                "{}::heap_snapshot_directories_of_dead_processes_are_removed",
                module_path!()
                    .split_once("::")
                    .map_or("", |(_, inner)| inner)
            ),
            "--test-threads=1",
        ])
        .env(CHILD, tmp.path().join("root"))
        .env("TMPDIR", &temp_dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "child: {status}");
    for name in &removed {
        assert!(!temp_dir.join(name).exists(), "{name} is left");
    }
    for name in &kept {
        assert!(temp_dir.join(name).exists(), "{name} was removed");
    }
    // The child's own directory went with its upload.
    let left: Vec<String> = std::fs::read_dir(&temp_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), kept.len(), "{left:?}");
    Ok(())
}

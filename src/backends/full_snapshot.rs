//! Full snapshots: a checkpoint that is one canonical data file per instance, written from a
//! [`RowView`] on any thread, and restored from the rows of such files. The heap backend's
//! checkpoints are full snapshots, and so can any backend's that keeps no files of its own:
//! implementing [`CheckpointedBackend::row_view`] and [`CheckpointedBackend::restore_rows`] is
//! then all it takes ([`snapshot`], [`restore`]).

use crate::backends::config::BackendConfig;
use crate::backends::incremental_snapshot::{ChainFile, ChainRows, chain_roles};
use crate::backends::interface::{CheckpointedBackend, SnapshotUpload, UploadStats};
use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::format::data_file::{DataFileReader, open_instance_data_file};
use crate::model::format::layout::private_path;
use crate::model::format::metadata::{FetchFile, FileEntry, InstanceMetadata};
use crate::model::format::view::{DataFileRows, RowView, write_data_file};
use crate::model::state::StateInfo;
use crate::model::state::operator::OperatorState;
use crate::storage::{CheckpointStorage, for_each_concurrently};

/// The file name of a full snapshot inside the checkpoint's instance directory.
pub const FULL_SNAPSHOT_FILE: &str = "state.sbdf";

/// The synchronous part of a full-snapshot checkpoint of `backend`: its frozen rows, written
/// and uploaded by the returned task ([`CheckpointedBackend::snapshot_state`]).
///
/// # Errors
/// What [`CheckpointedBackend::row_view`] returns.
pub fn snapshot<B: CheckpointedBackend>(
    backend: &mut B,
    checkpoint_id: u64,
) -> Result<Box<dyn SnapshotUpload>> {
    // The metadata lists states in registration order, as the backend does.
    let states = backend.states();
    let task = FullSnapshot {
        checkpoint_id,
        instance: InstanceMetadata {
            instance_id: backend.instance_id(),
            backend: backend.backend_kind(),
            codec: DefaultCodec::ID,
            max_parallelism: backend.assigner().max_parallelism(),
            key_groups: backend.key_group_range(),
            states,
            files: Vec::new(),
            operator_state: OperatorState::default(),
            operator: String::new(),
        },
        view: backend.row_view()?,
    };
    Ok(Box::new(task))
}

/// A frozen view, ready to be written as one data file.
struct FullSnapshot {
    checkpoint_id: u64,
    /// The instance's metadata without its file.
    instance: InstanceMetadata,
    view: Box<dyn RowView>,
}

impl SnapshotUpload for FullSnapshot {
    fn upload(
        self: Box<Self>,
        storage: &dyn CheckpointStorage,
    ) -> Result<(InstanceMetadata, UploadStats)> {
        let dir = snapshot_dir()?;
        let local = dir.path().join(FULL_SNAPSHOT_FILE);
        let summary = write_data_file(self.view.as_ref(), &local)?;
        let path = private_path(
            self.checkpoint_id,
            self.instance.instance_id,
            FULL_SNAPSHOT_FILE,
        )?;
        storage.put_file(&path, &local)?;
        let mut instance = self.instance;
        instance.files = vec![FileEntry {
            path,
            local_name: FULL_SNAPSHOT_FILE.to_owned(),
            size: summary.size,
            crc32: summary.crc32,
            shared: false,
        }];
        let stats = UploadStats {
            files_uploaded: 1,
            bytes_uploaded: summary.size,
            ..UploadStats::default()
        };
        Ok((instance, stats))
    }
}

/// Restores the key groups `config` owns from full-snapshot checkpoint parts `sources` (which
/// hold each of them exactly once): fetches each part's data file with `fetch` (which
/// verifies it), checks that it belongs to its part, and hands the owned key groups' rows to
/// [`CheckpointedBackend::restore_rows`]. A restore of exactly one part's key groups also
/// checks that the restored states are the part's.
///
/// # Errors
/// What `fetch` returns; format errors; [`Error::KeyGroupsMismatch`] for a data file of
/// another part; [`Error::Corrupt`] if the states differ from the metadata's.
pub fn restore<B: CheckpointedBackend>(
    config: &BackendConfig,
    sources: &[&InstanceMetadata],
    fetch: &FetchFile<'_>,
) -> Result<B> {
    let dir = tempfile::Builder::new()
        .prefix("statebackend-restore-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    // The instances' files are fetched `fetch.concurrency()` at a time (a rescaled restore
    // reads several).
    let chained = sources.iter().any(|i| {
        i.files
            .first()
            .is_some_and(|f| ChainFile::of(&f.local_name).is_some())
    });
    let backend = if chained {
        // Incremental checkpoints: each instance's chain, whole files fetched and verified.
        let chains = for_each_concurrently(sources, fetch.concurrency(), |instance| {
            let roles = chain_roles(instance)?;
            let files = instance
                .files
                .iter()
                .zip(roles)
                .enumerate()
                .map(|(j, (entry, role))| {
                    let local = dir
                        .path()
                        .join(format!("{}-{j}.sbdf", instance.instance_id.hex()));
                    fetch.fetch(entry, &local)?;
                    let reader = DataFileReader::open(&local, entry.path.as_ref())?;
                    reader.check_instance(instance)?;
                    Ok((role, reader))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((instance.key_groups, files))
        })?;
        B::restore_rows(config, &mut ChainRows::new(chains, config.key_groups))?
    } else {
        let readers = for_each_concurrently(sources, fetch.concurrency(), |instance| {
            open_instance_data_file(instance, dir.path(), fetch, config.key_groups)
        })?;
        B::restore_rows(config, &mut DataFileRows::new(readers, config.key_groups)?)?
    };
    let exact = match sources {
        [only] if only.key_groups == config.key_groups => Some(*only),
        _ => None,
    };
    if let Some(only) = exact {
        let mut restored: Vec<StateInfo> = backend.states();
        let mut expected = only.states.clone();
        restored.sort_by(|a, b| a.name.cmp(&b.name));
        expected.sort_by(|a, b| a.name.cmp(&b.name));
        if restored != expected {
            return Err(Error::corrupt(
                only.instance_id.hex(),
                "the snapshot's states differ from the metadata's",
            ));
        }
    }
    Ok(backend)
}

/// Prefix of the temporary directories full snapshots are written in, in the system's temporary
/// directory: `statebackend-heap-snapshot-<pid>-<start>-<random>`, where `<pid>` and `<start>`
/// (the process's start time, field 22 of `/proc/<pid>/stat`) name the process that owns it.
const SNAPSHOT_DIR_PREFIX: &str = "statebackend-heap-snapshot-";

/// A new temporary directory for one full snapshot's data file, removed when dropped. A process
/// that dies during an upload leaves its directory behind, so the first call in each process
/// also removes the directories whose owner process is gone.
pub(crate) fn snapshot_dir() -> Result<tempfile::TempDir> {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let owner = process_owner_tag();
    SWEPT.call_once(|| {
        if let Some(own) = owner {
            remove_orphaned_snapshot_dirs(&std::env::temp_dir(), own);
        }
    });
    let prefix = match owner {
        Some(own) => format!("{SNAPSHOT_DIR_PREFIX}{own}-"),
        None => SNAPSHOT_DIR_PREFIX.to_owned(),
    };
    tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))
}

/// `<pid>-<start>` of this process, where the platform tells process start times (Linux's
/// `/proc`); `None` elsewhere, where no directory is ever removed as orphaned.
fn process_owner_tag() -> Option<&'static str> {
    static TAG: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let pid = std::process::id();
        process_start(pid).map(|start| format!("{pid}-{start}"))
    })
    .as_deref()
}

/// The start time of process `pid` (clock ticks after boot, field 22 of `/proc/<pid>/stat`),
/// if it is alive and visible.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything: count after it.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Removes the full snapshot directories in `temp` whose owner process (the `<pid>-<start>` in
/// the name) is gone: no process with that pid, or one started at another time (the pid was
/// reused). Directories of live processes, this one's (`own`), and names without an owner are
/// kept; errors are ignored (the next process tries again).
fn remove_orphaned_snapshot_dirs(temp: &std::path::Path, own: &str) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SNAPSHOT_DIR_PREFIX))
        else {
            continue;
        };
        let mut fields = owner.splitn(3, '-');
        let (Some(pid), Some(start), Some(_)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
            continue;
        };
        if owner.starts_with(&format!("{own}-")) || process_start(pid) == Some(start) {
            continue;
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

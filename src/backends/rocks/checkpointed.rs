//! The RocksDB backend in the runtime: incremental checkpoints of native SST files, restores
//! from them (rescaled: one instance restored in place and trimmed, the others' rows ingested),
//! and restores from canonical rows by SST ingestion.

use crate::backends::config::BackendConfig;
use crate::backends::interface::{CheckpointedBackend, SnapshotUpload, UploadStats};
use crate::backends::rocks::{RocksDbBackend, RocksDbSnapshot};
use crate::model::error::{Error, Result};
use crate::model::format::metadata::{FetchFile, InstanceId, InstanceMetadata};
use crate::model::format::view::{RowSource, RowView};
use crate::model::key_group::KeyGroupRange;
use crate::model::state::operator::OperatorState;
use crate::model::state::{KeyedStateBackend, StateInfo};
use crate::storage::CheckpointStorage;

impl SnapshotUpload for RocksDbSnapshot {
    fn upload(
        self: Box<Self>,
        storage: &dyn CheckpointStorage,
    ) -> Result<(InstanceMetadata, UploadStats)> {
        RocksDbSnapshot::upload(*self, storage)
    }
}

impl CheckpointedBackend for RocksDbBackend {
    fn open(config: &BackendConfig) -> Result<Self> {
        RocksDbBackend::open(
            config.max_parallelism,
            config.key_groups,
            config.working_dir.clone(),
            config.rocksdb.clone(),
        )
    }

    fn instance_id(&self) -> InstanceId {
        RocksDbBackend::instance_id(self)
    }

    fn operator_state(&self) -> &OperatorState {
        &self.operator_state
    }

    fn operator_state_mut(&mut self) -> &mut OperatorState {
        &mut self.operator_state
    }

    fn snapshot_state(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotUpload>> {
        Ok(Box::new(RocksDbBackend::snapshot(self, checkpoint_id)?))
    }

    fn notify_checkpoint_complete(&mut self, part: &InstanceMetadata) -> Result<()> {
        RocksDbBackend::notify_checkpoint_complete(self, part)
    }

    /// A native checkpoint opened read-only.
    fn row_view(&mut self) -> Result<Box<dyn RowView>> {
        self.check_not_poisoned()?;
        Ok(Box::new(self.view()?))
    }

    /// One part owning exactly the requested key groups is restored as is; otherwise (the
    /// parallelism changed) the part with the most requested key groups is restored as the
    /// base, the key groups it does not own are dropped with range deletes, and the rows of the
    /// others' requested key groups are ingested as sorted SST files. A rescaled restore never
    /// claims.
    fn restore_checkpoint(
        config: &BackendConfig,
        sources: &[&InstanceMetadata],
        fetch: &FetchFile<'_>,
        claim: bool,
    ) -> Result<Self> {
        match sources {
            [only] if only.key_groups == config.key_groups => RocksDbBackend::restore_files(
                only,
                config,
                config.rocksdb.clone(),
                claim,
                true,
                fetch,
            ),
            _ => restore_rescaled(config, sources, fetch),
        }
    }

    /// A fresh DB, marked as an unfinished restore until the ingest is done: a failure leaves
    /// nothing behind, and a directory that is not empty is refused unless the configuration
    /// asks to replace it.
    fn restore_rows(config: &BackendConfig, rows: &mut dyn RowSource) -> Result<Self> {
        RocksDbBackend::restore_fresh(
            config.max_parallelism,
            config.key_groups,
            config.working_dir.clone(),
            config.rocksdb.clone(),
            config.replace_existing,
            &mut |backend| {
                let states = rows.states().to_vec();
                backend
                    .ingest_sorted(&states, &mut |emit| rows.emit_rows(emit))
                    .map(|_| ())
            },
        )
    }
}

/// The rescaled restore of [`CheckpointedBackend::restore_checkpoint`].
fn restore_rescaled(
    config: &BackendConfig,
    sources: &[&InstanceMetadata],
    fetch: &FetchFile<'_>,
) -> Result<RocksDbBackend> {
    let range = config.key_groups;
    let mut overlapping = sources.to_vec();
    if overlapping.is_empty() {
        return Err(Error::Incompatible {
            reason: format!("no key groups to restore in {range}"),
        });
    }
    overlapping.sort_by_key(|i| std::cmp::Reverse(i.key_groups.intersect(&range).len()));
    let base = overlapping.remove(0);
    // The other instances come first, into temporary directories: once the base is in the
    // engine's working directory only local steps remain, so a failed read never leaves a DB
    // there that the retry would refuse to restore over.
    overlapping.sort_by_key(|i| i.key_groups.start());
    let others = overlapping
        .iter()
        .map(|i| RocksDbBackend::restore_files(i, None, config.rocksdb.clone(), false, true, fetch))
        .collect::<Result<Vec<_>>>()?;
    let mut backend =
        RocksDbBackend::restore_files(base, config, config.rocksdb.clone(), false, false, fetch)?;
    // Until `finish_restore`, the working directory is marked: a crash while the base is
    // trimmed and merged leaves a `db/` that reopening refuses and a retry replaces.
    let combined =
        combine_rescaled(&mut backend, &others, range).and_then(|()| backend.finish_restore());
    if let Err(e) = combined {
        // As a failed single-instance restore does: no DB and no marker is left for the retry
        // (closing without the clean-close flush, which could fail and leave the open marker
        // behind).
        backend.abandon_restore();
        return Err(e);
    }
    Ok(backend)
}

/// Drops the key groups the base does not own and ingests the owned key groups of the other
/// instances into it.
fn combine_rescaled(
    backend: &mut RocksDbBackend,
    others: &[RocksDbBackend],
    range: KeyGroupRange,
) -> Result<()> {
    backend.retain_key_groups(range)?;
    let mut states: Vec<StateInfo> = Vec::new();
    for other in others {
        for info in other.states() {
            if !states.iter().any(|s| s.name == info.name) {
                states.push(info);
            }
        }
    }
    backend.ingest_sorted(&states, &mut |emit| {
        for other in others {
            for group in other.key_group_range().intersect(&range).iter() {
                for (index, info) in states.iter().enumerate() {
                    if other.states().iter().any(|s| s.name == info.name) {
                        other.for_each_row(&info.name, group, &mut |key, value| {
                            emit(group, index, key, value)
                        })?;
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(())
}

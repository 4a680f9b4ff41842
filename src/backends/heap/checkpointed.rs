//! The heap backend in the runtime: full-snapshot checkpoints of its frozen copy-on-write
//! maps, restores that fold canonical rows back into (raw, until registered) tables.

use crate::backends::config::BackendConfig;
use crate::backends::full_snapshot;
use crate::backends::heap::HeapBackend;
use crate::backends::heap::view::HeapView;
use crate::backends::incremental_snapshot::Chains;
use crate::backends::interface::{CheckpointedBackend, SnapshotUpload};
use crate::model::error::Result;
use crate::model::format::metadata::{FetchFile, InstanceId, InstanceMetadata};
use crate::model::format::view::{RowSource, RowView};
use crate::model::state::operator::OperatorState;
use crate::model::state::{BackendKind, KeyedStateBackend};

impl CheckpointedBackend for HeapBackend {
    fn open(config: &BackendConfig) -> Result<Self> {
        let mut backend = HeapBackend::new(config.max_parallelism, config.key_groups)?;
        backend.chains = config.heap_chains.map(Chains::new);
        Ok(backend)
    }

    fn instance_id(&self) -> InstanceId {
        HeapBackend::instance_id(self)
    }

    fn operator_state(&self) -> &OperatorState {
        &self.operator_state
    }

    fn operator_state_mut(&mut self) -> &mut OperatorState {
        &mut self.operator_state
    }

    /// A full snapshot, or with incremental checkpoints configured the next link of the
    /// instance's chain.
    fn snapshot_state(&mut self, checkpoint_id: u64) -> Result<Box<dyn SnapshotUpload>> {
        match self.chains.clone() {
            Some(chains) => chains.snapshot(self, checkpoint_id),
            None => full_snapshot::snapshot(self, checkpoint_id),
        }
    }

    /// Checks that the part is this instance's; with incremental checkpoints, its chain
    /// becomes the one the next checkpoint extends.
    fn notify_checkpoint_complete(&mut self, part: &InstanceMetadata) -> Result<()> {
        part.check_belongs_to(
            HeapBackend::instance_id(self),
            BackendKind::Heap,
            self.assigner().max_parallelism(),
            self.key_group_range(),
        )?;
        if let Some(chains) = &self.chains {
            chains.confirm(part);
        }
        Ok(())
    }

    /// Freezes the maps: one `Arc` clone per key group and state, no entry copied.
    fn row_view(&mut self) -> Result<Box<dyn RowView>> {
        let max_parallelism = self.assigner().max_parallelism();
        Ok(Box::new(HeapView::new(self.freeze(), max_parallelism)))
    }

    fn restore_checkpoint(
        config: &BackendConfig,
        sources: &[&InstanceMetadata],
        fetch: &FetchFile<'_>,
        _claim: bool,
    ) -> Result<Self> {
        full_snapshot::restore(config, sources, fetch)
    }

    fn restore_rows(config: &BackendConfig, rows: &mut dyn RowSource) -> Result<Self> {
        let mut backend = <HeapBackend as CheckpointedBackend>::open(config)?;
        let ids = rows
            .states()
            .iter()
            .map(|info| backend.declare_restored(info.clone()))
            .collect::<Result<Vec<_>>>()?;
        rows.emit_rows(&mut |group, state, key, value| {
            backend.load_row(ids[state], group, key, value)
        })?;
        Ok(backend)
    }
}

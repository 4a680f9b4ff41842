//! [`HeapView`]: the heap backend's frozen maps as canonical rows.

use crate::backends::heap::HeapFrozen;
use crate::model::error::Result;
use crate::model::format::view::{RowSink, RowView};
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::StateInfo;

/// The heap backend's frozen maps as a row view: each (key group, state) is encoded and sorted
/// on demand, so only one of them is held as bytes at a time.
pub(crate) struct HeapView {
    frozen: HeapFrozen,
    max_parallelism: u32,
    /// Indices into `frozen.states`, sorted by state name.
    order: Vec<usize>,
    infos: Vec<StateInfo>,
    scratch: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HeapView {
    pub(crate) fn new(frozen: HeapFrozen, max_parallelism: u32) -> Self {
        let mut order: Vec<usize> = (0..frozen.states.len()).collect();
        order.sort_by(|a, b| frozen.states[*a].0.name.cmp(&frozen.states[*b].0.name));
        let infos = order.iter().map(|i| frozen.states[*i].0.clone()).collect();
        Self {
            frozen,
            max_parallelism,
            order,
            infos,
            scratch: Vec::new(),
        }
    }
}

impl RowView for HeapView {
    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn key_groups(&self) -> KeyGroupRange {
        self.frozen.range
    }

    fn states(&self) -> &[StateInfo] {
        &self.infos
    }

    fn rows(&mut self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()> {
        let group = (u32::from(key_group) - self.frozen.range.start()) as usize;
        let (info, table) = &self.frozen.states[self.order[state]];
        let rows = &mut self.scratch;
        rows.clear();
        table.rows(group, &info.name, &mut |key, value| {
            rows.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in rows.iter() {
            sink(key, value)?;
        }
        Ok(())
    }
}

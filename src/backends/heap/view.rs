//! [`HeapView`]: the heap backend's frozen maps as canonical rows.

use crate::backends::heap::HeapFrozen;
use crate::model::error::Result;
use crate::model::format::view::{RowSink, RowView};
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::StateInfo;
use crate::model::state::ttl::TtlInstant;

/// The heap backend's frozen maps as a row view: each (key group, state) is encoded and sorted
/// on demand, so only the key groups being written are held as bytes.
pub(crate) struct HeapView {
    frozen: HeapFrozen,
    max_parallelism: u32,
    /// Indices into `frozen.states`, sorted by state name.
    order: Vec<usize>,
    infos: Vec<StateInfo>,
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
        }
    }
}

/// A row encoded into an arena: the first 8 bytes of its key (big-endian, zero-padded, so that
/// comparing them orders as the bytes do), where the key starts, its length, the value's.
type ArenaRow = (u64, usize, usize, usize);

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

    fn ttl_instant(&self) -> TtlInstant {
        self.frozen.ttl_instant
    }

    /// Encodes the rows into one arena (no allocation per row) and sorts them by key, most
    /// comparisons decided by the keys' first 8 bytes without touching the arena.
    fn rows(&self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()> {
        let group = (u32::from(key_group) - self.frozen.range.start()) as usize;
        let (info, table) = &self.frozen.states[self.order[state]];
        let mut arena: Vec<u8> = Vec::new();
        let mut rows: Vec<ArenaRow> = Vec::new();
        table.rows(group, &info.name, &mut |key, value| {
            let mut head = [0u8; 8];
            let n = key.len().min(8);
            head[..n].copy_from_slice(&key[..n]);
            rows.push((
                u64::from_be_bytes(head),
                arena.len(),
                key.len(),
                value.len(),
            ));
            arena.extend_from_slice(key);
            arena.extend_from_slice(value);
            Ok(())
        })?;
        let key = |&(_, start, len, _): &ArenaRow| &arena[start..start + len];
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| key(a).cmp(key(b))));
        for row in &rows {
            let (_, start, key_len, value_len) = *row;
            let value_start = start + key_len;
            sink(key(row), &arena[value_start..value_start + value_len])?;
        }
        Ok(())
    }
}

//! A consistent view of one backend instance's state as canonical rows, and the writer that
//! turns any view into a canonical data file.

use std::path::Path;

use crate::codec::{Codec, DefaultCodec};
use crate::error::Result;
use crate::heap::HeapFrozen;
use crate::key_group::{KeyGroup, KeyGroupRange};
use crate::savepoint::data_file::{DataFileHeader, DataFileSummary, DataFileWriter};
use crate::state::StateInfo;

/// Receives `(row key suffix, value)` rows.
pub(crate) type RowSink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// One instance's state frozen at a point in time, readable as canonical rows.
pub(crate) trait RowView: Send {
    /// The job's max parallelism.
    fn max_parallelism(&self) -> u32;
    /// The key groups of the instance.
    fn key_groups(&self) -> KeyGroupRange;
    /// The states, sorted by name.
    fn states(&self) -> &[StateInfo];
    /// Emits the rows of `states()[state]` in `key_group`, in ascending row-key order.
    fn rows(&mut self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()>;
}

/// Writes `view` as a canonical data file at `path`.
pub(crate) fn write_data_file(view: &mut dyn RowView, path: &Path) -> Result<DataFileSummary> {
    let header = DataFileHeader {
        codec: DefaultCodec::ID,
        max_parallelism: view.max_parallelism(),
        key_groups: view.key_groups(),
        states: view.states().to_vec(),
    };
    let mut writer = DataFileWriter::create(path, &header)?;
    for key_group in view.key_groups().iter() {
        for state in 0..header.states.len() {
            view.rows(key_group, state, &mut |key, value| {
                writer.add_row(key_group, state as u32, key, value)
            })?;
        }
    }
    let (_, summary) = writer.finish()?;
    Ok(summary)
}

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

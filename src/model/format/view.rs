//! Canonical rows in and out of a backend: [`RowView`], a consistent view of one instance's
//! state as canonical rows, and the writer that turns any view into a canonical data file;
//! [`RowSource`], rows arriving for a restore, and [`DataFileRows`], the rows of data files.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::format::data_file::{
    DataFileHeader, DataFileReader, DataFileSummary, DataFileWriter,
};
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::StateInfo;

/// Receives `(row key suffix, value)` rows.
pub type RowSink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// One instance's state frozen at a point in time, readable as canonical rows.
pub trait RowView: Send {
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
pub fn write_data_file(view: &mut dyn RowView, path: &Path) -> Result<DataFileSummary> {
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

/// Receives `(key group, state index, row key suffix, value)` rows of a restore.
pub type RowEmit<'a> = dyn FnMut(KeyGroup, usize, &[u8], &[u8]) -> Result<()> + 'a;

/// Canonical rows arriving for a restore: what a savepoint or a full-snapshot checkpoint gives
/// a backend. Every state's rows come in ascending order of (key group, row key), so a backend
/// can write them as sorted files.
pub trait RowSource {
    /// The states, sorted by name; a row's state index points into it.
    fn states(&self) -> &[StateInfo];
    /// Emits every row, each state's in ascending (key group, row key) order.
    ///
    /// # Errors
    /// Read and format errors, and what `emit` returns.
    fn emit_rows(&mut self, emit: &mut RowEmit<'_>) -> Result<()>;
}

/// The rows of some key groups in data files of disjoint key groups (the instances of one
/// savepoint or checkpoint): their states united by name, the key groups outside `range`
/// skipped without being read.
pub struct DataFileRows<R: Read + Seek = File> {
    readers: Vec<DataFileReader<R>>,
    range: KeyGroupRange,
    states: Vec<StateInfo>,
    /// Per reader: its state indices into `states`.
    maps: Vec<Vec<usize>>,
}

impl<R: Read + Seek> DataFileRows<R> {
    /// The rows of `range` in `readers`.
    ///
    /// # Errors
    /// [`Error::StateMismatch`] if two files declare one state name with different infos.
    pub fn new(mut readers: Vec<DataFileReader<R>>, range: KeyGroupRange) -> Result<Self> {
        let mut states: Vec<StateInfo> = Vec::new();
        for reader in &readers {
            for info in &reader.header().states {
                match states.iter().find(|s| s.name == info.name) {
                    Some(existing) if existing != info => {
                        return Err(Error::StateMismatch {
                            name: info.name.clone(),
                            registered: existing.describe(),
                            requested: info.describe(),
                        });
                    }
                    Some(_) => {}
                    None => states.push(info.clone()),
                }
            }
        }
        states.sort_by(|a, b| a.name.cmp(&b.name));
        // Files cover disjoint key groups: reading them in key-group order keeps every state's
        // rows ascending.
        readers.sort_by_key(|r| r.header().key_groups.start());
        let maps = readers
            .iter()
            .map(|r| {
                r.header()
                    .states
                    .iter()
                    .map(|info| states.iter().position(|s| s.name == info.name).unwrap_or(0))
                    .collect()
            })
            .collect();
        Ok(Self {
            readers,
            range,
            states,
            maps,
        })
    }
}

impl<R: Read + Seek> RowSource for DataFileRows<R> {
    fn states(&self) -> &[StateInfo] {
        &self.states
    }

    fn emit_rows(&mut self, emit: &mut RowEmit<'_>) -> Result<()> {
        let range = self.range;
        for (reader, map) in self.readers.iter_mut().zip(&self.maps) {
            let groups: Vec<KeyGroup> = reader
                .index()
                .iter()
                .map(|e| e.key_group)
                .filter(|g| range.contains(*g))
                .collect();
            for group in groups {
                reader.read_key_group(group, &mut |state, key, value| {
                    emit(group, map[state as usize], key, value)
                })?;
            }
        }
        Ok(())
    }
}

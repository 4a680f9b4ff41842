//! Restored rows of a state that the engine has not registered again yet.
//!
//! The heap backend holds typed values, and the types are known only when the engine registers
//! the state. Until then a restored state stays as its rows (still per key group, so it is
//! included in snapshots unchanged); registration decodes them into a typed table.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::table::{AnyTable, FrozenTable, RowSink};
use crate::model::codec::CodecError;
use crate::model::error::Result;

/// Rows `(row key suffix, value)` of one key group.
type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Rows per owned key group (index = key group − range start), only for groups that have any.
///
/// Sparse on purpose: a data file may declare up to 65,536 states, and allocating every owned
/// key group of each before a single row arrives let a small hostile file claim hundreds of
/// megabytes; now memory follows the rows actually read.
#[derive(Clone, Default)]
pub(crate) struct RawTable {
    pub(crate) groups: BTreeMap<usize, Arc<Rows>>,
}

impl RawTable {
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

impl AnyTable for RawTable {
    fn remove_erased(&mut self, _group: usize, _key: &dyn Any, _ns: &dyn Any) -> bool {
        false
    }

    fn keys_erased(&self) -> Box<dyn Iterator<Item = (&dyn Any, &dyn Any)> + '_> {
        Box::new(std::iter::empty())
    }

    fn freeze(&mut self) -> Box<dyn FrozenTable> {
        Box::new(self.clone())
    }

    fn load_row(&mut self, group: usize, suffix: &[u8], value: &[u8]) -> Result<(), CodecError> {
        Arc::make_mut(self.groups.entry(group).or_default())
            .push((suffix.to_vec(), value.to_vec()));
        Ok(())
    }

    fn len(&self) -> usize {
        self.groups.values().map(|g| g.len()).sum()
    }
}

impl FrozenTable for RawTable {
    fn rows(&self, group: usize, _state: &str, sink: &mut RowSink<'_>) -> Result<()> {
        for (key, value) in self
            .groups
            .get(&group)
            .into_iter()
            .flat_map(|rows| rows.iter())
        {
            sink(key, value)?;
        }
        Ok(())
    }
}

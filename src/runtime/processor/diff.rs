//! Comparing two snapshots row by row ([`diff`]): what a rewrite, a job's progress or a
//! restore changed, per operator and state.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::File;

use crate::model::error::{Error, Result};
use crate::model::format::data_file::DataFileReader;
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::runtime::processor::source::SnapshotFiles;

/// How one state differs between two snapshots. Rows are compared by key (row key) and value
/// bytes; bytes count row keys and values.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateDiff {
    /// The operator id.
    pub operator: String,
    /// The state name.
    pub state: String,
    /// Rows only in the second snapshot.
    pub added: u64,
    /// Rows only in the first.
    pub removed: u64,
    /// Rows in both with other values.
    pub changed: u64,
    /// Rows in both with the same value.
    pub unchanged: u64,
    /// Bytes of the state's rows in the first snapshot.
    pub bytes_before: u64,
    /// Bytes of its rows in the second.
    pub bytes_after: u64,
    /// The state as the first snapshot records it (kind, types, schema version, time to
    /// live), if it has it.
    pub info_before: Option<String>,
    /// As the second records it.
    pub info_after: Option<String>,
}

impl StateDiff {
    /// Whether the state is the same in both: the same rows, recorded the same way.
    pub fn is_same(&self) -> bool {
        self.added == 0
            && self.removed == 0
            && self.changed == 0
            && self.info_before == self.info_after
    }
}

/// How two snapshots differ: per state, and per operator in its operator state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotDiff {
    /// One entry per (operator, state) of either snapshot, in (operator, state) order.
    pub states: Vec<StateDiff>,
    /// The operators of either snapshot whose operator state differs (all instances' parts
    /// together, as one instance restores them), in order.
    pub operator_states_differ: Vec<String>,
}

impl SnapshotDiff {
    /// Whether the two hold the same state.
    pub fn is_same(&self) -> bool {
        self.operator_states_differ.is_empty() && self.states.iter().all(StateDiff::is_same)
    }
}

/// One operator's data files, open.
struct Side {
    readers: Vec<(KeyGroupRange, DataFileReader<File>)>,
}

impl Side {
    fn open(files: &SnapshotFiles, operator: &str) -> Result<Option<(Self, u32)>> {
        if !files.meta().operators().contains(&operator) {
            return Ok(None);
        }
        let instances = files.instances(operator)?;
        let max_parallelism = instances[0].1.max_parallelism;
        let readers = instances
            .iter()
            .map(|&(index, i)| Ok((i.key_groups, files.reader(index)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((Self { readers }, max_parallelism)))
    }

    /// The rows of `group`, by (state name, row key).
    fn group(&mut self, group: KeyGroup) -> Result<BTreeMap<(String, Vec<u8>), Vec<u8>>> {
        let mut rows = BTreeMap::new();
        if let Some((_, reader)) = self.readers.iter_mut().find(|(r, _)| r.contains(group)) {
            let names: Vec<String> = reader
                .header()
                .states
                .iter()
                .map(|s| s.name.clone())
                .collect();
            reader.read_key_group(group, &mut |state, key, value| {
                rows.insert(
                    (names[state as usize].clone(), key.to_vec()),
                    value.to_vec(),
                );
                Ok(())
            })?;
        }
        Ok(rows)
    }
}

/// Compares every state of every operator of `before` and `after`, key group by key group
/// (memory: one key group of each), and each operator's operator state. Both snapshots must be
/// savepoints or full-snapshot checkpoints ([`SnapshotFiles`]).
///
/// # Errors
/// [`Error::Incompatible`] for an operator with another max parallelism in each;
/// [`Error::StateMismatch`] for a snapshot whose instances record one state differently;
/// format errors naming the file.
pub fn diff(before: &SnapshotFiles, after: &SnapshotFiles) -> Result<SnapshotDiff> {
    let mut operators: Vec<&str> = before.meta().operators();
    operators.extend(after.meta().operators());
    operators.sort_unstable();
    operators.dedup();
    let mut out: BTreeMap<(String, String), StateDiff> = BTreeMap::new();
    let mut operator_states_differ = Vec::new();
    for operator in operators {
        let a = Side::open(before, operator)?;
        let b = Side::open(after, operator)?;
        let max_parallelism = match (&a, &b) {
            (Some((_, x)), Some((_, y))) if x != y => {
                return Err(Error::Incompatible {
                    reason: format!(
                        "operator {operator:?} has max parallelism {x} in one snapshot and {y} \
                         in the other: rows are not comparable by key group"
                    ),
                });
            }
            (Some((_, m)), _) | (None, Some((_, m))) => *m,
            (None, None) => continue,
        };
        for (first, side) in [(true, before), (false, after)] {
            if !side.meta().operators().contains(&operator) {
                continue;
            }
            for s in side.states(operator)? {
                let entry = out
                    .entry((operator.to_owned(), s.name.clone()))
                    .or_insert_with(|| StateDiff {
                        operator: operator.to_owned(),
                        state: s.name.clone(),
                        ..StateDiff::default()
                    });
                if first {
                    entry.info_before = Some(s.describe());
                } else {
                    entry.info_after = Some(s.describe());
                }
            }
        }
        let operator_state = |side: &SnapshotFiles| -> Result<Option<_>> {
            if side.meta().operators().contains(&operator) {
                Ok(Some(side.operator_state(operator)?))
            } else {
                Ok(None)
            }
        };
        if operator_state(before)? != operator_state(after)? {
            operator_states_differ.push(operator.to_owned());
        }
        let (mut a, mut b) = (a.map(|s| s.0), b.map(|s| s.0));
        for group in KeyGroupRange::all(max_parallelism)?.iter() {
            let rows_a = match &mut a {
                Some(side) => side.group(group)?,
                None => BTreeMap::new(),
            };
            let rows_b = match &mut b {
                Some(side) => side.group(group)?,
                None => BTreeMap::new(),
            };
            compare(operator, rows_a, rows_b, &mut out);
        }
    }
    Ok(SnapshotDiff {
        states: out.into_values().collect(),
        operator_states_differ,
    })
}

/// Merges two key groups' sorted rows into the counts.
fn compare(
    operator: &str,
    a: BTreeMap<(String, Vec<u8>), Vec<u8>>,
    b: BTreeMap<(String, Vec<u8>), Vec<u8>>,
    out: &mut BTreeMap<(String, String), StateDiff>,
) {
    fn entry<'a>(
        out: &'a mut BTreeMap<(String, String), StateDiff>,
        operator: &str,
        state: &str,
    ) -> &'a mut StateDiff {
        out.entry((operator.to_owned(), state.to_owned()))
            .or_insert_with(|| StateDiff {
                operator: operator.to_owned(),
                state: state.to_owned(),
                ..StateDiff::default()
            })
    }
    let size = |k: &(String, Vec<u8>), v: &Vec<u8>| (k.1.len() + v.len()) as u64;
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((x, _)), Some((y, _))) => x.cmp(y),
        };
        match order {
            Ordering::Less => {
                let (k, v) = a.next().expect("peeked");
                let d = entry(out, operator, &k.0);
                d.removed += 1;
                d.bytes_before += size(&k, &v);
            }
            Ordering::Greater => {
                let (k, v) = b.next().expect("peeked");
                let d = entry(out, operator, &k.0);
                d.added += 1;
                d.bytes_after += size(&k, &v);
            }
            Ordering::Equal => {
                let (k, va) = a.next().expect("peeked");
                let (_, vb) = b.next().expect("peeked");
                let d = entry(out, operator, &k.0);
                if va == vb {
                    d.unchanged += 1;
                } else {
                    d.changed += 1;
                }
                d.bytes_before += size(&k, &va);
                d.bytes_after += size(&k, &vb);
            }
        }
    }
}

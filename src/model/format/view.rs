//! Canonical rows in and out of a backend: [`RowView`], a consistent view of one instance's
//! state as canonical rows, and the writer that turns any view into a canonical data file;
//! [`RowSource`], rows arriving for a restore, and [`DataFileRows`], the rows of data files.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use crate::model::codec::{Codec, DefaultCodec};
use crate::model::error::{Error, Result};
use crate::model::format::data_file::{
    BlockEncoder, DataFileHeader, DataFileReader, DataFileSummary, DataFileWriter, EncodedBlocks,
};
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::StateInfo;
use crate::model::state::ttl::TtlInstant;
use crate::model::state::ttl::rows::{RowExpiry, row_expiry};

/// Receives `(row key suffix, value)` rows.
pub type RowSink<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// One instance's state frozen at a point in time, readable as canonical rows. Key groups are
/// read on several threads at once ([`write_data_file`]), hence `Sync` and `&self`.
pub trait RowView: Send + Sync {
    /// The job's max parallelism.
    fn max_parallelism(&self) -> u32;
    /// The key groups of the instance.
    fn key_groups(&self) -> KeyGroupRange;
    /// The states, sorted by name.
    fn states(&self) -> &[StateInfo];
    /// Emits the rows of `states()[state]` in `key_group`, in ascending row-key order.
    fn rows(&self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()>;
    /// The time the view was taken at, on both TTL clocks: rows of states with a time to live
    /// that had expired then are left out of what is written from the view.
    fn ttl_instant(&self) -> TtlInstant;
}

/// Threads that encode key groups at once in [`write_data_file`]: the machine's parallelism,
/// at most 4 (the writer, one thread, then becomes the limit).
fn encode_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Writes `view` as a canonical data file at `path`.
///
/// Key groups are read and encoded on up to four threads (the machine's parallelism), and
/// written in key-group order as they complete, so the bytes are those of a sequential writer.
/// At most two key groups per thread are held encoded at a time: memory is bounded by the
/// largest key groups, not by the state.
pub fn write_data_file(view: &dyn RowView, path: &Path) -> Result<DataFileSummary> {
    write_data_file_on(view, path, encode_threads())
}

/// [`write_data_file`] on `threads` encoding threads (1: all on the calling thread).
pub(crate) fn write_data_file_on(
    view: &dyn RowView,
    path: &Path,
    threads: usize,
) -> Result<DataFileSummary> {
    let header = DataFileHeader {
        codec: DefaultCodec::ID,
        max_parallelism: view.max_parallelism(),
        key_groups: view.key_groups(),
        states: view.states().to_vec(),
    };
    let mut writer = DataFileWriter::create(path, &header)?;
    let groups: Vec<KeyGroup> = header.key_groups.iter().collect();
    let instant = view.ttl_instant();
    let encode = |key_group: KeyGroup| -> Result<EncodedBlocks> {
        let mut encoder = BlockEncoder::new(header.key_groups, header.states.len());
        for state in 0..header.states.len() {
            let index = state as u32;
            live_rows(view, instant, key_group, state, &mut |key, value| {
                encoder.add_row(key_group, index, key, value)
            })?;
        }
        encoder.finish()
    };
    if threads <= 1 || groups.len() <= 1 {
        for &key_group in &groups {
            writer.append(encode(key_group)?)?;
        }
    } else {
        in_order_on_threads(
            groups.len(),
            threads,
            &|i| encode(groups[i]),
            &mut |encoded| writer.append(encoded),
        )?;
    }
    let (_, summary) = writer.finish()?;
    Ok(summary)
}

/// Emits the rows of `view.states()[state]` in `key_group` that are live at `instant`:
/// expired rows (list elements) of states with a time to live stay out of checkpoints and
/// savepoints, and lists are trimmed to their live elements.
///
/// # Errors
/// What the view or `sink` returns.
pub(crate) fn live_rows(
    view: &dyn RowView,
    instant: TtlInstant,
    key_group: KeyGroup,
    state: usize,
    sink: &mut RowSink<'_>,
) -> Result<()> {
    let info = &view.states()[state];
    match &info.ttl {
        None => view.rows(key_group, state, sink),
        Some(ttl) => {
            let now = instant.now(ttl.time);
            view.rows(key_group, state, &mut |key, value| match row_expiry(
                info.kind, ttl, now, value,
            ) {
                RowExpiry::Live => sink(key, value),
                RowExpiry::Trimmed(live) => sink(key, &live),
                RowExpiry::Expired => Ok(()),
            })
        }
    }
}

/// Runs `work(0..count)` on `threads` threads and hands the results to `consume` in index
/// order on the calling thread. A thread starts item `i` only once fewer than `2 × threads`
/// items before it are still unconsumed, which bounds what waits. The first error (of `work`
/// or `consume`) stops the other threads from starting items and is returned; a panic in
/// `work` is resumed on the calling thread.
fn in_order_on_threads<T: Send>(
    count: usize,
    threads: usize,
    work: &(dyn Fn(usize) -> Result<T> + Sync),
    consume: &mut dyn FnMut(T) -> Result<()>,
) -> Result<()> {
    use std::collections::BTreeMap;
    use std::sync::{Condvar, Mutex, mpsc};

    struct Progress {
        next: usize,
        consumed: usize,
        stop: bool,
    }
    let window = 2 * threads;
    let progress = Mutex::new(Progress {
        next: 0,
        consumed: 0,
        stop: false,
    });
    let moved = Condvar::new();
    let stop_all = || {
        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
        p.stop = true;
        moved.notify_all();
    };
    std::thread::scope(|scope| {
        let (send, receive) = mpsc::channel::<(usize, std::thread::Result<Result<T>>)>();
        for _ in 0..threads {
            let send = send.clone();
            let (progress, moved) = (&progress, &moved);
            scope.spawn(move || {
                loop {
                    let index = {
                        let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                        while !p.stop && p.next < count && p.next >= p.consumed + window {
                            p = moved.wait(p).unwrap_or_else(|e| e.into_inner());
                        }
                        if p.stop || p.next >= count {
                            return;
                        }
                        p.next += 1;
                        p.next - 1
                    };
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(index)));
                    let failed = !matches!(result, Ok(Ok(_)));
                    if send.send((index, result)).is_err() || failed {
                        return;
                    }
                }
            });
        }
        drop(send);
        let mut waiting: BTreeMap<usize, T> = BTreeMap::new();
        let mut consumed = 0;
        let outcome = (|| {
            while consumed < count {
                let Ok((index, result)) = receive.recv() else {
                    // Only a thread that died outside `work` (the scope re-raises its panic).
                    return Err(Error::Incompatible {
                        reason: "an encoding thread stopped without a result".into(),
                    });
                };
                match result {
                    Ok(Ok(value)) => {
                        waiting.insert(index, value);
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(panic) => {
                        stop_all();
                        std::panic::resume_unwind(panic)
                    }
                }
                while let Some(value) = waiting.remove(&consumed) {
                    consume(value)?;
                    consumed += 1;
                    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.consumed = consumed;
                    moved.notify_all();
                }
            }
            Ok(())
        })();
        if outcome.is_err() {
            stop_all();
        }
        outcome
    })
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

/// The states of several instances united by name, sorted by name.
///
/// # Errors
/// [`Error::StateMismatch`] if two of them record one state name differently.
pub fn unite_states<'a>(parts: impl Iterator<Item = &'a [StateInfo]>) -> Result<Vec<StateInfo>> {
    let mut states: Vec<StateInfo> = Vec::new();
    for part in parts {
        for info in part {
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
    Ok(states)
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
        let states = unite_states(readers.iter().map(|r| r.header().states.as_slice()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::StateKind;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Rows generated from (key group, state): some key groups empty, some spanning several
    /// blocks.
    struct Generated {
        range: KeyGroupRange,
        states: Vec<StateInfo>,
    }

    impl RowView for Generated {
        fn max_parallelism(&self) -> u32 {
            128
        }
        fn key_groups(&self) -> KeyGroupRange {
            self.range
        }
        fn states(&self) -> &[StateInfo] {
            &self.states
        }
        fn rows(&self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()> {
            let count = match key_group % 5 {
                0 => 0,
                1 => 3000, // over one block of 1 MiB with 400-byte values
                _ => 40 + usize::from(key_group) + state,
            };
            for i in 0..count as u32 {
                let value = vec![(i as u8) ^ (key_group as u8); 400];
                sink(&i.to_be_bytes(), &value)?;
            }
            Ok(())
        }

        fn ttl_instant(&self) -> TtlInstant {
            TtlInstant::default()
        }
    }

    fn generated() -> Generated {
        let state = |name: &str| StateInfo::of::<u32, (), (), Vec<u8>>(name, StateKind::Value);
        Generated {
            range: KeyGroupRange::new(3, 40).unwrap(),
            states: vec![state("a"), state("b")],
        }
    }

    #[test]
    fn every_thread_count_writes_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let view = generated();
        let mut files = Vec::new();
        for threads in [1, 2, 3, 8] {
            let path = dir.path().join(format!("{threads}.sbdf"));
            let summary = write_data_file_on(&view, &path, threads).unwrap();
            files.push((summary, std::fs::read(&path).unwrap()));
        }
        for (summary, bytes) in &files[1..] {
            assert_eq!(summary, &files[0].0);
            assert!(bytes == &files[0].1, "the bytes differ from one thread's");
        }
        // And they read back: every row, in order.
        let reader = DataFileReader::open(&dir.path().join("3.sbdf"), "3.sbdf").unwrap();
        assert_eq!(reader.row_count(), files[0].0.rows);
    }

    #[test]
    fn results_are_consumed_in_order_and_the_window_holds() {
        let started = AtomicUsize::new(0);
        let consumed = AtomicUsize::new(0);
        let mut seen = Vec::new();
        in_order_on_threads(
            200,
            3,
            &|i| {
                let ahead =
                    started.fetch_add(1, Ordering::SeqCst) + 1 - consumed.load(Ordering::SeqCst);
                // Started but not consumed: at most the window plus the items in flight.
                assert!(ahead <= 2 * 3 + 3, "{ahead} items outstanding");
                if i % 7 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Ok(i * 10)
            },
            &mut |value| {
                consumed.fetch_add(1, Ordering::SeqCst);
                seen.push(value);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..200).map(|i| i * 10).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_error_stops_the_work() {
        let started = AtomicUsize::new(0);
        let result = in_order_on_threads(
            1000,
            2,
            &|i| {
                started.fetch_add(1, Ordering::SeqCst);
                if i == 10 {
                    Err(Error::Incompatible {
                        reason: "item 10".into(),
                    })
                } else {
                    Ok(i)
                }
            },
            &mut |_| Ok(()),
        );
        assert!(matches!(result, Err(Error::Incompatible { reason }) if reason == "item 10"));
        assert!(
            started.load(Ordering::SeqCst) < 100,
            "the threads stopped early"
        );
        let consumer_error = in_order_on_threads(50, 2, &|i| Ok(i), &mut |i| {
            if i == 5 {
                Err(Error::Incompatible {
                    reason: "consumer".into(),
                })
            } else {
                Ok(())
            }
        });
        assert!(consumer_error.is_err());
    }
}

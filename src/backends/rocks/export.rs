//! Canonical export and bulk import of the RocksDB backend's rows (savepoints, rescaling).
//!
//! Export works from a native checkpoint opened read-only, so the live DB keeps serving while
//! a savepoint streams out with bounded memory. Import builds sorted SST files with
//! `SstFileWriter` and ingests them: no memtable, no write amplification of millions of puts.

use std::path::PathBuf;

use rocksdb::{
    ColumnFamilyDescriptor, DB, IngestExternalFileOptions, IteratorMode, ReadOptions, SstFileWriter,
};

use super::write_cache::{DirtyRow, RowWrite};
use super::{IMPORT_DIR_PREFIX, RocksDbBackend, STAGING_DIR, cf_name, layout, rocks_err};
use crate::model::error::{Error, Result};
use crate::model::format::view::{RowSink, RowView};
use crate::model::key_group::{KeyGroup, KeyGroupRange};
use crate::model::state::StateInfo;
use crate::model::state::ttl::TtlInstant;

/// SST files written by an import are closed at this size.
const IMPORT_FILE_BYTES: u64 = 256 << 20;

/// A read-only native checkpoint of the backend, readable as canonical rows.
pub(crate) struct RocksView {
    // Field order: the DB closes before its directory is removed.
    db: DB,
    states: Vec<(StateInfo, String)>,
    infos: Vec<StateInfo>,
    max_parallelism: u32,
    range: KeyGroupRange,
    ttl_instant: TtlInstant,
    dir: DirCleanup,
}

/// Removes a directory when dropped (after the fields declared before it).
struct DirCleanup(PathBuf);

impl Drop for DirCleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RocksDbBackend {
    /// The synchronous part of a savepoint: a native checkpoint opened read-only.
    pub(crate) fn view(&mut self) -> Result<RocksView> {
        // The view holds the state at this call: the cache's changes included.
        self.flush_write_cache()?;
        let staging_root = self.dir.path().join(STAGING_DIR);
        std::fs::create_dir_all(&staging_root).map_err(|e| Error::io(&staging_root, e))?;
        let dir = tempfile::Builder::new()
            .prefix("view-")
            .tempdir_in(&staging_root)
            .map_err(|e| Error::io(&staging_root, e))?
            .keep();
        std::fs::remove_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(self.rocks())?;
        let descriptors: Vec<_> = self
            .states
            .iter()
            .map(|s| {
                ColumnFamilyDescriptor::new(
                    &s.cf_name,
                    self.options.cf_options(&self.cache, s.info.kind),
                )
            })
            .collect();
        let db = DB::open_cf_descriptors_read_only(
            &self.options.db_options(&self.cache),
            &dir,
            descriptors,
            false,
        )
        .map_err(rocks_err(&dir))?;
        let mut states: Vec<(StateInfo, String)> = self
            .states
            .iter()
            .map(|s| (s.info.clone(), s.cf_name.clone()))
            .collect();
        states.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let infos = states.iter().map(|s| s.0.clone()).collect();
        Ok(RocksView {
            db,
            states,
            infos,
            max_parallelism: self.assigner.max_parallelism(),
            range: self.range,
            ttl_instant: self.ttl.clock().instant(),
            dir: DirCleanup(dir),
        })
    }

    /// Bulk-loads rows into states `states` (declared here if new). `produce` must emit rows
    /// per state in ascending (key group, row key) order; it receives
    /// `(key group, index into states, row key suffix, value)`. Rows outside the owned key
    /// groups are an error.
    pub(crate) fn ingest_sorted(
        &mut self,
        states: &[StateInfo],
        produce: &mut dyn FnMut(
            &mut dyn FnMut(KeyGroup, usize, &[u8], &[u8]) -> Result<()>,
        ) -> Result<()>,
    ) -> Result<u64> {
        // Ingested files go behind the cache: it must not keep rows they replace.
        self.drop_write_cache()?;
        let ids = states
            .iter()
            .map(|s| self.ensure_state(s))
            .collect::<Result<Vec<_>>>()?;
        let import_dir = tempfile::Builder::new()
            .prefix(IMPORT_DIR_PREFIX)
            .tempdir_in(self.dir.path())
            .map_err(|e| Error::io(self.dir.path(), e))?;
        let options: Vec<_> = states
            .iter()
            .map(|s| self.options.cf_options(&self.cache, s.kind))
            .collect();
        let mut writers: Vec<Option<SstFileWriter<'_>>> = states.iter().map(|_| None).collect();
        let mut files: Vec<Vec<PathBuf>> = vec![Vec::new(); states.len()];
        let mut counter = 0usize;
        let mut rows = 0u64;
        let range = self.range;
        let import_path = import_dir.path();
        let mut key = Vec::new();
        produce(&mut |key_group, state, suffix, value| {
            if !range.contains(key_group) || state >= states.len() {
                return Err(Error::Incompatible {
                    reason: format!("row of key group {key_group} is not owned by range {range}"),
                });
            }
            if writers[state].is_none() {
                let writer = SstFileWriter::create(&options[state]);
                let path = import_dir.path().join(format!("{counter:06}.sst"));
                counter += 1;
                writer.open(&path).map_err(rocks_err(&path))?;
                files[state].push(path);
                writers[state] = Some(writer);
            }
            let writer = writers[state].as_mut().ok_or_else(|| Error::Incompatible {
                reason: "SST writer missing".into(),
            })?;
            key.clear();
            key.extend_from_slice(&layout::key_group_prefix(key_group));
            key.extend_from_slice(suffix);
            writer.put(&key, value).map_err(|e| Error::Incompatible {
                reason: format!(
                    "rows of state '{}' out of order: {}",
                    states[state].name,
                    e.into_string()
                ),
            })?;
            rows += 1;
            if writer.file_size() >= IMPORT_FILE_BYTES {
                if let Some(mut w) = writers[state].take() {
                    w.finish().map_err(rocks_err(import_path))?;
                }
            }
            Ok(())
        })?;
        for writer in writers.iter_mut() {
            if let Some(mut w) = writer.take() {
                w.finish().map_err(rocks_err(import_dir.path()))?;
            }
        }
        drop(writers);
        // The files were written inside the DB's directory, so RocksDB can link them in
        // instead of copying them (a copy read and wrote every byte a second time).
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        for (state, paths) in files.into_iter().enumerate() {
            if paths.is_empty() {
                continue;
            }
            let (_, cf) = self.state(ids[state])?;
            self.db
                .ingest_external_file_cf_opts(cf, &ingest, paths)
                .map_err(self.rocks())?;
        }
        Ok(rows)
    }
}

impl RocksDbBackend {
    /// Writes rows the write-back cache hands out (in (state, row key) order) as one SST file
    /// per state and ingests them, instead of inserting them into the memtables: what a
    /// checkpoint's synchronous part does with many changed rows, which would otherwise be
    /// inserted into a memtable one by one and then flushed out of it again at once. Nothing is
    /// ingested if a file fails.
    pub(super) fn ingest_rows(&self, rows: &mut dyn Iterator<Item = DirtyRow<'_>>) -> Result<()> {
        let import_dir = tempfile::Builder::new()
            .prefix(IMPORT_DIR_PREFIX)
            .tempdir_in(self.dir.path())
            .map_err(|e| Error::io(self.dir.path(), e))?;
        let mut rows = rows.peekable();
        let mut files: Vec<(u32, PathBuf)> = Vec::new();
        while let Some(&(state, _, _)) = rows.peek() {
            let info = self
                .states
                .get(state as usize)
                .ok_or(Error::UnknownState { id: state })?;
            let options = self.options.cf_options(&self.cache, info.info.kind);
            let path = import_dir.path().join(format!("{state:06}.sst"));
            let mut writer = SstFileWriter::create(&options);
            writer.open(&path).map_err(rocks_err(&path))?;
            while let Some((_, key, write)) = rows.next_if(|(s, _, _)| *s == state) {
                match write {
                    RowWrite::Delete => writer.delete(key),
                    RowWrite::Put(value) => writer.put(key, value),
                    RowWrite::Merge(operand) => writer.merge(key, operand),
                }
                .map_err(rocks_err(&path))?;
            }
            writer.finish().map_err(rocks_err(&path))?;
            files.push((state, path));
        }
        // Inside the DB's directory: linked in, not copied.
        let mut ingest = IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        for (state, path) in files {
            let cf = self
                .states
                .get(state as usize)
                .and_then(|s| self.db.cf_handle(&s.cf_name))
                .ok_or(Error::UnknownState { id: state })?;
            self.db
                .ingest_external_file_cf_opts(cf, &ingest, vec![path])
                .map_err(self.rocks())?;
        }
        Ok(())
    }

    /// Calls `sink(row key suffix, value)` for the rows of state `state` in `key_group`, in
    /// ascending order (rows of a backend restored for reading, during a rescale).
    pub(crate) fn for_each_row(
        &self,
        state: &str,
        key_group: KeyGroup,
        sink: &mut RowSink<'_>,
    ) -> Result<()> {
        self.flush_write_cache()?;
        scan_key_group(&self.db, self.dir.path(), &cf_name(state), key_group, sink)
    }

    /// Narrows the backend to `keep`: the rows of every other key group are dropped with range
    /// deletes (constant work per state, whatever the data size). For an instance restored from
    /// a checkpoint of a wider range.
    pub(crate) fn retain_key_groups(&mut self, keep: KeyGroupRange) -> Result<()> {
        // Range deletes go behind the cache: it must not keep rows they remove.
        self.drop_write_cache()?;
        for state in &self.states {
            let cf = self
                .db
                .cf_handle(&state.cf_name)
                .ok_or_else(|| Error::corrupt(state.cf_name.clone(), "missing column family"))?;
            if keep.start() > 0 {
                let (from, to) = layout::key_group_span(0, keep.start());
                self.db
                    .delete_range_cf(cf, from, to)
                    .map_err(self.rocks())?;
            }
            // Key groups are at most 32767, so [end, 0xffff) covers everything above `keep`.
            let (from, to) = layout::key_group_span(keep.end(), 0xffff);
            self.db
                .delete_range_cf(cf, from, to)
                .map_err(self.rocks())?;
        }
        self.range = keep;
        self.write_instance_record()
    }
}

impl RowView for RocksView {
    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn key_groups(&self) -> KeyGroupRange {
        self.range
    }

    fn states(&self) -> &[StateInfo] {
        &self.infos
    }

    fn ttl_instant(&self) -> TtlInstant {
        self.ttl_instant
    }

    fn rows(&self, key_group: KeyGroup, state: usize, sink: &mut RowSink<'_>) -> Result<()> {
        scan_key_group(
            &self.db,
            &self.dir.0,
            &self.states[state].1,
            key_group,
            sink,
        )
    }
}

/// Calls `sink(row key suffix, value)` for every row of column family `cf_name` in
/// `key_group`, in ascending order. `dir` (the DB's directory) names the DB in errors; a row
/// key too short for its key-group prefix is [`Error::Corrupt`].
fn scan_key_group(
    db: &DB,
    dir: &std::path::Path,
    cf_name: &str,
    key_group: KeyGroup,
    sink: &mut RowSink<'_>,
) -> Result<()> {
    let cf = db
        .cf_handle(cf_name)
        .ok_or_else(|| Error::corrupt(cf_name.to_owned(), "missing column family"))?;
    let (start, end) = layout::key_group_span(u32::from(key_group), u32::from(key_group) + 1);
    let mut read = ReadOptions::default();
    read.set_iterate_lower_bound(start);
    read.set_iterate_upper_bound(end);
    // A bulk scan should not evict the live working set from the block cache.
    read.fill_cache(false);
    read.set_total_order_seek(true); // see `RocksDbBackend::prefix_read_options`
    for item in db.iterator_cf_opt(cf, read, IteratorMode::Start) {
        let (key, value) = item.map_err(rocks_err(dir))?;
        let suffix = key.get(layout::KEY_GROUP_PREFIX_LEN..).ok_or_else(|| {
            Error::corrupt(
                dir.display().to_string(),
                format!("row key of {} bytes in column family {cf_name}", key.len()),
            )
        })?;
        sink(suffix, &value)?;
    }
    Ok(())
}

//! Tuning of the RocksDB backend: a plain struct with documented defaults.

use rocksdb::{
    BlockBasedOptions, Cache, DBCompactionStyle, DBCompressionType, DataBlockIndexType,
    MemtableFactory, Options, SliceTransform, WriteBufferManager,
};

use super::merge::{LIST_MERGE_OPERATOR, list_append_merge};
use crate::model::state::StateKind;

/// The compaction style of every column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionStyle {
    /// Leveled compaction (RocksDB's default).
    Level,
    /// Universal (tiered) compaction.
    Universal,
}

/// The memtable of a state's column family: where writes wait for a flush, and what every
/// point lookup searches first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memtable {
    /// RocksDB's skip list, for every state (the default). A lookup walks about log2(entries)
    /// nodes of a list spread over the whole memtable; a flush reads it in order.
    SkipList,
    /// For value, list, reducing and aggregating states, a hash table over whole row keys with
    /// a short sorted list per bucket (RocksDB's `HashLinkList`); map states keep the skip
    /// list, because their entries are iterated in key order. A lookup or update costs one
    /// bucket probe instead of a skip-list search (`state_ops`: value update 2.6× faster).
    /// The price is paid at every flush, including the one in a checkpoint's synchronous
    /// part: RocksDB must first sort the memtable (W5: 2.85 s instead of 0.37 s to flush the
    /// bulk load at the first checkpoint; rounds of 10,000 updates 22–58 ms instead of
    /// 15–21 ms). The bucket array (`buckets` × 8 bytes) is allocated with each memtable of
    /// each such state and counts towards its write buffer. An iterator over such a state
    /// (`keys`) first copies and sorts its memtable, on every call.
    HashLinkList {
        /// Hash buckets per memtable. About the number of rows a memtable holds keeps the
        /// lists short: a 64 MiB memtable of small rows holds about 1.6 million.
        buckets: usize,
    },
}

impl Memtable {
    /// Whether the column family of a state of `kind` uses a hash memtable.
    fn hashed_for(self, kind: StateKind) -> Option<usize> {
        match self {
            Memtable::HashLinkList { buckets } if kind != StateKind::Map => Some(buckets),
            _ => None,
        }
    }
}

/// Options of the RocksDB backend. `docs/rocksdb-layout.md` lists them with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RocksDbOptions {
    /// Capacity of the LRU block cache shared by all column families. Default 128 MiB.
    pub block_cache_bytes: usize,
    /// Capacity of the write-back cache in front of RocksDB, in bytes; 0 turns it off. Default
    /// 64 MiB. The cache holds recently used rows of every state (as the bytes RocksDB would
    /// hold): reads of cached rows and all writes are hash-table operations, and changed rows
    /// reach RocksDB in batches when evicted and in every checkpoint's synchronous part. A
    /// change is recorded once there is room for it: if RocksDB refuses the rows written to
    /// make room (a full disk), the operation fails and its change is not applied; a change
    /// the cache holds is written, or its refusal reported, by the next flush or snapshot, and
    /// stays cached and dirty until then. Counted in the bytes the cache allocates, filled as
    /// rows arrive; it comes on top of the block cache and the write buffers
    /// ([`RocksDbOptions::with_memory_budget`] splits one number).
    pub write_cache_bytes: usize,
    /// Of the write-back cache, at most this many bytes of changed rows: beyond it the rows
    /// changed longest ago are written to RocksDB (as a sorted `WriteBatch`) and stay cached,
    /// clean. A checkpoint's synchronous part writes the changed rows before it flushes, so
    /// this bounds what the cache adds to the pause (W5: a few milliseconds per MiB). Default
    /// 4 MiB.
    pub write_cache_dirty_bytes: usize,
    /// When not 0, the memtables of all states together are capped at this many bytes and
    /// charged to the block cache (RocksDB's write buffer manager), so that
    /// [`RocksDbOptions::block_cache_bytes`] bounds cached blocks and memtables together, as
    /// Flink's managed memory does. Default 0: each column family's memtables are bounded by
    /// `write_buffer_bytes × max_write_buffers` on their own, beside the block cache.
    pub write_buffer_manager_bytes: usize,
    /// Size of one memtable (per column family). Default 64 MiB. Smaller memtables make point
    /// lookups cheaper (fewer skip-list entries to search) but a bulk load then leaves many
    /// small runs that compaction merges right after the first checkpoint, and that merge is
    /// checkpoint traffic (W5 with 16 MiB: 7.61× the changed bytes over 20 checkpoints, 2.23×
    /// with 64 MiB).
    pub write_buffer_bytes: usize,
    /// Memtables per column family before writes stall. Default 4.
    pub max_write_buffers: i32,
    /// Bloom filter bits per key; 0 disables filters. Default 10 (about 1% false positives).
    pub bloom_bits_per_key: f64,
    /// Data block size. Default 4 KiB (point lookups dominate state access).
    pub block_size: usize,
    /// Target size of SST files. Smaller files make incremental checkpoints finer-grained.
    /// Default 32 MiB.
    pub target_file_size_bytes: u64,
    /// Compaction style. Default [`CompactionStyle::Universal`]: an incremental checkpoint
    /// uploads every SST file written since the last one, and leveled compaction of uniformly
    /// spread keys rewrites all of level 1 whenever level 0 is compacted (measured in W5:
    /// 7.07× the changed bytes over 20 checkpoints, against 2.23× for universal).
    pub compaction_style: CompactionStyle,
    /// Number of level-0 files (sorted runs, under universal compaction) that triggers a
    /// compaction. Default 8: fewer, larger merges of the small runs that checkpoints flush
    /// (W5 over 20 checkpoints: 5.68× the changed bytes with 4, 2.23× with 8).
    pub level0_compaction_trigger: i32,
    /// Keep index and filter blocks in the block cache (bounded memory, one more cache lookup
    /// per read) rather than in each open table's own memory. Default false: the lookups
    /// cost more than the memory saved for state sizes that fit the machine (filters take
    /// about 1.2 bytes per key at 10 bits per key).
    pub cache_index_and_filter_blocks: bool,
    /// A hash index inside each data block, so a point lookup finds its key without a binary
    /// search of the block. Default true.
    pub data_block_hash_index: bool,
    /// A bloom filter over each memtable's keys (this fraction of the write buffer; 0 disables
    /// it), so a point lookup skips memtables that do not hold its key. Default 0.1.
    pub memtable_bloom_ratio: f64,
    /// The memtable of state column families. Default [`Memtable::SkipList`]: a hash
    /// memtable makes state access faster but every flush slower, and a checkpoint's
    /// synchronous part flushes.
    pub memtable: Memtable,
    /// Background flush and compaction threads. Default 2.
    pub background_jobs: i32,
    /// LZ4-compress data blocks. Default true.
    pub compression: bool,
}

impl Default for RocksDbOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 128 << 20,
            write_cache_bytes: 64 << 20,
            write_cache_dirty_bytes: 4 << 20,
            write_buffer_manager_bytes: 0,
            write_buffer_bytes: 64 << 20,
            max_write_buffers: 4,
            bloom_bits_per_key: 10.0,
            block_size: 4 << 10,
            target_file_size_bytes: 32 << 20,
            compaction_style: CompactionStyle::Universal,
            level0_compaction_trigger: 8,
            cache_index_and_filter_blocks: false,
            data_block_hash_index: true,
            memtable_bloom_ratio: 0.1,
            memtable: Memtable::SkipList,
            background_jobs: 2,
            compression: true,
        }
    }
}

impl RocksDbOptions {
    /// The default options with all of the backend's memory bounded by one number, `bytes`:
    /// a quarter for the write-back cache (a sixteenth of that, at least 1 MiB, for changed
    /// rows), the rest for the block cache, which also carries
    /// the memtables (at most half of it, through the write buffer manager; Flink gives its
    /// write buffers the same half of RocksDB's managed memory). A memtable is at most 64 MiB
    /// and at most a quarter of the memtables' share.
    ///
    /// # Examples
    /// ```
    /// # #[cfg(feature = "rocksdb")] {
    /// let options = statebackend::RocksDbOptions::with_memory_budget(512 << 20);
    /// assert_eq!(options.write_cache_bytes, 128 << 20);
    /// assert_eq!(options.block_cache_bytes, 384 << 20);
    /// assert_eq!(options.write_buffer_manager_bytes, 192 << 20);
    /// # }
    /// ```
    pub fn with_memory_budget(bytes: usize) -> Self {
        let write_cache_bytes = bytes / 4;
        let block_cache_bytes = bytes - write_cache_bytes;
        let write_buffer_manager_bytes = block_cache_bytes / 2;
        Self {
            write_cache_bytes,
            write_cache_dirty_bytes: (write_cache_bytes / 16).max(1 << 20),
            block_cache_bytes,
            write_buffer_manager_bytes,
            write_buffer_bytes: (write_buffer_manager_bytes / 4).clamp(1 << 20, 64 << 20),
            ..Self::default()
        }
    }

    /// Checks the options that RocksDB would not reject itself but cannot work with.
    ///
    /// # Errors
    /// [`crate::Error::InvalidOptions`] for a hash memtable with no buckets, or with a bucket
    /// array (8 bytes per bucket) that would fill the write buffer on its own.
    pub fn validate(&self) -> crate::model::error::Result<()> {
        if let Memtable::HashLinkList { buckets } = self.memtable {
            let limit = self.write_buffer_bytes / 8 / 2;
            if buckets == 0 || buckets > limit {
                return Err(crate::model::error::Error::InvalidOptions {
                    reason: format!(
                        "Memtable::HashLinkList needs 1..={limit} buckets for a {} byte write buffer (8 bytes per bucket, at most half the buffer), got {buckets}",
                        self.write_buffer_bytes
                    ),
                });
            }
        }
        Ok(())
    }

    /// The RocksDB options this struct stands for, for a plain DB whose default column family
    /// holds a state of `kind` (what the benchmarks' raw-RocksDB baseline opens, so that the
    /// comparison uses the same settings). The merge operator is included.
    pub fn rocksdb_options(&self, kind: StateKind) -> Options {
        let cache = Cache::new_lru_cache(self.block_cache_bytes);
        let mut opts = self.cf_options(&cache, kind);
        opts.create_if_missing(true);
        self.set_db_wide(&mut opts, &cache);
        opts
    }

    /// DB-wide options; `cache` is the block cache the write buffer manager charges.
    pub(crate) fn db_options(&self, cache: &Cache) -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        self.set_db_wide(&mut opts, cache);
        opts
    }

    fn set_db_wide(&self, opts: &mut Options, cache: &Cache) {
        opts.set_max_background_jobs(self.background_jobs);
        if self.write_buffer_manager_bytes > 0 {
            opts.set_write_buffer_manager(
                &WriteBufferManager::new_write_buffer_manager_with_cache(
                    self.write_buffer_manager_bytes,
                    false,
                    cache.clone(),
                ),
            );
        }
        if self.memtable != Memtable::SkipList {
            // Hash memtables refuse concurrent inserts, and RocksDB checks this DB-wide option
            // against every column family. A backend writes from one thread anyway.
            opts.set_allow_concurrent_memtable_write(false);
        }
    }

    /// Options of the column family of a state of `kind`: the merge operator is set on every
    /// open, including the open of a restored checkpoint, because RocksDB needs it to read
    /// merged rows.
    pub(crate) fn cf_options(&self, cache: &Cache, kind: StateKind) -> Options {
        let mut opts = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(cache);
        table.set_block_size(self.block_size);
        if self.bloom_bits_per_key > 0.0 {
            table.set_bloom_filter(self.bloom_bits_per_key, false);
        }
        table.set_cache_index_and_filter_blocks(self.cache_index_and_filter_blocks);
        table.set_pin_l0_filter_and_index_blocks_in_cache(self.cache_index_and_filter_blocks);
        if self.data_block_hash_index {
            table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
            table.set_data_block_hash_ratio(0.75);
        }
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(self.write_buffer_bytes);
        if self.memtable_bloom_ratio > 0.0 {
            opts.set_memtable_prefix_bloom_ratio(self.memtable_bloom_ratio);
            opts.set_memtable_whole_key_filtering(true);
        }
        opts.set_max_write_buffer_number(self.max_write_buffers);
        opts.set_target_file_size_base(self.target_file_size_bytes);
        opts.set_level_zero_file_num_compaction_trigger(self.level0_compaction_trigger);
        opts.set_compaction_style(match self.compaction_style {
            CompactionStyle::Level => DBCompactionStyle::Level,
            CompactionStyle::Universal => DBCompactionStyle::Universal,
        });
        opts.set_compression_type(if self.compression {
            DBCompressionType::Lz4
        } else {
            DBCompressionType::None
        });
        opts.set_merge_operator_associative(LIST_MERGE_OPERATOR, list_append_merge);
        if let Some(buckets) = self.memtable.hashed_for(kind) {
            // A hash memtable hashes each key's "prefix"; the no-op transform makes that the
            // whole row key. Every iterator of the backend sets `total_order_seek`, so this
            // extractor never turns a range scan into a prefix scan.
            opts.set_prefix_extractor(SliceTransform::create_noop());
            opts.set_memtable_factory(MemtableFactory::HashLinkList {
                bucket_count: buckets,
            });
        }
        opts
    }
}

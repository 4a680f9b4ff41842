//! Tuning of the RocksDB backend: a plain struct with documented defaults.

use rocksdb::{BlockBasedOptions, Cache, DBCompactionStyle, DBCompressionType, Options};

use super::merge::{LIST_MERGE_OPERATOR, list_append_merge};

/// The compaction style of every column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionStyle {
    /// Leveled compaction (RocksDB's default).
    Level,
    /// Universal (tiered) compaction.
    Universal,
}

/// Options of the RocksDB backend. `docs/rocksdb-layout.md` lists them with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct RocksDbOptions {
    /// Capacity of the LRU block cache shared by all column families. Default 128 MiB.
    pub block_cache_bytes: usize,
    /// Size of one memtable (per column family). Default 64 MiB.
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
    /// Compaction style. Default [`CompactionStyle::Level`].
    pub compaction_style: CompactionStyle,
    /// Background flush and compaction threads. Default 2.
    pub background_jobs: i32,
    /// LZ4-compress data blocks. Default true.
    pub compression: bool,
}

impl Default for RocksDbOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 128 << 20,
            write_buffer_bytes: 64 << 20,
            max_write_buffers: 4,
            bloom_bits_per_key: 10.0,
            block_size: 4 << 10,
            target_file_size_bytes: 32 << 20,
            compaction_style: CompactionStyle::Level,
            background_jobs: 2,
            compression: true,
        }
    }
}

impl RocksDbOptions {
    /// The RocksDB options this struct stands for, for a plain DB with only the default column
    /// family (what the benchmarks' raw-RocksDB baseline opens, so that the comparison uses
    /// the same settings). The merge operator is included.
    pub fn rocksdb_options(&self) -> Options {
        let cache = Cache::new_lru_cache(self.block_cache_bytes);
        let mut opts = self.cf_options(&cache);
        opts.create_if_missing(true);
        opts.set_max_background_jobs(self.background_jobs);
        opts
    }

    /// DB-wide options.
    pub(crate) fn db_options(&self) -> Options {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(self.background_jobs);
        opts
    }

    /// Options of one column family: the merge operator is set on every open, including the
    /// open of a restored checkpoint, because RocksDB needs it to read merged rows.
    pub(crate) fn cf_options(&self, cache: &Cache) -> Options {
        let mut opts = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(cache);
        table.set_block_size(self.block_size);
        if self.bloom_bits_per_key > 0.0 {
            table.set_bloom_filter(self.bloom_bits_per_key, false);
        }
        table.set_cache_index_and_filter_blocks(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_size(self.write_buffer_bytes);
        opts.set_max_write_buffer_number(self.max_write_buffers);
        opts.set_target_file_size_base(self.target_file_size_bytes);
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
        opts
    }
}

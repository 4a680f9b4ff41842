//! The state API on every backend: the conformance suite, cross-backend equivalence, key groups,
//! handle identity, and the RocksDB backend's resources and working directory.
//!
//! One test binary per area, not one per file: each binary links RocksDB, and linking dominated
//! `cargo test` on two cores.

#[path = "../common/mod.rs"]
mod common;

mod conformance_heap;
mod conformance_reference;
mod conformance_rocksdb;
mod cross_backend_equivalence;
mod handle_identity;
mod key_groups;
mod model_end_to_end;
mod rocksdb_disk_full;
mod rocksdb_hash_memtable;
mod rocksdb_resources;
mod rocksdb_working_dir;

//! The state API on every backend: the conformance suite, cross-backend equivalence, key groups,
//! handle identity, and the RocksDB backend's resources and working directory.
//!
//! One test binary per area, not one per file: each binary links RocksDB, and linking dominated
//! `cargo test` on two cores.

#[path = "../common/mod.rs"]
mod common;

// The reference backend compiled a second time, as code outside the library: through these two
// names its `crate::model` and `crate::backends` paths resolve to the library's public items,
// so it compiles only if a backend can be written from public items alone.
use statebackend::{backends, model};
#[allow(dead_code)]
#[path = "../../src/backends/reference.rs"]
mod reference_outside;

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
mod schema_evolution;
mod schema_versions;
mod ttl;

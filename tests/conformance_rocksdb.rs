//! The conformance suite on the RocksDB backend, unchanged.
#![cfg(feature = "rocksdb")]
mod common;

conformance_suite!(|max_parallelism, range| {
    statebackend::RocksDbBackend::open(max_parallelism, range, None, Default::default()).unwrap()
});

//! The conformance suite on the RocksDB backend, unchanged, with the default memtable and with
//! the hash memtable.
#![cfg(feature = "rocksdb")]
use crate::conformance_suite;

conformance_suite!(|max_parallelism, range| {
    statebackend::RocksDbBackend::open(max_parallelism, range, None, Default::default()).unwrap()
});

mod hash_memtable {
    use crate::conformance_suite;

    conformance_suite!(|max_parallelism, range| {
        let options = statebackend::RocksDbOptions {
            memtable: statebackend::rocks::Memtable::HashLinkList { buckets: 1 << 12 },
            ..Default::default()
        };
        statebackend::RocksDbBackend::open(max_parallelism, range, None, options).unwrap()
    });
}

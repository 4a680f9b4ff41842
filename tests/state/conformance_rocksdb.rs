//! The conformance suite on the RocksDB backend, unchanged: with the default options (a 64 MiB
//! write-back cache), with the hash memtable, without the cache, and with a cache so small it
//! evicts constantly.
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

/// Every operation a RocksDB call.
mod without_write_cache {
    use crate::conformance_suite;

    conformance_suite!(|max_parallelism, range| {
        let options = statebackend::RocksDbOptions {
            write_cache_bytes: 0,
            ..Default::default()
        };
        statebackend::RocksDbBackend::open(max_parallelism, range, None, options).unwrap()
    });
}

/// With a write-back cache small enough to evict on almost every operation, so that every
/// path (hit, miss, eviction of dirty rows, flush before iteration) runs.
mod small_write_cache {
    use crate::conformance_suite;

    conformance_suite!(|max_parallelism, range| {
        let options = statebackend::RocksDbOptions {
            write_cache_bytes: 4 << 10,
            ..Default::default()
        };
        statebackend::RocksDbBackend::open(max_parallelism, range, None, options).unwrap()
    });
}

//! The conformance suite on the heap backend.

conformance_suite!(|max_parallelism, range| {
    statebackend::HeapBackend::new(max_parallelism, range).unwrap()
});
